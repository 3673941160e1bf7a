#!/usr/bin/env bash
# CRI latencies of supd against containerd 1.6 (Debian's), measured in the same run by SIG
# Node's benchmark (`critest -benchmark`, v1.26.1, from ../shared/cri-tools): each runtime in
# turn gets its own root, state dir and socket, the same private CNI network and the same
# loopback registry of critest's images; the table printed at the end gives, per operation,
# the median latency on each and the ratio supd/containerd (below 1: supd is faster).
# Everything it made is removed on exit. Needs root; installs containerd if it is missing.
#
#   deploy/cri-bench.sh
#
# Environment: CRI_TOOLS (the cri-tools directory), SUP_PROFILE (release or debug: which
# target/ binaries, built first unless SUP_NO_BUILD=1), CRI_BENCH_OUT (where each runtime's
# JSON results and logs are kept; target/cri-bench), CRI_BENCH_N (pods, containers and images
# per benchmark; 20), CRI_FIXTURES_CACHE (a directory that keeps the built images between runs).
set -euo pipefail
# shellcheck source=deploy/cri-env.sh
source "$(dirname "$0")/cri-env.sh"
cd "$CRI_CHECKOUT"

cri_build_sup release
bin=$CRI_BIN
missing=()
command -v containerd >/dev/null || missing+=(containerd)
command -v jq >/dev/null || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
    cri_log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
out=${CRI_BENCH_OUT:-$CRI_CHECKOUT/target/cri-bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/supd" "$out/containerd"
n=${CRI_BENCH_N:-20}

cri_env_init cri-bench
cri_net_up
cri_fixtures_up

params=$CRI_TMP/params.yaml
cat > "$params" <<EOF
containersNumber: $n
containersNumberParallel: 1
containerBenchmarkTimeoutSeconds: 120
podsNumber: $n
podsNumberParallel: 1
podBenchmarkTimeoutSeconds: 120
imagesNumber: $(( (n + 1) / 2 ))
imagesNumberParallel: 1
imageBenchmarkTimeoutSeconds: 120
podContainerStartBenchmarkTimeoutSeconds: 120
imagePullingBenchmarkImage: registry.k8s.io/e2e-test-images/busybox:1.29-2
imageListingBenchmarkImages:
  - public.ecr.aws/docker/library/busybox:1.35.0-glibc
  - public.ecr.aws/docker/library/busybox:1-uclibc
  - public.ecr.aws/docker/library/busybox:1
  - public.ecr.aws/docker/library/busybox:1-glibc
  - public.ecr.aws/docker/library/busybox:1-musl
EOF

# bench NAME SOCKET: the benchmark against the runtime listening on SOCKET.
bench() {
    local name=$1 sock=$2 start=$SECONDS rc=0
    mkdir -p "$out/$name"
    cri_log "critest -benchmark against $name (log: $out/$name/critest.log)"
    "$CRITEST" -benchmark --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
        --benchmarking-params-file "$params" --benchmarking-output-dir "$out/$name" \
        --ginkgo.no-color --ginkgo.timeout 20m > "$out/$name/critest.log" 2>&1 || rc=$?
    cri_log "$name: $(grep -oE '(SUCCESS|FAIL)!.*' "$out/$name/critest.log" | tail -n 1) \
(exit $rc, $((SECONDS - start)) s)"
    [ "$rc" = 0 ] || failed+=("$name")
}
failed=()

# stop_last LOG: the runtime started last stopped (pods removed first), its log kept.
stop_last() {
    local last=${CRI_RUNTIMES[${#CRI_RUNTIMES[@]} - 1]}
    # shellcheck disable=SC2086
    cri_stop_runtime $last
    unset 'CRI_RUNTIMES[${#CRI_RUNTIMES[@]}-1]'
    cp "$1" "$out/$(basename "$1")"
}

cri_start_supd "$bin"
bench supd "$SUPD_SOCK"
stop_last "$SUPD_LOG"

cri_start_containerd
bench containerd "$CONTAINERD_SOCK"
stop_last "$CONTAINERD_LOG"

# Per results file and operation: the median of its samples, in ms, as "file<TAB>op<TAB>ms".
medians() {
    local f
    for f in "$1"/*.json; do
        [ -e "$f" ] || continue
        jq -r --arg file "$(basename "$f" .json)" '
            .operationsNames as $ops
            | [range(0; $ops | length) as $i
               | [.datapoints[] | .operationsDurationsNs[$i] // empty] | sort
               | if length == 0 then empty
                 elif length % 2 == 1 then .[length / 2 | floor]
                 else (.[length / 2 - 1] + .[length / 2]) / 2 end
               | {op: $ops[$i], ms: (. / 1e6)}]
            | .[] | [$file, .op, .ms] | @tsv' "$f"
    done
}
medians "$out/supd" > "$out/supd.tsv"
medians "$out/containerd" > "$out/containerd.tsv"

echo
echo "CRI benchmark (critest v1.26.1 -benchmark, $n pods/containers, medians in ms):"
printf '%-34s %-34s %10s %12s %8s\n' benchmark operation supd containerd ratio
awk -F'\t' '
    NR == FNR { c[$1 "\t" $2] = $3; next }
    {
        k = $1 "\t" $2
        ratio = (k in c && c[k] > 0) ? sprintf("%.2f", $3 / c[k]) : "-"
        cd = (k in c) ? sprintf("%.3f", c[k]) : "-"
        printf "%-34s %-34s %10.3f %12s %8s\n", $1, $2, $3, cd, ratio
        seen[k] = 1
    }
    END {
        for (k in c) if (!(k in seen)) {
            split(k, p, "\t"); printf "%-34s %-34s %10s %12.3f %8s\n", p[1], p[2], "-", c[k], "-"
        }
    }' "$out/containerd.tsv" "$out/supd.tsv"
echo "results: $out/{supd,containerd}/*.json, logs: $out/{supd,containerd}/critest.log, $out/{supd,containerd}.log"
if [ ${#failed[@]} -gt 0 ]; then
    echo "benchmark specs failed against: ${failed[*]} (their rows are missing or partial)" >&2
    exit 1
fi
