# Shared by .ci/run and benches/run.sh (sourced, not run): the system packages the build
# needs, and the cached virtual environments that hold ferroclip with its extras.
#
#   source .ci/venv.sh
#   ferroclip_apt nasm                # apt-get install it when its command is missing
#   ferroclip_venv test               # -> $VENV: the pinned test extras and ferroclip from this checkout
#   ferroclip_venv bench              # -> $VENV: the same, plus the benchmark-only peers
#
# The test extras pull torch (a CUDA build of several GB from PyPI). Each environment is
# cached under a key made of pyproject.toml's dependency lists and the Python version, so a
# changed requirement gets a fresh venv and an unchanged one only rebuilds ferroclip. The
# bench venv is layered over the test venv through a .pth file (torch and the rest are
# shared, not installed twice) and adds only what `.[bench]` has beyond `.[test]`.
# Run from the repository root.

ferroclip_sudo() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

_ferroclip_apt_updated=
# ferroclip_apt PACKAGE...: install Debian/Ubuntu packages (quietly, saying so).
ferroclip_apt() {
    echo "== apt-get install $* (needs root or sudo)" >&2
    if [ -z "$_ferroclip_apt_updated" ]; then
        ferroclip_sudo apt-get update -qq
        _ferroclip_apt_updated=1
    fi
    ferroclip_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# libjpeg-turbo's SIMD code (built from source by mozjpeg-sys) is assembled with nasm, HEIF
# decoding (the default-on `heif` cargo feature) links the system libheif (>= 1.14; Debian
# 12 has 1.15.1), found through pkg-config, and Debian/Ubuntu ship `python3 -m venv` in a
# separate package (python3.X-venv).
ferroclip_build_prereqs() {
    if ! command -v nasm >/dev/null 2>&1; then ferroclip_apt nasm; fi
    if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists libheif; then
        ferroclip_apt pkg-config libheif-dev
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found: install Rust >= $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml) (https://rustup.rs)" >&2
        return 1
    fi
    local probe
    probe=$(mktemp -d)
    if ! python3 -m venv "$probe/v" >/dev/null 2>&1; then
        ferroclip_apt "python3-venv" "python$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"
    fi
    rm -rf "$probe"
}

# pip with a line first saying what it does and that it takes a while: pip -q is silent for
# minutes while it downloads torch or compiles the Rust core.
_ferroclip_pip() {
    local py=$1 what=$2
    shift 2
    echo "== $what" >&2
    "$py" -m pip install -q --disable-pip-version-check "$@"
}

ferroclip_venv_key() {
    (python3 -c 'import sys; print(sys.version)'; sed -n '/^dependencies/,/^\[project.scripts\]/p' pyproject.toml) | sha256sum | cut -c1-16
}

# ferroclip_venv test|bench: create or reuse the cached venv; sets VENV.
ferroclip_venv() {
    local extras=$1 key cache base rebuild="rebuilding ferroclip from this checkout (compiles the Rust core: 1-3 min)"
    ferroclip_build_prereqs
    key=$(ferroclip_venv_key)
    cache="${FERROCLIP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferroclip-ci}"
    base="${FERROCLIP_CI_VENV:-$cache/venv-$key}"
    if [ ! -f "$base/.complete" ]; then
        echo "== creating $base" >&2
        rm -rf "$base"
        python3 -m venv "$base"
        _ferroclip_pip "$base/bin/python" "upgrading pip" --upgrade pip
        _ferroclip_pip "$base/bin/python" \
            "installing ferroclip and its pinned test extras (torch is a CUDA build: ~11 GB on disk, 5-15 min; the Rust core compiles for 1-3 min)" \
            ".[test]"
        touch "$base/.complete"
    elif [ "$extras" = test ]; then
        echo "== reusing $base" >&2
        # Same dependencies; rebuild only ferroclip itself, from this checkout.
        _ferroclip_pip "$base/bin/python" "$rebuild" --force-reinstall --no-deps --no-cache-dir .
    fi
    VENV=$base
    [ "$extras" = test ] && return 0
    VENV="${FERROCLIP_BENCH_VENV:-$cache/venv-$key-$extras}"
    if [ ! -f "$VENV/.complete" ]; then
        echo "== creating $VENV (layered over $base)" >&2
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$base/bin/python" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("-packages")))' \
            >"$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_ferroclip_pinned_venv.pth"
        _ferroclip_pip "$VENV/bin/python" "installing ferroclip and the $extras extras (the Rust core compiles for 1-3 min)" ".[$extras]"
        touch "$VENV/.complete"
    else
        echo "== reusing $VENV" >&2
        _ferroclip_pip "$VENV/bin/python" "$rebuild" --force-reinstall --no-deps --no-cache-dir .
    fi
}

# ferroclip_peer_venv NAME PYTHON [--existing]: the cached venv of a benchmark peer whose own
# pins clash with ferroclip's (clip-retrieval wants numpy<2, pyarrow<16, transformers<5, ...),
# so it can never share ferroclip's venv. It is layered over PYTHON's site-packages like the
# bench venv, but the other way round in effect: the peer's exact pins (benches/peers/NAME.txt)
# are installed into the peer venv, whose own site-packages come first on sys.path and shadow
# PYTHON's newer copies, while torch and torchvision (several GB) are reused from PYTHON and
# held there by a constraints file, so pip never downloads another torch. The key covers the
# pins, PYTHON's site-packages dirs (what the .pth lists) and its torch, so a change to any of
# them makes a fresh venv. Sets PEER_VENV. Returns 1, with the reason on stderr and pip's log in
# $PEER_VENV.log, when it cannot be built: callers treat that as "peer not measured", never as
# a failed job. With --existing it only looks the venv up (returns 1 if it was never built), so
# a bench run alone installs nothing.
ferroclip_peer_venv() {
    local name=$1 py=$2 mode=${3:-} req="benches/peers/$1.txt" key cache t0 pth
    cache="${FERROCLIP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferroclip-ci}"
    key=$( (python3 -c 'import sys; print(sys.version)'; cat "$req"
            "$py" -c 'import sys, torch, torchvision; print([p for p in sys.path if p.endswith("-packages")], torch.__version__, torchvision.__version__)') |
          sha256sum | cut -c1-16) || { echo "   $name: no torch in $py" >&2; return 1; }
    PEER_VENV="$cache/peer-$name-$key"
    if [ -f "$PEER_VENV/.complete" ]; then
        echo "== reusing $PEER_VENV (the $name peer)" >&2
        return 0
    fi
    [ "$mode" = --existing ] && return 1
    echo "== creating $PEER_VENV: the $name peer in its own venv, layered over $py (1-3 min; log in $PEER_VENV.log)" >&2
    t0=$(date +%s)
    rm -rf "$PEER_VENV"
    mkdir -p "$cache"
    if ! python3 -m venv "$PEER_VENV" >"$PEER_VENV.log" 2>&1; then
        echo "   $name: python3 -m venv failed (see $PEER_VENV.log)" >&2
        return 1
    fi
    pth="$("$PEER_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_ferroclip_layered_over.pth"
    "$py" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("-packages")))' >"$pth"
    # Without the local label (+cu130): pip then keeps the installed build, which satisfies it.
    "$py" -c 'import torch, torchvision; print("\n".join(f"{m.__name__}=={m.__version__.split(chr(43))[0]}" for m in (torch, torchvision)))' \
        >"$PEER_VENV/constraints.txt"
    if ! "$PEER_VENV/bin/python" -m pip install --disable-pip-version-check \
            -r "$req" -c "$PEER_VENV/constraints.txt" >>"$PEER_VENV.log" 2>&1; then
        echo "   $name: pip install -r $req failed ($PEER_VENV.log):" >&2
        { grep -E '^ERROR|caused by|depends on|requested' "$PEER_VENV.log" || tail -5 "$PEER_VENV.log"; } |
            tail -6 | sed 's/^/     /' >&2
        return 1
    fi
    # The shadowing must hold: the peer's numpy 1.x and its own pins win, torch is the shared one.
    if ! "$PEER_VENV/bin/python" -c "
import importlib.metadata as md, sys, torch
for line in open('$req'):
    line = line.split('#')[0].strip()
    if line:
        name, want = line.split('==')
        got = md.version(name)
        assert got == want, f'{name} {got} != {want}'
assert not torch.__file__.startswith('$PEER_VENV'), torch.__file__  # the shared torch
import numpy as np
torch.from_numpy(np.ones(3, np.float32)).numpy()  # torch (built for numpy 2) on numpy 1.x
import clip_retrieval.clip_inference.main
" >>"$PEER_VENV.log" 2>&1; then
        echo "   $name: installed but the smoke test failed (last lines of $PEER_VENV.log):" >&2
        tail -5 "$PEER_VENV.log" | sed 's/^/     /' >&2
        return 1
    fi
    touch "$PEER_VENV/.complete"
    echo "   $name peer ready in $(($(date +%s) - t0)) s, $(du -sh "$PEER_VENV" | cut -f1) on disk" >&2
}
