#!/usr/bin/env bash
# Coverage-guided fuzzing of decode -> preprocess (fuzz/fuzz_targets/decode_preprocess.rs)
# with cargo-fuzz (libFuzzer). Not run by CI: CI replays tests/fuzz_regressions/ through
# `cargo test` (rust/ferroclip-core/tests/peer_corpus_no_panic.rs).
#
#   benches/fuzz.sh install          # cargo-fuzz (needs the nightly toolchain: rustup toolchain install nightly)
#   benches/fuzz.sh build
#   benches/fuzz.sh run [SECONDS] [JOBS]   # default 3600 s, 1 job, niced, in the background-safe foreground
#   benches/fuzz.sh minimize CRASH   # shrink a finding, then copy it into tests/fuzz_regressions/
#   benches/fuzz.sh replay           # run every regression file once through the fuzz target
#
# Seeds: the shared peer images (../shared/peer-images, Pillow's test images: referenced by
# path, never copied into the repo), tests/fuzz_regressions/, plus FERROCLIP_FUZZ_SEEDS if set
# (e.g. a folder of images the test suite wrote). The working corpus and findings live
# outside the repo, in $FERROCLIP_FUZZ_DIR (default /tmp/ferroclip-fuzz).
#
# Limits per input: -rss_limit_mb=2048 and -malloc_limit_mb=2048 (an input that allocates
# more is a finding), -timeout=10 s (a slower input is a hang finding), -max_len=1 MiB.
# The target itself caps images at 16 Mpx (FUZZ_MAX_PIXELS) so no valid input can OOM.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${FERROCLIP_FUZZ_DIR:-/tmp/ferroclip-fuzz}
TARGET=decode_preprocess
# The fuzzer's priority: 19 (default) yields to everything else on the machine; a dedicated
# campaign sets FERROCLIP_FUZZ_NICE=0 so its CPU-hours are really spent.
NICE=${FERROCLIP_FUZZ_NICE:-19}
LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -max_len=1048576)

seeds() {
    mkdir -p "$WORK/seeds"
    local peer="$ROOT/../shared/peer-images"
    if [ -d "$peer" ]; then
        # Flatten (libFuzzer reads one level) and skip files over the length cap.
        find "$peer" -type f -size -1024k ! -name '*.md' | while read -r f; do
            cp -n "$f" "$WORK/seeds/$(echo "${f#"$peer"/}" | tr / _)"
        done
    fi
    if [ -n "${FERROCLIP_FUZZ_SEEDS:-}" ]; then
        find "$FERROCLIP_FUZZ_SEEDS" -type f -size -1024k -exec cp -n {} "$WORK/seeds/" \;
    fi
}

case "${1:-run}" in
    install)
        cargo install cargo-fuzz
        ;;
    build)
        (cd fuzz && nice -n 19 cargo +nightly fuzz build -O "$TARGET")
        ;;
    run)
        secs=${2:-3600}
        jobs=${3:-1}
        seeds
        mkdir -p "$WORK/corpus" "$WORK/artifacts"
        (cd fuzz && nice -n 19 cargo +nightly fuzz build -O "$TARGET")
        bin="$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release/$TARGET"
        cd "$WORK"
        # The first corpus folder is written to; the seed folders are only read.
        nice -n "$NICE" "$bin" "${LIMITS[@]}" -max_total_time="$secs" -jobs="$jobs" -workers="$jobs" \
            -artifact_prefix="$WORK/artifacts/" -print_final_stats=1 \
            "$WORK/corpus" "$WORK/seeds" "$ROOT/tests/fuzz_regressions"
        ;;
    minimize)
        crash=${2:?usage: fuzz.sh minimize CRASH_FILE}
        bin="$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release/$TARGET"
        nice -n 19 "$bin" "${LIMITS[@]}" -minimize_crash=1 -runs=20000 \
            -exact_artifact_path="$crash.min" "$crash"
        echo "minimised: $crash.min (copy it into tests/fuzz_regressions/ with a name that says what it hit)"
        ;;
    replay)
        bin="$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release/$TARGET"
        "$bin" "${LIMITS[@]}" tests/fuzz_regressions/*
        ;;
    *)
        echo "usage: $0 install|build|run [SECONDS] [JOBS]|minimize CRASH|replay" >&2
        exit 2
        ;;
esac
