#!/usr/bin/env bash
# Instructions and locked read-modify-write instructions per operation, counted by callgrind
# (identical whatever the machine's load): scripts/instructions.sh [N] [MODE...]
#
# Runs crates/dmakit-sim/examples/map_unmap_loop.rs (its module docs describe the modes;
# mode bounced-to-device runs examples/to_device_loop.rs, a program of its own)
# under callgrind with 1,000 and 1,000 + N operations (default N = 10,000) and divides the
# difference by N, so set-up does not count. Without MODEs it runs all of them.
#
# Instructions: the difference in total Ir. Locked RMWs: callgrind's per-instruction counts
# (--dump-instr=yes) of every executed instruction that `objdump -d` of its object shows
# with a `lock` prefix, or as an `xchg` with a memory operand (locked without a prefix),
# summed over every object the run executed (the example, libc, the loader). The rmw-add
# and rmw-swap modes execute exactly one of each per iteration and must report 1.00.
#
# Prints one markdown table: mode, what one operation is, instructions and locked RMWs per
# operation; exits 1 if a calibration mode does not count 1.00. With RMW_WHERE=1 it also
# prints, under each mode's row, the functions its locked RMWs execute in (per operation).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
shift || true
modes=("$@")
if [ ${#modes[@]} -eq 0 ]; then
  modes=(direct bounced bounced-to-device bounced-512 bounced-4096 coherent iommu iommu-sg
    pool-64 pool-4096 rmw-add rmw-swap)
fi
for tool in valgrind objdump; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install valgrind binutils)" >&2; exit 2; }
done
cargo build -q --release -p dmakit-sim --example map_unmap_loop --example to_device_loop
examples="${CARGO_TARGET_DIR:-target}/release/examples"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Addresses of the locked instructions of object $1, one hex address (no 0x) a line, cached.
locked_addrs() {
  local list
  list="$out/locked.$(printf '%s' "$1" | md5sum | cut -c1-16)"
  if [ ! -f "$list" ]; then
    objdump -d --no-show-raw-insn "$1" 2>/dev/null |
      awk -F'\t' 'NF >= 2 && $1 ~ /^ *[0-9a-f]+:$/ {
          ins = $2; sub(/^ +/, "", ins)
          if (ins ~ /(^|[ ])lock[ ]/ || ins ~ /^xchg[a-z]*[ ].*\(/) {
            a = $1; gsub(/[ :]/, "", a); print a
          }
        }' >"$list"
  fi
  echo "$list"
}

# "<total Ir> <executed locked RMWs>" of one run: mode $1, $2 operations; the locked RMWs
# by function go to $out/where.$2 ("count<TAB>function" lines).
count() {
  local run=("$examples/map_unmap_loop" "$1" "$2")
  [ "$1" = bounced-to-device ] && run=("$examples/to_device_loop" "$2")
  valgrind --tool=callgrind --dump-instr=yes --compress-strings=no --compress-pos=no \
    --callgrind-out-file="$out/cg" "${run[@]}" 2>"$out/log" >/dev/null ||
    { cat "$out/log" >&2; exit 1; }
  local lists=()
  while IFS= read -r obj; do
    [ -f "$obj" ] && lists+=("$obj=$(locked_addrs "$obj")")
  done < <(sed -n 's/^c\{0,1\}ob=//p' "$out/cg" | sort -u)
  : >"$out/where.$2"
  awk -v lists="${lists[*]}" '
    BEGIN {
      k = split(lists, pairs, " ")
      for (i = 1; i <= k; i++) {
        eq = index(pairs[i], "="); obj = substr(pairs[i], 1, eq - 1)
        while ((getline a < substr(pairs[i], eq + 1)) > 0) locked[obj, "0x" a] = 1
      }
    }
    /^(summary|totals):/ && total == "" { total = $2 }
    /^ob=/ { ob = substr($0, 4); next }
    /^fn=/ { fn = substr($0, 4); next }
    /^calls=/ { skip = 1; next }
    /^0x/ {
      if (skip) { skip = 0; next }
      if ((ob, $1) in locked) { rmw += $NF; by_fn[fn] += $NF }
    }
    END {
      for (f in by_fn) printf "%d\t%s\n", by_fn[f], f > where
      printf "%s %d\n", total, rmw
    }
  ' where="$out/where.$2" "$out/cg"
}

what() {
  case "$1" in
    direct) echo "64 B map+unmap, no bounce" ;;
    bounced) echo "64 B map+unmap, SWIOTLB bounce" ;;
    bounced-to-device) echo "64 B ToDevice map+unmap, SWIOTLB bounce" ;;
    bounced-512) echo "512 B map+unmap, SWIOTLB bounce" ;;
    bounced-4096) echo "4 KiB map+unmap, SWIOTLB bounce" ;;
    coherent) echo "64 B map+unmap, coherent-pool bounce" ;;
    iommu) echo "4 KiB map+unmap, strict IOMMU" ;;
    iommu-sg) echo "4 x 2 KiB sg map+unmap, strict IOMMU" ;;
    pool-64) echo "swiotlb::Pool alloc+free, 64 B" ;;
    pool-4096) echo "swiotlb::Pool alloc+free, 4 KiB" ;;
    rmw-add) echo "AtomicU64::fetch_add (calibration: 1)" ;;
    rmw-swap) echo "AtomicU64::swap (calibration: 1)" ;;
    *) echo "?" ;;
  esac
}

echo "| mode | operation | instructions / op | locked RMW / op |"
echo "|---|---|---:|---:|"
status=0
for mode in "${modes[@]}"; do
  base=$(count "$mode" 1000)
  more=$(count "$mode" $((1000 + n)))
  read -r base_ir base_rmw <<<"$base"
  read -r more_ir more_rmw <<<"$more"
  rmw=$(awk -v n="$n" -v b="$base_rmw" -v m="$more_rmw" 'BEGIN { printf "%.2f", (m - b) / n }')
  awk -v m="$mode" -v w="$(what "$mode")" -v n="$n" -v bi="$base_ir" -v mi="$more_ir" \
    -v r="$rmw" 'BEGIN { printf "| %s | %s | %.0f | %s |\n", m, w, (mi - bi) / n, r }'
  if [[ "$mode" == rmw-* && "$rmw" != "1.00" ]]; then
    echo "calibration $mode counted $rmw locked RMWs per iteration, not 1.00" >&2
    status=1
  fi
  if [ "${RMW_WHERE:-0}" = 1 ]; then
    awk -F'\t' -v n="$n" 'FNR == NR { base[$2] = $1; next }
      { d = ($1 - base[$2]) / n; if (d >= 0.005) printf "|  | %.2f in %s | | |\n", d, $2 }' \
      "$out/where.1000" "$out/where.$((1000 + n))"
  fi
done
echo
echo "(callgrind, difference of 1,000 and $((1000 + n)) operations / $n)"
exit "$status"
