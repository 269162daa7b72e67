#!/usr/bin/env bash
# Boots the bare-metal kernel of examples/qemu-aarch64 on QEMU's virt machine (Cortex-A57,
# MMU and caches on) with a virtio-blk disk, and exits with the kernel's status: 0 only if
# every transfer it made through virtio-drivers and dmakit was verified.
#
# Installs qemu-system-aarch64 (Debian's qemu-system-arm, without recommended packages) and
# the aarch64-unknown-none target when they are missing, builds the kernel (release),
# creates a 4 MiB raw disk image and runs QEMU under a timeout (QEMU_TIMEOUT seconds,
# default 60).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
example="$root/examples/qemu-aarch64"

if ! command -v qemu-system-aarch64 >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends qemu-system-arm >/dev/null
fi
rustup target add aarch64-unknown-none >/dev/null 2>&1 ||
  rustup target list --installed | grep -qx aarch64-unknown-none

(cd "$example" && cargo build --release --quiet)
kernel="$example/target/aarch64-unknown-none/release/qemu-aarch64-kernel"
disk="$example/target/disk.img"
rm -f "$disk"
truncate -s 4M "$disk"

# -nic none: without the recommended packages QEMU has no efi-virtio.rom for a NIC.
# force-legacy=false: the modern virtio-mmio interface (version 2).
status=0
timeout "${QEMU_TIMEOUT:-60}" qemu-system-aarch64 \
  -machine virt -cpu cortex-a57 -m 128M -smp 1 \
  -nographic -semihosting -nic none \
  -global virtio-mmio.force-legacy=false \
  -drive "file=$disk,if=none,format=raw,id=hd" \
  -device virtio-blk-device,drive=hd \
  -kernel "$kernel" || status=$?
if [ "$status" -eq 124 ]; then
  echo "qemu-aarch64: the kernel did not finish within ${QEMU_TIMEOUT:-60} s" >&2
fi
exit "$status"
