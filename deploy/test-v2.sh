#!/usr/bin/env bash
# Runs the cgroup-touching end-to-end tests on a cgroup v2 kernel: Debian's own kernel booted
# with cgroup v2 only and systemd as PID 1 under qemu (../shared/v2vm beside the checkout, or V2VM_DIR), the
# checkout's parent shared into the guest at the same path. The test binaries are built here
# and run there; the guest prints its cgroup controllers and each binary's counts, then
# checks that nothing was left behind. Run as root; CI runs it after the host suite.
#
#   deploy/test-v2.sh                 the whole v2 set
#   deploy/test-v2.sh limits cri      only these test binaries (names as in tests/tests, shim/tests;
#                                     shim:NAME for the shim's, NAME/FILTER for some of a binary's tests,
#                                     critest for critest)
#
# With the default set, critest (deploy/critest.sh) runs in the guest too, its images built
# here first (kept in CRI_FIXTURES_CACHE, target/critest-fixtures).
#
# Env: SUP_V2_THREADS (tests at a time in the guest, 2), SUP_V2_CRITEST (1 with the default
# set, 0 otherwise), V2VM_MEM (MiB, 4096), V2VM_TIMEOUT.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)
v2vm=${V2VM_DIR:-$(cd "$checkout/.." && pwd)/shared/v2vm}
[ -x "$v2vm/run-in-v2vm.sh" ] || { echo "test-v2: no v2vm in $v2vm (set V2VM_DIR)" >&2; exit 1; }

# The binaries that create, limit, measure, freeze, update or remove cgroups (of restart, the
# tests of tasks that outlive supd; its interrupted import touches no cgroup).
default_set=(tasks limits lifecycle restart/containers_survive shim_death cri cri_node
             shim:lifecycle shim:stats shim:oom shim:exec shim:errors)
wanted=("$@")
critest=${SUP_V2_CRITEST:-0}
if [ ${#wanted[@]} -eq 0 ]; then
    wanted=("${default_set[@]}")
    critest=${SUP_V2_CRITEST:-1}
fi

deploy/install-deps.sh
deploy/v2vm-deps.sh
packages="systemd systemd-sysv dbus iproute2 containernetworking-plugins iptables
          skopeo jq docker-registry curl procps"
cache=${V2VM_CACHE:-/var/lib/v2vm}
have=$(sed -n 's/^packages //p' "$cache/info" 2>/dev/null || true)
force=
for p in $packages; do
    # (as make-v2vm.sh lists them: on one line)
    case " $have " in *" $p "*) ;; *) force=1 ;; esac
done
V2VM_CACHE=$cache V2VM_PACKAGES="$(echo $packages)" FORCE=$force "$v2vm/make-v2vm.sh"
# Booted with systemd as PID 1, as production hosts are.
guest=$(deploy/v2vm-systemd.sh "$cache")

command -v jq >/dev/null || apt-get install -y -qq --no-install-recommends jq >/dev/null
cargo build --workspace --bins --quiet
list=$(mktemp)
trap 'rm -f "$list"' EXIT
cargo test --workspace --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null)
           | "\(.package_id) \(.target.name) \(.executable)"' >"$list"
plan=()
for w in "${wanted[@]}"; do
    if [ "$w" = critest ]; then critest=1; continue; fi
    filter=
    case $w in */*) filter=${w#*/}; w=${w%%/*} ;; esac
    case $w in
        shim:*) pkg=sup-shim; name=${w#shim:} ;;
        *) pkg=sup-tests; name=$w ;;
    esac
    exe=$(awk -v n="$name" -v p="$pkg" '$2 == n && index($1, p) { print $3; exit }' "$list")
    [ -n "$exe" ] || { echo "test-v2: no test binary $w" >&2; exit 1; }
    plan+=("$w=$exe${filter:+=$filter}")
done

# critest's images, built where there is a network (Debian packages), served in the guest.
fixtures=${CRI_FIXTURES_CACHE:-$checkout/target/critest-fixtures}
if [ "$critest" = 1 ] && [ ! -f "$fixtures/REFS" ]; then
    tools=${CRI_TOOLS:-$(cd "$checkout/.." && pwd)/shared/cri-tools}
    build=$(mktemp -d)
    port=$(shuf -i 20000-40000 -n 1)
    "$tools/critest-fixtures.sh" up "$build" "$port" >/dev/null
    "$tools/critest-fixtures.sh" down "$build"
    mkdir -p "$(dirname "$fixtures")"
    rm -rf "$fixtures"
    cp -a "$build/fixtures" "$fixtures"
    rm -rf "$build"
fi
export SUP_V2_CRITEST=$critest CRI_FIXTURES_CACHE=$fixtures

echo "test-v2: ${#plan[@]} test binaries in the cgroup v2 guest$([ "$critest" = 1 ] && echo ", then critest")"
# AppArmor off, as on the host: sup applies no AppArmor profiles yet, and critest's AppArmor
# specs (skipped where the kernel has none) would only fail for it.
V2VM_APPEND="${V2VM_APPEND:-} apparmor=0" V2VM_CACHE=$guest V2VM_SHARE=$(cd "$checkout/.." && pwd) V2VM_MEM=${V2VM_MEM:-4096} \
V2VM_ENV="SUP_V2_THREADS SUP_CRICTL SUP_V2_CRITEST CRI_FIXTURES_CACHE" SUP_V2_THREADS=${SUP_V2_THREADS:-2} \
    "$v2vm/run-in-v2vm.sh" "$checkout/deploy/v2-guest.sh" "${plan[@]}"
