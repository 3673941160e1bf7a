#!/usr/bin/env bash
# Inside the cgroup v2 guest (see test-v2.sh): shows the kernel and its cgroup controllers,
# runs each NAME=BINARY[=FILTER] given (then critest, with SUP_V2_CRITEST=1), prints a summary, and fails if a test failed or anything of
# sup's was left behind (cgroups, mounts, processes).
set -uo pipefail
cd "$(dirname "$0")/.."
echo "== kernel $(uname -r); PID 1 $(cat /proc/1/comm); $(grep -w cgroup2 /proc/mounts | head -1)"
echo "== cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "== cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
[ ! -e /sys/fs/cgroup/memory/memory.limit_in_bytes ] || { echo "not a cgroup v2 guest"; exit 1; }
export SUP_TEST_CGROUP_VERSION=2
# Tests that show something (the systemd driver's units, crictl stats) write it here.
export SUP_TEST_REPORT=/tmp/sup-v2-report
: >"$SUP_TEST_REPORT"
threads=${SUP_V2_THREADS:-2}
failed=()
summary=()
for item in "$@"; do
    name=${item%%=*}
    exe=${item#*=}
    filter=
    case $exe in *=*) filter=${exe#*=}; exe=${exe%%=*}; name="$name/$filter" ;; esac
    echo "== $name ($exe)"
    t0=$(date +%s)
    out=$(mktemp)
    "$exe" --test-threads="$threads" $filter 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    counts=$(grep -E '^test result:' "$out" | tail -1)
    summary+=("$name: ${counts:-no result} ($(( $(date +%s) - t0 )) s)")
    [ "$rc" = 0 ] || failed+=("$name")
    rm -f "$out"
done

if [ "${SUP_V2_CRITEST:-0}" = 1 ]; then
    echo "== critest"
    t0=$(date +%s)
    out=$(mktemp)
    SUP_NO_DEPS=1 SUP_NO_BUILD=1 CRITEST_OUT=/tmp/critest-v2 deploy/critest.sh 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    counts=$(grep -E '^critest: [0-9]+ passed' "$out" | tail -1)
    summary+=("critest: ${counts:-no result} ($(( $(date +%s) - t0 )) s)")
    [ "$rc" = 0 ] || failed+=(critest)
    rm -f "$out"
fi

echo "== leftovers"
left=0
# /sup/<namespace> is the parent sup's cgroups share, kept as system.slice is; nothing may be
# left below it, nor any test slice.
for d in /sys/fs/cgroup/sup /sys/fs/cgroup/kubepods /sys/fs/cgroup/kubepods.slice; do
    if [ -d "$d" ] && [ -n "$(find "$d" -mindepth 2 -type d 2>/dev/null)" ]; then
        echo "cgroups left under $d:"; find "$d" -mindepth 2 -type d; left=1
    fi
done
if ls -d /sys/fs/cgroup/suptest* 2>/dev/null; then echo "test slices left (above)"; left=1; fi
if grep -E ' /tmp/[^ ]*(rootfs|sup)' /proc/mounts; then echo "mounts left (above)"; left=1; fi
for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case $cmd in
        *sup-shim*|*/supd\ *) echo "process left: ${p#/proc/} $cmd"; left=1 ;;
    esac
done
if [ -d /run/systemd/system ]; then
    units=$(systemctl list-units --all --plain --no-legend 'sup-*.scope' 'kubepods*' 'sup*.slice' || true)
    if [ -n "$units" ]; then echo "systemd units left:"; echo "$units"; left=1; fi
fi

if [ -s "$SUP_TEST_REPORT" ]; then echo "== what the tests showed"; cat "$SUP_TEST_REPORT"; fi
echo "== cgroup v2 summary ($(uname -r), controllers: $(cat /sys/fs/cgroup/cgroup.controllers))"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]}"; exit 1; fi
[ "$left" = 0 ] || exit 1
echo "cgroup v2: all passed"
