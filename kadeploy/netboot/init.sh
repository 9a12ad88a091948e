#!/bin/sh
# /init of the kadeploy install system (kadeploy netboot build): brings the network up
# by DHCP, reads kadeploy.* from the kernel command line, runs ka-d-client --install,
# reports the outcome to the boot server over HTTP, then reboots or powers off.
# Every line it prints starts with "kadeploy-init:" so that a serial console log shows
# where a node is.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "kadeploy-init: $*" > /dev/console; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs -o mode=0755 tmpfs /dev
mkdir -p /dev/pts /run /tmp && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /run
exec > /dev/console 2>&1 < /dev/console
say "started (kernel $(uname -r))"

# Values from the kernel command line: kadeploy.NAME=VALUE becomes KD_NAME.
KD_SERVER= KD_SESSION= KD_KEY= KD_DISK= KD_NODE= KD_URL= KD_AFTER=reboot KD_ONFAIL=poweroff KD_IF=
for word in $(cat /proc/cmdline); do
  case "$word" in
    kadeploy.server=*)  KD_SERVER=${word#*=} ;;
    kadeploy.session=*) KD_SESSION=${word#*=} ;;
    kadeploy.key=*)     KD_KEY=${word#*=} ;;
    kadeploy.disk=*)    KD_DISK=${word#*=} ;;
    kadeploy.node=*)    KD_NODE=${word#*=} ;;
    kadeploy.url=*)     KD_URL=${word#*=} ;;
    kadeploy.after=*)   KD_AFTER=${word#*=} ;;
    kadeploy.onfail=*)  KD_ONFAIL=${word#*=} ;;
    kadeploy.if=*)      KD_IF=${word#*=} ;;
  esac
done

finish() {  # finish ACTION: reboot, poweroff or shell
  sync
  case "$1" in
    shell) say "dropping to a shell"; exec /bin/sh ;;
    poweroff) say "powering off"; busybox poweroff -f || echo o > /proc/sysrq-trigger ;;
    *) say "rebooting"; busybox reboot -f || echo b > /proc/sysrq-trigger ;;
  esac
  sleep 600
}

report() {  # report STATE [DETAIL]: tell the boot server (best effort: the log keeps it too)
  [ -n "$KD_URL" ] || return 0
  python3 - "$KD_URL" "$1" "${2:-}" <<'PY' || say "could not report '$2' to the boot server"
import sys, urllib.parse, urllib.request
url, state, detail = sys.argv[1:]
query = urllib.parse.urlencode({"state": state, "detail": detail})
urllib.request.urlopen(url.rstrip("/") + "/report?" + query, data=b"", timeout=10).read()
PY
}

# Coldplug: no udev here, so load the driver of every device the kernel found.
cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u | xargs -r modprobe -qab 2>/dev/null
# and the file systems an install mounts (the kernel would ask for them too; this is sooner)
for m in virtio_net virtio_blk virtio_scsi sd_mod nvme ahci vfat nls_cp437 nls_ascii nls_utf8 efivarfs; do
  modprobe -q $m 2>/dev/null
done
ip link set lo up

# DHCP on the interface given (kadeploy.if=, or BOOTIF=01-mac from iPXE), else on each
# Ethernet interface in turn until one gets a lease.
BOOTIF_MAC=$(sed -n 's/.*BOOTIF=01-\([0-9a-fA-F-]*\).*/\1/p' /proc/cmdline | tr - : | tr A-F a-f)
candidates=$KD_IF
if [ -z "$candidates" ]; then
  for dev in /sys/class/net/*; do
    name=${dev##*/}
    [ "$name" = lo ] && continue
    [ -n "$BOOTIF_MAC" ] && [ "$(cat $dev/address)" != "$BOOTIF_MAC" ] && continue
    candidates="$candidates $name"
  done
fi
up=
for i in 1 2 3 4 5 6 7 8 9 10; do
  [ -n "$candidates" ] && break
  sleep 1   # the NIC driver may still be probing
done
for name in $candidates; do
  ip link set "$name" up
  if busybox udhcpc -i "$name" -V kadeploy-install -n -q -t 10 -T 2 -s /usr/share/kadeploy/udhcpc.script; then
    up=$name; break
  fi
done
if [ -z "$up" ]; then
  say "FAILED: no DHCP lease on any interface (${candidates:-none found})"
  finish "$KD_ONFAIL"
fi
say "network up on $up: $(ip -4 -o addr show dev "$up" | awk '{print $4}')"
# The node's name from its iPXE script: the install server also matches nodes by the
# host name they report (in proxy mode the site's DHCP server chose the address).
[ -n "$KD_NODE" ] && hostname "$KD_NODE"
report network "$up"

set -- ka-d-client --install
[ -n "$KD_SERVER" ] && set -- "$@" -h "$KD_SERVER"
[ -n "$KD_SESSION" ] && set -- "$@" -s "$KD_SESSION"
[ -n "$KD_DISK" ] && set -- "$@" --disk "$KD_DISK"
if [ -n "$KD_KEY" ]; then
  (umask 077; printf '%s' "$KD_KEY" > /run/kadeploy.key)
  set -- "$@" --key-file /run/kadeploy.key
fi
say "$(ka-d-client --version 2>&1 | tr '\n' ' ')"
say "running: $*"
report installing "$*"
"$@"
status=$?
if [ $status -eq 0 ]; then
  say "install done"
  report installed "exit status 0"
  finish "$KD_AFTER"
fi
say "FAILED: ka-d-client exited with status $status"
report failed "ka-d-client exit status $status"
finish "$KD_ONFAIL"
