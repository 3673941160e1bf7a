# shellcheck shell=bash
# Sourced by critest.sh and cri-bench.sh: a private world for CRI runtimes under test, and
# its removal. Everything lives in one temp dir ($CRI_TMP): a CNI network of its own (a
# bridge and a /24 no one else on the machine uses), the registry that serves critest's
# images, and each runtime's root, state and socket. cri_env_cleanup (run on exit) removes
# pods through the CRI, stops the runtimes by pid, reports and then removes whatever they
# left (processes, mounts, network namespaces), and undoes the host changes the CNI plugins
# made (the bridge, portmap's iptables chains, ip_forward).

CRI_CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CRI_TOOLS=${CRI_TOOLS:-$CRI_CHECKOUT/../shared/cri-tools}
CRICTL=$CRI_TOOLS/crictl
CRITEST=$CRI_TOOLS/critest
CRI_TMP=
CRI_NET_OCTET=
CRI_BRIDGE=
CRI_FIXTURES=
CRI_IP_FORWARD=
CRI_NAT_BEFORE=
# Host directories that runtimes may make (containerd's CNI cache, its shim sockets) and that
# did not exist before this run: removed at the end once empty.
CRI_HOST_DIRS=()
# Likewise the parent cgroups runtimes make for pods that name none (/k8s.io for containerd,
# /sup for supd), in each hierarchy.
CRI_HOST_CGROUPS=()
# "pid socket dir name" of every runtime started, for cleanup.
CRI_RUNTIMES=()
# What runtimes left behind after their pods were removed and they were stopped.
CRI_LEFTOVERS=()

cri_log() { echo "== $*" >&2; }

# cri_env_init NAME: the temp dir and the exit trap.
# cri_build_sup DEFAULT_PROFILE: builds sup's binaries in $SUP_PROFILE (else the default;
# skipped with SUP_NO_BUILD=1) and sets CRI_BIN to where they are.
cri_build_sup() {
    local profile=${SUP_PROFILE:-$1}
    local build=(cargo build --workspace --bins --quiet)
    case $profile in
        debug) ;;
        release) build+=(--release);;
        *) echo "$0: SUP_PROFILE must be debug or release" >&2; exit 2;;
    esac
    if [ "${SUP_NO_BUILD:-0}" != 1 ]; then
        cri_log "building sup ($profile)"
        (cd "$CRI_CHECKOUT" && "${build[@]}")
    fi
    CRI_BIN=$CRI_CHECKOUT/target/$profile
    local b
    for b in supd sup-shim sup-pause; do
        [ -x "$CRI_BIN/$b" ] || { echo "$0: $CRI_BIN/$b: not built" >&2; exit 1; }
    done
}

