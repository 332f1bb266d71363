#!/usr/bin/env bash
# System packages for tests and the lab, in one apt call (each kernel package install
# regenerates initramfs, so one call is much cheaper than several).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(
  qemu-system-x86 linux-image-amd64 busybox-static   # the test VM (real kernel with ESP)
  iproute2 iputils-ping tcpdump iperf3 socat          # datapath checks inside the VM
  strace                                              # tests/xfrm/golden_capture.py
  strongswan-charon strongswan-swanctl                # the independent IKEv2 peer
  libstrongswan-standard-plugins                      # charon: openssl (x25519, ECP), gcm
  libcharon-extra-plugins                             # charon: kernel-libipsec (host benchmark)
  xz-utils cpio                                       # vmlinux extraction, initramfs
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: system packages present"
