#!/usr/bin/env bash
# The README's main job: install the benchmark peers, then compare ferroclip with them side by
# side: preprocessing, retrieval maths, end-to-end embedding, training. Offline-safe: models
# are random-weight checkpoints built locally, images are generated.
# Usage: bash benches/run.sh [--quick] [--update-reports]
# Outside a venv it makes (and reuses) its own, cached like .ci/run's (see .ci/venv.sh).
# Reports go to benches/results/local/*-<arch>.md (ignored by git); --update-reports writes the
# committed ones in benches/results/ instead.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=.ci/venv.sh
source .ci/venv.sh
# Fashion-MNIST (real labelled pixels, offline) for the probe benchmark; optional.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "== Fashion-MNIST for the probe benchmark: apt-get install dataset-fashion-mnist (~30 MB; optional)" >&2
    if ! ferroclip_apt dataset-fashion-mnist >/dev/null 2>&1; then
        echo "   not installable here: the probe benchmark uses synthetic features instead" >&2
    fi
fi
out=benches/results/local
args=()
for a in "$@"; do
    if [ "$a" = --update-reports ]; then out=benches/results; else args+=("$a"); fi
done
mkdir -p "$out"
# Inside a venv (or conda env) already: install the peers there. Otherwise use a cached venv of
# our own (Debian 12 / Ubuntu >= 23.04 refuse pip into the system Python, PEP 668), the same
# one .ci/run builds, plus the benchmark-only peers layered over it.
if python3 -c 'import os, sys; sys.exit(0 if sys.prefix != sys.base_prefix or os.environ.get("CONDA_PREFIX") else 1)'; then
    ferroclip_build_prereqs
    PY=$(command -v python3)
    echo "== installing ferroclip and the benchmark peers (torch, transformers, open_clip, faiss, ...) into $PY" >&2
    echo "   (torch from PyPI is a CUDA build, ~11 GB; then the Rust core compiles for 1-3 min; pip is quiet meanwhile)" >&2
    "$PY" -m pip install -q ".[bench]"
else
    ferroclip_venv bench
    PY="$VENV/bin/python"
    echo "== benchmarks run in $VENV; for everyday use: source $VENV/bin/activate  (then: ferroclip --help)" >&2
fi
# clip-retrieval, bench_distributed.py's peer, pins numpy<2, pyarrow<16, transformers<5, ...: it
# gets its own venv over $PY's packages (torch reused, not downloaded again), built once and
# cached. A failure here is not the job's: bench_distributed.py then says why it is missing.
if ferroclip_peer_venv clip-retrieval "$PY"; then
    export FERROCLIP_PEER_CLIP_RETRIEVAL="$PEER_VENV/bin/python"
else
    export FERROCLIP_PEER_CLIP_RETRIEVAL_ERROR="its venv could not be built by benches/run.sh (see ${PEER_VENV:-its}.log)"
fi
arch=$(uname -m)
for bench in preprocess retrieval models train finetune distributed; do
    script="benches/bench_${bench}.py"
    [ -f "$script" ] || continue
    echo "== $script ${args[*]:-} -> $out/${bench}-${arch}.md" >&2
    "$PY" "$script" --out "$out/${bench}-${arch}.md" ${args[@]+"${args[@]}"}
done
echo "== reports in $out/" >&2
if [ "$PY" = "${VENV:-}/bin/python" ]; then
    echo "== to use this environment yourself: source $VENV/bin/activate" >&2
fi
