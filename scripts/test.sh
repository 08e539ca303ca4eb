#!/usr/bin/env bash
# Run every test Veil has: set-up (ONNX Runtime, sample models), the build, unit and end-to-end tests,
# doc tests, clippy, the linters for shell scripts and Dockerfiles, and the fuzzers.
#
#   scripts/test.sh                   # everything (what CI runs)
#   scripts/test.sh -- e2e            # extra arguments go to the test runner (a filter, --no-capture, ...)
#   VEIL_SKIP_FUZZ=1 scripts/test.sh  # everything but the fuzzers (for developers; CI never sets it)
#   VEIL_SKIP_REPRODUCE=1 ...         # everything but the reproducible-image check (CI never sets it)
#   VEIL_REPRODUCE_FULL=1 ...         # that check's full variant: everything compiled twice (not in CI)
#
# The fuzz step runs every target of fuzz/ for VEIL_FUZZ_SECONDS each (30 by default, and never fewer), and
# fails on any crash, naming the input (scripts/fuzz.sh). Measured on the two-core CI machine (shared with
# other builds at the time): about 15 minutes (clippy and the corpus generator 2.3, instrumented build 3.6,
# 18 targets x 30 s 9.4), plus 3.7 to install cargo-fuzz on a machine that lacks it. With cpio_read, 19
# targets: 30 s more.
#
# The reproducible-image step (scripts/check-reproducible.sh, short variant) builds the production enclave
# twice from two clones and compares the EIFs. Measured on the two-core machine (shared with other builds):
# 2 to 4.6 minutes when the release build of the dependencies is already in
# ${VEIL_CACHE:-~/.cache/veil}/reproducible-target (each clone compiles Veil's three crates, 1 to 2 minutes),
# plus about 8.5 minutes once on a machine where it is not (a cold release build of aws-sdk-kms and the rest).
#
# The end-to-end tests start the real veil-parent and veil-enclave binaries, so they are built first.
set -euo pipefail
cd "$(dirname "$0")/.."

runner_args=()
if [ "${1:-}" = "--" ]; then
    shift
    runner_args=("$@")
fi

step() { printf '\n== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

step "set-up: the Rust toolchain of rust-toolchain.toml"
bash scripts/toolchain.sh
rustc --version >&2

step "set-up: GNU cpio (the ramdisk tests compare veil-eif's archives with it)"
if ! command -v cpio >/dev/null; then
    echo "test.sh: installing GNU cpio (Debian package cpio)" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >/dev/null
    fi
fi

step "set-up: ONNX Runtime and sample models"
bash scripts/setup.sh
# shellcheck source=/dev/null
source "${VEIL_CACHE:-$HOME/.cache/veil}/env.sh"

# The test Python environment (pyhpke for the independent OHTTP client, tritonclient for veil proxy's
# tests; pinned in tests/python/requirements.txt), kept in the cache and remade only when that file changes.
step "set-up: the test Python environment"
VEIL_TEST_PYTHON=$(bash scripts/venv.sh "${VEIL_CACHE:-$HOME/.cache/veil}/test-venv" tests/python/requirements.txt)
export VEIL_TEST_PYTHON

step "format: cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check

step "unused dependencies: cargo machete"
if ! cargo machete --version >/dev/null 2>&1; then
    echo "test.sh: installing cargo-machete (from crates.io)" >&2
    cargo install cargo-machete --locked
fi
cargo machete

target_dir="${CARGO_TARGET_DIR:-target}"
step "production enclave build: no mock code in it"
# The production build is `-p veil-enclave` alone (no `dev` feature). Keep a copy for the tests that check
# it, before the workspace build below makes target/debug/veil-enclave a development build again.
cargo build -p veil-enclave --bin veil-enclave --locked
if cargo tree -p veil-enclave -e normal --prefix none | grep -E '^(rcgen|aws-nitro-enclaves-cose) '; then
    echo "test.sh: the production enclave build depends on development-only crates (above)" >&2
    exit 1
fi
cp "$target_dir/debug/veil-enclave" "$target_dir/debug/veil-enclave-production"

step "build"
cargo build --workspace --bins --locked

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "${runner_args[@]}"
else
    cargo test --workspace --locked --no-fail-fast "${runner_args[@]}"
fi

step "soak (short): veil load through veil dev, the enclave killed mid-run (scripts/soak.sh --short)"
bash scripts/soak.sh --short --bin-dir "$target_dir/debug"

step "doc tests"
cargo test --workspace --locked --doc

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

if [ -f scripts/lint.sh ]; then
    step "lint: shell scripts and Dockerfiles"
    bash scripts/lint.sh
fi
if [ "${VEIL_SKIP_REPRODUCE:-0}" = 1 ]; then
    step "reproducible image: skipped (VEIL_SKIP_REPRODUCE=1)"
else
    variant=short
    [ "${VEIL_REPRODUCE_FULL:-0}" = 1 ] && variant=full
    step "reproducible image ($variant variant): two clones built with scripts/reproduce.sh and compared (scripts/check-reproducible.sh)"
    bash scripts/check-reproducible.sh --veil "$target_dir/debug/veil"
fi
if [ "${VEIL_SKIP_FUZZ:-0}" = 1 ]; then
    step "fuzz: skipped (VEIL_SKIP_FUZZ=1)"
else
    fuzz_seconds="${VEIL_FUZZ_SECONDS:-30}"
    if ! [[ "$fuzz_seconds" =~ ^[0-9]+$ ]] || [ "$fuzz_seconds" -lt 30 ]; then
        fuzz_seconds=30
    fi
    step "fuzz: clippy on fuzz/, then every target for ${fuzz_seconds}s (scripts/fuzz.sh; VEIL_SKIP_FUZZ=1 skips)"
    cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
    bash scripts/fuzz.sh all "$fuzz_seconds"
fi
printf '\n[%s] all tests passed\n' "$(date -u +%H:%M:%S)" >&2
