#!/usr/bin/env bash
# Renders the HTML report of a short `dmakit simulate` run in headless Chromium and saves a
# screenshot, to check the charts render. Not part of `cargo test` (it installs Chromium).
# Usage: scripts/check-report.sh [OUT_DIR]   (default: target/report-check)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/report-check}"
mkdir -p "$out"
if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
cargo run --release -q -- simulate --transfers 20000 --report "$out" > "$out/table.txt"
profile="$(mktemp -d)"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
    --window-size=1100,1750 --screenshot="$PWD/$out/report.png" "file://$PWD/$out/report.html" \
    2>/dev/null
rm -rf "$profile"
test -s "$out/report.png"
echo "screenshot: $out/report.png"
