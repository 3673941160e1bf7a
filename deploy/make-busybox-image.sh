#!/usr/bin/env bash
# Writes a `docker save` archive of a one-layer busybox image, made on the spot from Debian's
# busybox-static: nothing is downloaded.
#   usage: make-busybox-image.sh OUT.tar [NAME]     (NAME defaults to busybox:latest)
set -euo pipefail

out=${1:?usage: make-busybox-image.sh OUT.tar [NAME]}
name=${2:-busybox:latest}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "no $busybox: apt-get install busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,root,home/user,proc,sys,dev}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
user:x:1000:
nogroup:x:65534:
GROUP
chown 1000:1000 "$root/home/user"

mkdir -p "$work/archive/layer"
tar --sort=name --numeric-owner --mtime=@0 \
    -C "$root" -cf "$work/archive/layer/layer.tar" .
diff_id=sha256:$(sha256sum "$work/archive/layer/layer.tar" | cut -d' ' -f1)
arch=$(dpkg --print-architecture)
config=$(printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$arch" "$diff_id")
config_hex=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
printf '%s' "$config" > "$work/archive/$config_hex.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer/layer.tar"]}]' \
    "$config_hex" "$name" > "$work/archive/manifest.json"
tar -C "$work/archive" -cf "$out" manifest.json "$config_hex.json" layer/layer.tar
echo "$out"
