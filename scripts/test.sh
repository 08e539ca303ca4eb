#!/usr/bin/env bash
# Run every test Veil has: set-up (ONNX Runtime, sample models), the build, unit and end-to-end tests,
# doc tests, clippy, and the linters for shell scripts and Dockerfiles.
#
#   scripts/test.sh              # everything
#   scripts/test.sh -- e2e       # extra arguments go to the test runner (a filter, --no-capture, ...)
#
# The end-to-end tests start the real veil-parent and veil-enclave binaries, so they are built first.
set -euo pipefail
cd "$(dirname "$0")/.."

runner_args=()
if [ "${1:-}" = "--" ]; then
    shift
    runner_args=("$@")
fi

step() { printf '\n== %s\n' "$*" >&2; }

step "set-up: ONNX Runtime and sample models"
bash scripts/setup.sh
# shellcheck source=/dev/null
source "${VEIL_CACHE:-$HOME/.cache/veil}/env.sh"

# The independent OHTTP client's environment (pyhpke; pinned in tests/python/requirements.txt), kept in the
# cache and remade only when the requirements change. tests/tests/ohttp_interop.rs runs it.
venv="${VEIL_CACHE:-$HOME/.cache/veil}/test-venv"
stamp="$venv/.requirements.sha256"
want=$(sha256sum tests/python/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "set-up: the test Python environment in $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
    echo "$want" >"$stamp"
fi
export VEIL_TEST_PYTHON="$venv/bin/python"

step "format: cargo fmt --check"
cargo fmt --all --check

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

step "doc tests"
cargo test --workspace --locked --doc

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

if [ -f scripts/lint.sh ]; then
    step "lint: shell scripts and Dockerfiles"
    bash scripts/lint.sh
fi
printf '\nall tests passed\n' >&2
