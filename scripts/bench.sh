#!/usr/bin/env bash
# Benchmarks, side by side in one run: in-process ONNX Runtime, the full Veil path in both modes, veil proxy
# with JSON and binary tensors (and tritonclient through it), and a plain Python onnxruntime HTTP server, on
# iris and MiniLM; plus attestation verification, the OHTTP cryptography step by step, and what receipts
# cost (in the enclave, in the parent, and end to end with receipts on against off).
# Prints tables and writes JSON under target/bench/ (or $CARGO_TARGET_DIR/bench/). Results and the command belong in docs/BENCHMARKS.md.
#
#   scripts/bench.sh            # full runs (a few minutes on 2 cores)
#   scripts/bench.sh --quick    # shorter runs, for a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
case "${1:-}" in
    --quick) args=(--quick) ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    "") ;;
    *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

bash scripts/toolchain.sh # the Rust release rust-toolchain.toml pins, without a download
bash scripts/setup.sh
cache="${VEIL_CACHE:-$HOME/.cache/veil}"
# shellcheck source=/dev/null
source "$cache/env.sh"

# The Python baseline's environment (bench/requirements.txt), and the test environment for tritonclient
# (tests/python/requirements.txt), kept in the cache.
VEIL_BENCH_PYTHON=$(bash scripts/venv.sh "$cache/bench-venv" bench/requirements.txt)
VEIL_TEST_PYTHON=$(bash scripts/venv.sh "$cache/test-venv" tests/python/requirements.txt)
export VEIL_BENCH_PYTHON VEIL_TEST_PYTHON

cargo build --release --workspace --bins --locked
cargo bench --locked -p veil-tests --bench latency -- "${args[@]}"
cargo bench --locked -p veil-tests --bench proxy -- "${args[@]}"
cargo bench --locked -p veil-tests --bench evidence -- "${args[@]}"
if [ -f protocol/benches/verify.rs ]; then
    cargo bench --locked -p veil-protocol --bench verify -- "${args[@]}"
fi
cargo bench --locked -p veil-protocol --bench ohttp -- "${args[@]}"