cri_env_init() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: needs root (mounts, network namespaces, runc)" >&2
        exit 1
    fi
    for f in "$CRICTL" "$CRITEST" "$CRI_TOOLS/critest-fixtures.sh"; do
        if [ ! -x "$f" ]; then
            echo "$0: $f: not found (set CRI_TOOLS to the cri-tools directory)" >&2
            exit 1
        fi
    done
    CRI_TMP=$(mktemp -d "/tmp/sup-$1.XXXXXX")
    chmod 0711 "$CRI_TMP"
    CRI_IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
    CRI_NAT_BEFORE=$(iptables-save -t nat 2>/dev/null || true)
    local d c
    for d in /var/lib/cni /run/containerd; do [ -e "$d" ] || CRI_HOST_DIRS+=("$d"); done
    for d in /sys/fs/cgroup /sys/fs/cgroup/*/; do
        [ -e "$d/cgroup.procs" ] || continue
        for c in k8s.io sup; do [ -e "${d%/}/$c" ] || CRI_HOST_CGROUPS+=("${d%/}/$c"); done
    done
    trap cri_env_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# cri_net_up: a bridge conflist in $CRI_TMP/net.d, on a bridge name and subnet (10.249.N.0/24)
# that no interface, route or other run of these scripts holds.
cri_net_up() {
    local n start
    start=$(( $$ % 200 ))
    for i in $(seq 0 249); do
        n=$(( (start + i) % 250 + 1 ))
        [ -e "/sys/class/net/supcri$n" ] && continue
        ip -4 route show | grep -q "^10\.249\.$n\." && continue
        mkdir "/tmp/sup-cri-net$n.claim" 2>/dev/null || continue
        CRI_NET_OCTET=$n
        break
    done
    if [ -z "$CRI_NET_OCTET" ]; then
        echo "$0: no free subnet in 10.249.0.0/16" >&2
        exit 1
    fi
    CRI_BRIDGE=supcri$CRI_NET_OCTET
    mkdir -p "$CRI_TMP/net.d" "$CRI_TMP/ipam"
    cat > "$CRI_TMP/net.d/10-supcri.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "supcri$CRI_NET_OCTET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CRI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CRI_TMP/ipam",
        "ranges": [[{ "subnet": "10.249.$CRI_NET_OCTET.0/24" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "loopback" }
  ]
}
EOF
    cri_log "CNI network supcri$CRI_NET_OCTET: bridge $CRI_BRIDGE, 10.249.$CRI_NET_OCTET.0/24"
}

# cri_fixtures_up: critest's images served on a free loopback port; hosts files in
# $CRI_FIXTURES/certs.d. CRI_FIXTURES_CACHE=DIR keeps the built images across runs.
cri_fixtures_up() {
    local port=
    for p in $(shuf -i 20000-40000 -n 100); do
        if [ -z "$(ss -Hltn "sport = :$p")" ]; then port=$p; break; fi
    done
    [ -n "$port" ] || { echo "$0: no free loopback port" >&2; exit 1; }
    CRI_FIXTURES=$CRI_TMP/fixtures
    mkdir -p "$CRI_FIXTURES"
    local cache=${CRI_FIXTURES_CACHE:-}
    if [ -n "$cache" ] && [ -f "$cache/REFS" ]; then
        cp -a "$cache" "$CRI_FIXTURES/fixtures"
    fi
    cri_log "critest images on 127.0.0.1:$port"
    "$CRI_TOOLS/critest-fixtures.sh" up "$CRI_FIXTURES" "$port" >&2
    if [ -n "$cache" ] && [ ! -f "$cache/REFS" ]; then
        mkdir -p "$(dirname "$cache")"
        rm -rf "$cache"
        cp -a "$CRI_FIXTURES/fixtures" "$cache"
    fi
}

# cri_wait_ready NAME PID SOCKET LOG: until the CRI answers on SOCKET (60 s at most).
cri_wait_ready() {
    local name=$1 pid=$2 sock=$3 log=$4
    for _ in $(seq 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$0: $name exited while starting; the end of its log ($log):" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        if [ -S "$sock" ] && timeout 5 "$CRICTL" --runtime-endpoint "unix://$sock" \
            --image-endpoint "unix://$sock" version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "$0: $name did not answer on $sock within 60 s; its log: $log" >&2
    exit 1
}

# cri_start_supd BINDIR: supd in $CRI_TMP/supd, on the private network and registry hosts.
# Prints nothing; sets SUPD_SOCK and SUPD_LOG.
cri_start_supd() {
    local bin=$1 dir=$CRI_TMP/supd
    mkdir -p "$dir"
    SUPD_SOCK=$dir/state/sup.sock
    SUPD_LOG=$dir/supd.log
    cat > "$dir/supd.toml" <<EOF
root = "$dir/root"
state = "$dir/state"
address = "$SUPD_SOCK"

[log]
level = "info"

[gc]
interval_seconds = 0

[registry]
config_path = "$CRI_FIXTURES/certs.d"

[cri]
cni_conf_dir = "$CRI_TMP/net.d"
cni_bin_dir = ["/usr/lib/cni"]
EOF
    # A session of its own: a ^C meant for the script must not stop supd before the cleanup has
    # removed its pods through the CRI. (Not a process group leader, setsid execs in place: $!
    # is supd's pid.)
    setsid "$bin/supd" --config "$dir/supd.toml" > "$SUPD_LOG" 2>&1 < /dev/null &
    local pid=$!
    CRI_RUNTIMES+=("$pid $SUPD_SOCK $dir supd")
    cri_wait_ready supd "$pid" "$SUPD_SOCK" "$SUPD_LOG"
    cri_log "supd $("$bin/supd" --version 2>/dev/null || true) (pid $pid) on $SUPD_SOCK"
}

# cri_start_containerd: containerd (Debian's) in $CRI_TMP/containerd with its CRI plugin on the
# same network and registry hosts; sets CONTAINERD_SOCK and CONTAINERD_LOG.
cri_start_containerd() {
    local dir=$CRI_TMP/containerd
    mkdir -p "$dir"
    CONTAINERD_SOCK=$dir/containerd.sock
    CONTAINERD_LOG=$dir/containerd.log
    cat > "$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE (some sandboxes drop it) the pause container's -998 is refused.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$CRI_TMP/net.d"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "$CRI_FIXTURES/certs.d"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  Root = "$dir/runc"
EOF
    setsid containerd --config "$dir/config.toml" > "$CONTAINERD_LOG" 2>&1 < /dev/null &
    local pid=$!
    CRI_RUNTIMES+=("$pid $CONTAINERD_SOCK $dir containerd")
    cri_wait_ready containerd "$pid" "$CONTAINERD_SOCK" "$CONTAINERD_LOG"
    cri_log "$(containerd --version) (pid $pid) on $CONTAINERD_SOCK"
}

# The processes whose command line names DIR, and all their descendants (shims, pause
# processes, containers).
cri_processes_of() {
    local dir=$1/ table roots=() found=() pid args
    table=$(ps -e -o pid=,ppid=)
    for c in /proc/[0-9]*/cmdline; do
        pid=${c#/proc/}; pid=${pid%/cmdline}
        [ "$pid" = "$$" ] && continue
        args=$(tr "\0" " " 2>/dev/null < "$c") || continue
        case $args in *"$dir"*) roots+=("$pid");; esac
    done
    found=("${roots[@]}")
    local i=0
    while [ "$i" -lt "${#found[@]}" ]; do
        while read -r p pp; do
            if [ "$pp" = "${found[$i]}" ]; then found+=("$p"); fi
        done <<< "$table"
        i=$((i + 1))
    done
    [ ${#found[@]} -gt 0 ] && printf '%s\n' "${found[@]}"
    return 0
}

# Mount points under DIR, deepest first.
cri_mounts_under() {
    awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# cri_stop_runtime PID SOCKET DIR NAME: its pods removed through the CRI, then SIGTERM (SIGKILL
# after 30 s); what it left is recorded in CRI_LEFTOVERS and then removed.
cri_stop_runtime() {
    local pid=$1 sock=$2 dir=$3 name=$4
    if kill -0 "$pid" 2>/dev/null; then
        local ep=(--runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" --timeout 60s)
        if [ -n "$(timeout 60 "$CRICTL" "${ep[@]}" pods -q 2>/dev/null)" ]; then
            timeout 120 "$CRICTL" "${ep[@]}" rmp -a -f >/dev/null 2>&1 ||
                echo "$0: $name: removing its pods failed" >&2
        fi
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$0: $name (pid $pid) still running 30 s after SIGTERM: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    # Shims exit on their own once their container is deleted; give them a moment.
    local procs
    for _ in $(seq 50); do
        procs=$(cri_processes_of "$dir")
        [ -z "$procs" ] && break
        sleep 0.1
    done
    for p in $procs; do
        CRI_LEFTOVERS+=("$name: process $p ($(tr "\0" " " 2>/dev/null < "/proc/$p/cmdline" || true))")
    done
    # Descendants (containers) before the shims that would reap them.
    while read -r p; do
        [ -n "$p" ] && { kill -KILL "$p" 2>/dev/null || true; }
    done < <(tac <<< "$procs")
    local m
    while read -r m; do
        [ -n "$m" ] || continue
        CRI_LEFTOVERS+=("$name: mount $m")
        umount -l "$m" 2>/dev/null || true
    done < <(cri_mounts_under "$dir")
}

# Removes portmap's shared nat chains (and the jumps to them) when this run created them and no
# port mapping of anyone's is left in them.
cri_iptables_cleanup() {
    local now chains
    now=$(iptables-save -t nat 2>/dev/null) || return 0
    grep -q '^:CNI-DN-' <<< "$now" && return 0
    chains=$(grep -o '^:CNI-HOSTPORT-[A-Z]*' <<< "$now" | cut -c2- || true)
    [ -n "$chains" ] || return 0
    local script=$CRI_TMP/nat-undo c
    {
        echo '*nat'
        for c in $chains; do
            grep -q "^:$c " <<< "$CRI_NAT_BEFORE" && continue
            grep -E -- "^-A [A-Z]+ .*-j $c( |\$)" <<< "$now" | sed 's/^-A /-D /'
        done
        for c in $chains; do
            grep -q "^:$c " <<< "$CRI_NAT_BEFORE" && continue
            echo "-F $c"
            echo "-X $c"
        done
        echo COMMIT
    } > "$script"
    iptables-restore --noflush < "$script" 2>/dev/null ||
        echo "$0: could not remove portmap's iptables chains ($chains)" >&2
}

cri_env_cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ -n "$CRI_TMP" ] || exit "$rc"
    local r
    for r in "${CRI_RUNTIMES[@]}"; do
        # shellcheck disable=SC2086
        cri_stop_runtime $r
    done
    CRI_RUNTIMES=()
    if [ -n "$CRI_FIXTURES" ]; then
        "$CRI_TOOLS/critest-fixtures.sh" down "$CRI_FIXTURES" >/dev/null 2>&1
    fi
    # Anything else still running from the temp dir (a critest cut short, the registry).
    local p
    while read -r p; do
        [ -n "$p" ] && { kill -KILL "$p" 2>/dev/null || true; }
    done < <(cri_processes_of "$CRI_TMP" | tac)
    local m
    while read -r m; do [ -n "$m" ] && umount -l "$m"; done < <(cri_mounts_under "$CRI_TMP")
    if [ -n "$CRI_BRIDGE" ]; then
        [ -e "/sys/class/net/$CRI_BRIDGE" ] && ip link del "$CRI_BRIDGE"
        rmdir "/tmp/sup-cri-net$CRI_NET_OCTET.claim"
    fi
    cri_iptables_cleanup
    # The bridge plugin turns forwarding on for its gateway.
    if [ "$CRI_IP_FORWARD" = 0 ]; then echo 0 > /proc/sys/net/ipv4/ip_forward; fi
    local d c
    for d in "${CRI_HOST_CGROUPS[@]}"; do
        [ -d "$d" ] || continue
        while read -r c; do
            # The parents are the runtimes' to keep; a pod's or container's cgroup is a leak.
            [ "$c" = "$d" ] || [ "${c##*/}" = k8s.io ] || CRI_LEFTOVERS+=("cgroup $c")
            rmdir "$c" 2>/dev/null || echo "$0: cgroup $c: could not be removed" >&2
        done < <(find "$d" -depth -type d)
    done
    for d in "${CRI_HOST_DIRS[@]}"; do
        [ -d "$d" ] && find "$d" -depth -type d -empty -delete
        [ -e "$d" ] && echo "$0: $d: not empty after the run, left in place" >&2
    done
    rm -rf "$CRI_TMP"
    if [ ${#CRI_LEFTOVERS[@]} -gt 0 ]; then
        echo "left behind by the runtimes (now removed):" >&2
        printf '  %s\n' "${CRI_LEFTOVERS[@]}" >&2
        [ "$rc" = 0 ] && rc=1
    fi
    exit "$rc"
}
