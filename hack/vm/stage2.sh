#!/bin/bash
# Stage 2, PID 1 on the overlay root: kernel modules, writable shares, optional network, then
# the command with the host's environment and cwd. Its exit status goes to the control share
# before power-off; vmrun treats a missing status as a guest crash.
ctl=/run/vmrun
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
finish() {
  echo "$1" >"$ctl/rc"
  echo o >/proc/sysrq-trigger
  sleep 60
}
exec 2>>"$ctl/err"
trap 'echo "vmrun stage 2: failed: $BASH_COMMAND" >&2; finish 125' ERR
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
hostname vmrun
ip link set lo up
# Everything an ESP/IKE test may need, loaded up front so the fast drivers win (aesni).
modprobe -a esp4 esp6 ah4 xfrm_user xfrm4_tunnel gcm aesni_intel ghash_clmulni_intel \
  chacha20poly1305 veth dummy
while IFS= read -r -d '' tag && IFS= read -r -d '' dir; do
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "$tag" "$dir"
done <"$ctl/rwdirs"
if [[ -e $ctl/net ]]; then
  modprobe virtio_net
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
fi
trap - ERR
mapfile -d '' -t envv <"$ctl/env"
mapfile -d '' -t argv <"$ctl/argv"
cd "$(<"$ctl/cwd")" || finish 125
read -r uptime _ </proc/uptime && echo "$uptime" >"$ctl/started"
env -i -- "${envv[@]}" "${argv[@]}" >>"$ctl/out" 2>>"$ctl/err" </dev/null
finish $?
