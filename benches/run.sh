#!/usr/bin/env bash
# The README's main job: install the benchmark peers, then compare ferroclip with them side by
# side: preprocessing, retrieval maths, end-to-end embedding, training. Offline-safe: models
# are random-weight checkpoints built locally, images are generated.
# Usage: bash benches/run.sh [--quick]     (reports go to benches/results/*-<arch>.md)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nasm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nasm
fi
python3 -m pip install -q ".[bench]"
arch=$(uname -m)
for bench in preprocess retrieval models train; do
    script="benches/bench_${bench}.py"
    [ -f "$script" ] || continue
    echo "== $script $*" >&2
    python3 "$script" --out "benches/results/${bench}-${arch}.md" "$@"
done
