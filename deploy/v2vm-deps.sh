#!/usr/bin/env bash
# Installs what ../shared/v2vm (the cgroup-v2-only guest) needs on the host: debootstrap, xz,
# and qemu-system-x86. qemu comes from bookworm-backports when the host already has
# backports' qemu-utils (which Breaks bookworm's own qemu-system-common), through a private
# apt configuration so that the host's sources stay as they are.
set -euo pipefail

apt_get() { apt-get -o DPkg::Lock::Timeout=900 "$@"; }
missing=()
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v xz >/dev/null || missing+=(xz-utils)
if [ ${#missing[@]} -gt 0 ]; then
    apt_get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v qemu-system-x86_64 >/dev/null && exit 0

if apt_get install -y -q --no-install-recommends --no-remove qemu-system-x86 >/dev/null 2>&1; then
    exit 0
fi
mirror=$(awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}' \
    /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
mkdir -p "$dir/parts" "$dir/lists/partial" "$dir/archives/partial"
cp /etc/apt/sources.list.d/*.sources "$dir/parts/" 2>/dev/null || true
printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
    "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg >"$dir/parts/backports.sources"
opts=(-o Dir::Etc::sourcelist=/etc/apt/sources.list -o "Dir::Etc::sourceparts=$dir/parts"
      -o "Dir::State::lists=$dir/lists" -o "Dir::Cache::archives=$dir/archives")
apt_get "${opts[@]}" update -q >/dev/null
apt_get "${opts[@]}" install -y -q --no-install-recommends --no-remove \
    qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
    qemu-system-data/bookworm-backports seabios/bookworm-backports >/dev/null
command -v qemu-system-x86_64 >/dev/null
