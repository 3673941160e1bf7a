#!/usr/bin/env bash
# Runs SIG Node's CRI validation suite (critest v1.26.1, from ../shared/cri-tools) against a
# real supd: a supd of its own (private root, state dir and socket, a private CNI bridge and
# subnet), critest's images served from a loopback registry, the whole suite, then a verdict.
# Fails if any spec fails other than the allowed ones below; everything it made is removed on
# exit. Needs root.
#
#   deploy/critest.sh [CRITEST ARGS...]     e.g. --ginkgo.focus 'Networking'
#
# Environment: CRI_TOOLS (the cri-tools directory), SUP_PROFILE (debug or release: which
# target/ binaries, built first unless SUP_NO_BUILD=1), CRITEST_OUT (where the log, the JSON
# report and supd's log are kept; target/critest), CRI_FIXTURES_CACHE (a directory that keeps
# the built images between runs), SUP_NO_DEPS=1 (everything is installed: no apt, as in the
# cgroup v2 guest, which has no network).
set -euo pipefail
# shellcheck source=deploy/cri-env.sh
source "$(dirname "$0")/cri-env.sh"
cd "$CRI_CHECKOUT"

# Failures that are not sup's to fix (see critest-fixtures.sh: no runtime passes these offline
# with the stand-in images). Names as critest prints them heading each spec in its verbose log
# (its closing summary puts "[It]" before the last part).
allowed=(
    "[k8s.io] Image Manager public image with digest should be pulled and removed [Conformance]"
    "[k8s.io] Security Context bucket runtime should support MaskedPaths"
)

[ "${SUP_NO_DEPS:-0}" = 1 ] || deploy/install-deps.sh
cri_build_sup debug
bin=$CRI_BIN
out=${CRITEST_OUT:-$CRI_CHECKOUT/target/critest}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out/critest.log" "$out/report.json" "$out/supd.log" "$out/specs.tsv"
command -v jq >/dev/null || apt-get install -y -qq --no-install-recommends jq >/dev/null

cri_env_init critest
cri_net_up
cri_fixtures_up
cri_start_supd "$bin"

cri_log "critest (log: $out/critest.log)"
start=$SECONDS
set +e
"$CRITEST" --runtime-endpoint "unix://$SUPD_SOCK" --image-endpoint "unix://$SUPD_SOCK" \
    --ginkgo.no-color --ginkgo.v --ginkgo.timeout 30m --ginkgo.json-report "$out/report.json" \
    "$@" 2>&1 | tee "$out/critest.log"
critest_rc=${PIPESTATUS[0]}
set -e
cri_log "critest exited $critest_rc after $((SECONDS - start)) s"
# Pods critest left are removed and supd stopped before its log is kept; what supd leaves
# behind after that (processes, mounts, namespaces) fails the run.
# shellcheck disable=SC2086
cri_stop_runtime ${CRI_RUNTIMES[0]}
CRI_RUNTIMES=()
cp "$SUPD_LOG" "$out/supd.log"
leftovers=("${CRI_LEFTOVERS[@]}")
CRI_LEFTOVERS=()

if [ ! -s "$out/report.json" ]; then
    echo "critest wrote no report (exit $critest_rc): see $out/critest.log" >&2
    exit 1
fi
# One line per spec that ran: state, then the full name as critest prints it; then, for each
# failure, its location and the first line of its message.
jq -r '.[].SpecReports[]
    | select(.LeafNodeType == "It" or .State != "passed")
    | ((.ContainerHierarchyTexts // []) + [.LeafNodeText] | map(select(. != "")) | join(" ")) as $name
    | [.State, (if $name == "" then "[" + .LeafNodeType + "]" else $name end),
       ((.Failure.Location.FileName // "" | sub(".*/cri-tools/"; "")) + ":"
        + (.Failure.Location.LineNumber // 0 | tostring)),
       (.Failure.Message // "" | split("\n") | map(select(test("\\S"))) | first // "")]
    | @tsv' "$out/report.json" > "$out/specs.tsv"

passed=0 failed=0 skipped=0 not_allowed=0
failures=() fixed=()
while IFS=$'\t' read -r state name where why; do
    case $state in
        passed)
            passed=$((passed + 1))
            for a in "${allowed[@]}"; do
                if [ "$a" = "$name" ]; then fixed+=("$name"); fi
            done;;
        skipped | pending) skipped=$((skipped + 1));;
        *)
            failed=$((failed + 1))
            mark="NOT ALLOWED"
            for a in "${allowed[@]}"; do
                if [ "$a" = "$name" ]; then mark=allowed; break; fi
            done
            [ "$mark" = allowed ] || not_allowed=$((not_allowed + 1))
            failures+=("[$mark] $name ($state at $where): ${why:0:200}");;
    esac
done < "$out/specs.tsv"

echo
echo "critest v1.26.1 against supd, failed specs:"
if [ ${#failures[@]} -gt 0 ]; then printf '  %s\n' "${failures[@]}"; else echo "  none"; fi
echo "log: $out/critest.log, report: $out/report.json, supd log: $out/supd.log"
if [ ${#fixed[@]} -gt 0 ]; then
    echo "allowed to fail, but passed (take them off the list in $0):"
    printf '  %s\n' "${fixed[@]}"
fi
if [ ${#leftovers[@]} -gt 0 ]; then
    echo "left behind by supd once its pods were removed and it stopped:"
    printf '  %s\n' "${leftovers[@]}"
fi
echo "critest: $passed passed, $failed failed ($((failed - not_allowed)) allowed), $skipped skipped"
if [ "$not_allowed" -gt 0 ]; then
    echo "critest: FAIL: $not_allowed spec(s) failed that are not allowed to" >&2
    exit 1
fi
if [ ${#leftovers[@]} -gt 0 ]; then
    echo "critest: FAIL: supd left processes or mounts behind" >&2
    exit 1
fi
if [ "$passed" -eq 0 ]; then
    echo "critest: FAIL: no spec passed (exit $critest_rc)" >&2
    exit 1
fi
if [ "$failed" -eq 0 ] && [ "$critest_rc" -ne 0 ]; then
    echo "critest: FAIL: no spec failed but critest exited $critest_rc" >&2
    exit 1
fi
echo "critest: OK"
