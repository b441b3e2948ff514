#!/usr/bin/env bash
# The README's main job: install the benchmark peers and compare preprocessing side by side.
# Usage: bash benches/run.sh [--quick] [bench_preprocess.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nasm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nasm
fi
python3 -m pip install -q ".[bench]"
python3 benches/bench_preprocess.py --out "benches/results/preprocess-$(uname -m).md" "$@"
