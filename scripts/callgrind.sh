#!/usr/bin/env bash
# Instructions per 64-byte map+unmap pair, direct, bounced through SWIOTLB and through the
# coherent object pool, per 4 KiB pair through a strict IOMMU domain, and per pair of a
# four-segment scatter-gather list (4 x 2 KiB) in that domain, counted by callgrind
# (identical whatever the machine's load): scripts/callgrind.sh [N]
#
# Runs crates/dmakit-sim/examples/map_unmap_loop.rs with 1,000 and 1,000 + N pairs (default
# N = 10,000) and divides the difference in instructions (Ir) by N, so set-up does not count.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
cargo build -q --release -p dmakit-sim --example map_unmap_loop
bin="${CARGO_TARGET_DIR:-target}/release/examples/map_unmap_loop"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ir() {
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" "$1" "$2" 2>"$out/log" >/dev/null
  grep -E '^(summary|totals):' "$out/cg" | head -1 | awk '{print $2}'
}
for mode in direct bounced coherent iommu iommu-sg; do
  base=$(ir "$mode" 1000)
  more=$(ir "$mode" $((1000 + n)))
  case "$mode" in
    iommu) size="4 KiB" ;;
    iommu-sg) size="4 x 2 KiB sg" ;;
    *) size="64 B" ;;
  esac
  echo "$mode $size map+unmap: $(( (more - base) / n )) instructions per pair (callgrind, N=$n)"
done
