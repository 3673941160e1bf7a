#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and end-to-end tests against real supd, sup-shim and
# runc (as root). Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "the end-to-end tests need root (mounts, runc): run as root" >&2
    exit 1
fi
deploy/install-deps.sh
cargo build --workspace --all-targets --quiet
# Tests start real daemons; two cores run two test binaries' tests at a time.
cargo test --workspace --no-fail-fast -- --test-threads="${SUP_TEST_THREADS:-4}"
