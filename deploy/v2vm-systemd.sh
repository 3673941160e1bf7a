#!/usr/bin/env bash
# Makes a variant of the cgroup v2 guest (../shared/v2vm) that boots with systemd as PID 1, as
# production hosts do: same kernel and root image (read-only, snapshot=on), another initramfs
# whose /init, after mounting the root, writes a service into it that runs the guest command
# on ttyS1 and powers off, then hands over to /lib/systemd/systemd. The root image must hold
# systemd and dbus (test-v2.sh builds it with them). Prints the variant's cache directory,
# for run-in-v2vm.sh's V2VM_CACHE.
#
#   deploy/v2vm-systemd.sh [SOURCE_CACHE]      (default /var/lib/v2vm)
set -euo pipefail
src=${1:-${V2VM_CACHE:-/var/lib/v2vm}}
dst=$src-systemd
[ -e "$src/root.img" ] || { echo "v2vm-systemd: no guest image in $src" >&2; exit 1; }
grep -qw systemd "$src/info" || { echo "v2vm-systemd: $src was built without systemd" >&2; exit 1; }

self=$(realpath "$0")
if [ -e "$dst/initrd.img" ] && [ "$dst/initrd.img" -nt "$src/initrd.img" ] &&
   [ "$dst/initrd.img" -nt "$self" ]; then
    echo "$dst"
    exit 0
fi
mkdir -p "$dst"
for f in vmlinux root.img info; do ln -sfn "$src/$f" "$dst/$f"; done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/i"
(cd "$work/i" && gzip -dc "$src/initrd.img" | busybox cpio -i -d 2>/dev/null)
grep -q 'switch_root /newroot /sbin/v2vm-init' "$work/i/init" ||
    { echo "v2vm-systemd: $src/initrd.img's /init is not the one expected" >&2; exit 1; }
mkdir -p "$work/i/systemd"

# The guest command, run by sup-v2vm.service: the shares and terminal as v2vm-init sets them
# up, the command's status back through the control share, then power off.
cat >"$work/i/systemd/v2vm-command" <<'EOF'
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
modprobe -a 9pnet_virtio 9p overlay virtio-rng
mount -t tmpfs -o mode=1777 tmpfs /tmp
p9='-t 9p -o trans=virtio,version=9p2000.L,msize=262144'
mkdir -p /run/v2vm && mount $p9 v2ctl /run/v2vm
share=$(cat /run/v2vm/share)
[ -z "$share" ] || { mkdir -p "$share" && mount $p9,cache=mmap v2share "$share"; }
if [ -e /run/v2vm/tty ]; then stty -F /dev/ttyS1 sane; else stty -F /dev/ttyS1 raw -echo; fi
setsid -c /bin/bash /run/v2vm/cmd <>/dev/ttyS1 >&0 2>&0
echo $? >/run/v2vm/rc
sync
busybox poweroff -f
EOF
cat >"$work/i/systemd/sup-v2vm.service" <<'EOF'
[Unit]
Description=the v2vm guest command
Wants=dbus.service
After=dbus.service systemd-tmpfiles-setup.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/v2vm-command
TimeoutStartSec=infinity
KillMode=process
EOF
# Every controller stays enabled from the root down, as on a node where the kubelet runs.
cat >"$work/i/systemd/accounting.conf" <<'EOF'
[Manager]
DefaultCPUAccounting=yes
DefaultIOAccounting=yes
DefaultMemoryAccounting=yes
DefaultTasksAccounting=yes
EOF

sed -i 's|^exec switch_root /newroot /sbin/v2vm-init$|/systemd-setup\nexec switch_root /newroot /lib/systemd/systemd|' "$work/i/init"
cat >"$work/i/systemd-setup" <<'EOF'
#!/bin/busybox sh
# Installs the guest command's service into the root and makes it the boot's goal.
R=/newroot
cp /systemd/v2vm-command $R/usr/local/sbin/v2vm-command
chmod 755 $R/usr/local/sbin/v2vm-command
mkdir -p $R/etc/systemd/system/multi-user.target.wants $R/etc/systemd/system.conf.d
cp /systemd/sup-v2vm.service $R/etc/systemd/system/
ln -sf ../sup-v2vm.service $R/etc/systemd/system/multi-user.target.wants/sup-v2vm.service
ln -sf /lib/systemd/system/multi-user.target $R/etc/systemd/system/default.target
cp /systemd/accounting.conf $R/etc/systemd/system.conf.d/sup-accounting.conf
# No login prompts, no clock or network waits on a throwaway guest.
for u in getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyS1.service \
         systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
         docker-registry.service; do
    ln -sf /dev/null $R/etc/systemd/system/$u
done
echo v2vm >$R/etc/hostname
EOF
chmod 755 "$work/i/systemd-setup"
(cd "$work/i" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$dst/initrd.img.new"
mv -f "$dst/initrd.img.new" "$dst/initrd.img"
echo "$dst"
