#!/usr/bin/env bash
# Runs the interleaved `paired` benchmark RUNS times (default 5) and prints, for every case
# time and every ratio, the median run's value and the min – max over the runs, as one
# markdown table: scripts/paired-runs.sh [RUNS] [NAME...]
#
# NAMEs select comparisons as `cargo bench -p dmakit-sim --bench paired -- NAME...` does;
# DMAKIT_BENCH_ROUNDS is passed on. Each run's own output is kept in the directory named on
# stderr, so a table can be traced back to the runs it summarises. With PAIRED_RUNS_DIR set
# to such a directory, its run*.txt files are summarised again without running anything.
set -euo pipefail
cd "$(dirname "$0")/.."
keep="${PAIRED_RUNS_DIR:-}"
if [ -z "$keep" ]; then
  runs="${1:-5}"
  shift || true
  keep=$(mktemp -d "${TMPDIR:-/tmp}/paired-runs.XXXXXX")
  echo "paired outputs: $keep" >&2
  cargo bench -q -p dmakit-sim --bench paired --no-run
  for i in $(seq 1 "$runs"); do
    cargo bench -q -p dmakit-sim --bench paired -- "$@" >"$keep/run$i.txt"
  done
fi
awk -v names="$*" '
  /^## / { sec = substr($0, 4); sub(/ \([0-9]+ rounds\)$/, "", sec); next }
  / ns$/ {
    name = $0; sub(/ +[0-9.]+ ns$/, "", name)
    add(sec, name, $(NF - 1), "ns", ""); next
  }
  / target / {
    name = $0; sub(/ +[0-9.]+ +target .*$/, "", name)
    target = $0; sub(/^.* target /, "", target)
    value = $0; sub(/ +target .*$/, "", value); sub(/^.* /, "", value)
    add(sec, name, value, "", target)
  }
  function add(s, n, v, unit, t,   k) {
    k = s SUBSEP n
    if (!(k in count)) { order[++keys] = k; sec_of[k] = s; name_of[k] = n }
    vals[k, ++count[k]] = v + 0; unit_of[k] = unit; target_of[k] = t
  }
  END {
    print "| comparison | case or ratio | median | min – max | target |"
    print "|---|---|---:|---:|---|"
    for (i = 1; i <= keys; i++) {
      k = order[i]; c = count[k]
      for (a = 1; a <= c; a++) v[a] = vals[k, a]
      for (a = 2; a <= c; a++) for (b = a; b > 1 && v[b - 1] > v[b]; b--) { t = v[b]; v[b] = v[b - 1]; v[b - 1] = t }
      fmt = unit_of[k] == "ns" ? "%.1f ns" : "%.3f"
      printf "| %s | %s | " fmt " | " fmt " – " fmt " | %s |\n", sec_of[k], name_of[k], v[int((c + 1) / 2)], v[1], v[c], target_of[k]
    }
    printf "\n(median of %d runs of `cargo bench -p dmakit-sim --bench paired%s`)\n", c, names == "" ? "" : " -- " names
  }
' "$keep"/run*.txt
