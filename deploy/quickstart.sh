#!/usr/bin/env bash
# From a fresh Debian machine (as root) to a running supd with a busybox image imported:
# installs what is missing, builds sup, starts supd in the background, makes a busybox image
# from Debian's busybox-static and imports it.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh
echo "building sup (release)..." >&2
cargo build --release --quiet --bins
install -m 0755 target/release/supd target/release/sup-shim target/release/supctl target/release/sup-pause /usr/local/bin/

address=${SUP_ADDRESS:-/run/sup/sup.sock}
if ! supctl --address "$address" version >/dev/null 2>&1; then
    mkdir -p /var/log/sup
    echo "starting supd (log: /var/log/sup/supd.log)..." >&2
    setsid supd --address "$address" >>/var/log/sup/supd.log 2>&1 < /dev/null &
    for _ in $(seq 1 100); do
        supctl --address "$address" version >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
supctl --address "$address" version

image=$(mktemp --suffix=.tar)
trap 'rm -f "$image"' EXIT
deploy/make-busybox-image.sh "$image" busybox:latest >/dev/null
supctl --address "$address" images import "$image"
supctl --address "$address" images ls
supctl --address "$address" run --rm busybox "hello-$$" echo "hello from a sup container"
