#!/bin/busybox sh
# Stage 1, PID 1 in the initramfs: host / read-only over 9p under a tmpfs overlay, fresh /run
# and /tmp, the per-run control share at /run/vmrun; then stage 2 from that share.
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "vmrun stage 1: $*"; poweroff -f; }
mkdir -p /proc /sys /lower /rw /newroot
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(cat /modules); do insmod "/lib/modules/$m" || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower \
  || fail "mount host root"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || fail "mount overlay"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mkdir /newroot/run/vmrun
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmrunctl /newroot/run/vmrun \
  || fail "mount control share"
for fs in dev proc sys; do mount -o move "/$fs" "/newroot/$fs"; done
exec switch_root /newroot /bin/bash /run/vmrun/stage2.sh
