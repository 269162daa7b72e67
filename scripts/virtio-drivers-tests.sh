#!/usr/bin/env bash
# virtio-drivers' own unit tests over dmakit.
#
# The published virtio-drivers crate carries its test HAL (src/hal/fake.rs) and fake
# transports, whose devices read and write the addresses the HAL gives them. This script
# takes the published source through cargo (the registry copy `cargo fetch` brings for
# dmakit-virtio's dependency; no git), copies it to a scratch directory under target/,
# replaces the test HAL with one that delegates every call to dmakit-virtio over its host
# DMA layer (coherent memory from dmakit's allocator, shares mapped and bounced by
# dmakit's mapper), and runs `cargo test --lib -- --test-threads=1` twice:
#
#   default       shares on a non-coherent device: aligned ones in place, misaligned
#                 inbound ones bounced (dmakit's rule);
#   force-bounce  every share bounced (a force-bounce device, as a confidential guest's).
#
# Each run prints cargo's summary line and how many shares were done in place and how many
# were bounced (dmakit's statistics), and must pass at least 50 tests.
#
# console::embedded_io::tests::read_exact has a device thread that writes a chunk every
# 10 ms and fails when the driver has not re-posted its receive buffer by then, which
# happens under load with any HAL. So it is skipped by name in the main run and run on its
# own afterwards, retried once if it fails; its result is counted in the run's total. (A
# failing run of it aborts in a poisoned mutex, so it prints no summary line.)
#
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

version=0.13.0
flaky=console::embedded_io::tests::read_exact
min_tests=50

cargo fetch -q
src=$(cargo metadata --format-version 1 |
  python3 -c "import json,sys
m=json.load(sys.stdin)
print(next(p['manifest_path'] for p in m['packages']
           if p['name']=='virtio-drivers' and p['version']=='$version'
           and (p['source'] or '').startswith('registry+')))")
src=$(dirname "$src")

scratch=$repo/target/virtio-drivers-tests
work=$scratch/virtio-drivers-$version
rm -rf "$work"
mkdir -p "$scratch"
cp -r "$src" "$work"
chmod -R u+w "$work"
# The crate's toolchain file would ask rustup for its own components; build with ours.
rm -f "$work/rust-toolchain.toml"

# Its own workspace (it sits inside dmakit's), and dmakit-virtio with the host DMA layer
# for its tests (without dmakit-virtio's Hal, which belongs to the registry's copy).
cat >>"$work/Cargo.toml" <<EOF

[workspace]

[dev-dependencies.dmakit-virtio]
path = "$repo/crates/dmakit-virtio"
default-features = false
features = ["host"]
EOF

cat >"$work/src/hal/fake.rs" <<'EOF'
//! Test HAL, replaced by dmakit's scripts/virtio-drivers-tests.sh: every call goes to
//! dmakit-virtio over its host DMA layer. DMAKIT_VIRTIO_FORCE_BOUNCE=1 bounces every
//! share; DMAKIT_VIRTIO_STATS names a file that gets the share counts after each share.

use crate::{BufferDirection, Hal, PhysAddr};
use core::ptr::NonNull;
use dmakit_virtio::host::{HostLayout, HostStack, host_dma};
use dmakit_virtio::{Direction, VirtioDma};
use std::sync::OnceLock;

#[derive(Debug)]
pub struct FakeHal;

struct Layer {
    hal: VirtioDma,
    stack: &'static HostStack,
}

fn layer() -> &'static Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER.get_or_init(|| {
        let force_bounce = std::env::var("DMAKIT_VIRTIO_FORCE_BOUNCE").is_ok_and(|v| v == "1");
        let layout = HostLayout {
            force_bounce,
            ..HostLayout::default()
        };
        // SAFETY: the tests share only live buffers of this process.
        let (cfg, stack) = unsafe { host_dma(layout) };
        Layer {
            hal: VirtioDma::new(cfg).unwrap(),
            stack,
        }
    })
}

fn dir(d: BufferDirection) -> Direction {
    match d {
        BufferDirection::DriverToDevice => Direction::ToDevice,
        BufferDirection::DeviceToDriver => Direction::FromDevice,
        BufferDirection::Both => Direction::Bidirectional,
    }
}

fn record_counts() {
    if let Ok(path) = std::env::var("DMAKIT_VIRTIO_STATS") {
        let t = layer().stack.mapper().stats().total();
        let (forced, misaligned) = (t.bounced.forced, t.bounced.misaligned);
        let line = format!(
            "in_place={} bounced={} (forced {forced}, misaligned {misaligned})\n",
            t.direct,
            t.bounces_total()
        );
        std::fs::write(path, line).unwrap();
    }
}

unsafe impl Hal for FakeHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        layer().hal.dma_alloc(pages, false)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        unsafe { layer().hal.dma_dealloc(paddr, vaddr, pages, false) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        layer().hal.mmio_phys_to_virt(paddr, size)
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let paddr = unsafe { layer().hal.share(buffer, dir(direction), false) };
        record_counts();
        paddr
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        unsafe { layer().hal.unshare(paddr, buffer, dir(direction), false) }
    }
}
EOF

export CARGO_TARGET_DIR=$scratch/target
failed=0

# Runs cargo test in the patched crate with `$@` after `--`; prints cargo's summary line
# and sets `passed`. Returns cargo's status.
run_tests() {
  local log=$scratch/$mode.log status=0
  (cd "$work" && cargo test -q --lib -- --test-threads=1 "$@") >"$log" 2>&1 || status=$?
  passed=$(grep -E '^test result:' "$log" | tail -1 | sed -E 's/.* ([0-9]+) passed.*/\1/')
  summary=$(grep -E '^test result:' "$log" | tail -1 || true)
  echo "  $mode${1:+ ($*)}: ${summary:-no summary line (see $log)}"
  if [ "$status" -ne 0 ]; then
    grep -E '^(---- |failures:|    [a-z_:]+$)|panicked' "$log" | head -40 || true
  fi
  return "$status"
}

for mode in default force-bounce; do
  force=0
  [ "$mode" = force-bounce ] && force=1
  counts=$scratch/$mode.counts
  rm -f "$counts"
  export DMAKIT_VIRTIO_FORCE_BOUNCE=$force DMAKIT_VIRTIO_STATS=$counts
  echo "virtio-drivers $version tests over dmakit, $mode:"
  total=0
  if run_tests --skip "$flaky"; then
    total=$passed
    shares=$(cat "$counts" 2>/dev/null || echo "no shares recorded")
    # Without the per-share statistics file, which only adds latency to its timed window.
    unset DMAKIT_VIRTIO_STATS
    if run_tests --exact "device::$flaky" || { echo "  retrying $flaky once"; run_tests --exact "device::$flaky"; }; then
      total=$((total + passed))
    else
      failed=1
    fi
  else
    failed=1
    shares=$(cat "$counts" 2>/dev/null || echo "no shares recorded")
  fi
  echo "  $mode: $total tests passed; shares in the main run: $shares"
  if [ "$total" -lt "$min_tests" ]; then
    echo "  $mode: fewer than $min_tests tests passed" >&2
    failed=1
  fi
done

exit "$failed"
