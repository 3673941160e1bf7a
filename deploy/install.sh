#!/usr/bin/env bash
# Installs sup as a system service: builds release binaries, installs them in /usr/local/bin,
# puts the default config in /etc/sup/supd.toml (an existing one is kept) and the systemd
# unit in /etc/systemd/system, then starts (or restarts) supd. Restarting supd this way is
# also how to upgrade it: running containers are not stopped (see README, "Upgrades").
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh
cargo build --release --quiet --bins
install -D -m 0755 target/release/supd /usr/local/bin/supd
install -D -m 0755 target/release/sup-shim /usr/local/bin/sup-shim
install -D -m 0755 target/release/supctl /usr/local/bin/supctl
install -D -m 0755 target/release/sup-pause /usr/local/bin/sup-pause
if [ ! -e /etc/sup/supd.toml ]; then
    install -D -m 0644 deploy/supd.toml /etc/sup/supd.toml
fi
install -D -m 0644 deploy/supd.service /etc/systemd/system/supd.service
install -D -m 0644 README.md /usr/local/share/doc/sup/README.md

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable supd.service >/dev/null
    systemctl restart supd.service
    systemctl --no-pager --lines=0 status supd.service || true
else
    echo "systemd is not running here: start supd yourself (supd --config /etc/sup/supd.toml)" >&2
fi
