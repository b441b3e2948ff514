#!/usr/bin/env bash
# The README's main job: install the benchmark peers, then compare ferroclip with them side by
# side: preprocessing, retrieval maths, end-to-end embedding, training. Offline-safe: models
# are random-weight checkpoints built locally, images are generated.
# Usage: bash benches/run.sh [--quick] [--update-reports]
# Reports go to benches/results/local/*-<arch>.md (ignored by git); --update-reports writes the
# committed ones in benches/results/ instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then SUDO_CMD=; else SUDO_CMD=sudo; fi
if ! command -v nasm >/dev/null 2>&1; then
    $SUDO_CMD apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO_CMD apt-get install -y -qq nasm
fi
# Fashion-MNIST (real labelled pixels, offline) for the probe benchmark; optional.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    $SUDO_CMD apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || echo "dataset-fashion-mnist not installable: probe benchmark uses synthetic features" >&2
fi
out=benches/results/local
args=()
for a in "$@"; do
    if [ "$a" = --update-reports ]; then out=benches/results; else args+=("$a"); fi
done
mkdir -p "$out"
echo "== installing ferroclip and the benchmark peers (torch, transformers, open_clip, faiss, ...) into $(command -v python3)" >&2
python3 -m pip install -q ".[bench]"
arch=$(uname -m)
for bench in preprocess retrieval models train finetune distributed; do
    script="benches/bench_${bench}.py"
    [ -f "$script" ] || continue
    echo "== $script ${args[*]:-} -> $out/${bench}-${arch}.md" >&2
    python3 "$script" --out "$out/${bench}-${arch}.md" ${args[@]+"${args[@]}"}
done
