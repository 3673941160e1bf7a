#!/usr/bin/env bash
# Installs the Debian packages sup needs to build, run and test: the OCI runtime (runc), the
# protobuf compiler (for the API's build), busybox-static (test and demo images), and the
# tools the test suite uses (docker-registry, htpasswd and openssl for the registry tests;
# the CNI plugins, and iptables for their portmap plugin, for the CRI tests and for pods;
# tmux, the real terminal the CRI streaming tests run crictl exec -it in).
# Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(runc protobuf-compiler libprotobuf-dev busybox-static iproute2 iptables tar gzip zstd python3 python3-venv docker-registry apache2-utils openssl containernetworking-plugins tmux)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install a Rust toolchain (1.88 or newer) with rustup first" >&2
    exit 1
fi
