#!/usr/bin/env bash
# Benchmarks, side by side in one run: in-process ONNX Runtime, the full Veil path, and a plain Python
# onnxruntime HTTP server, on iris and MiniLM; plus attestation verification when that bench exists.
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

bash scripts/setup.sh
cache="${VEIL_CACHE:-$HOME/.cache/veil}"
# shellcheck source=/dev/null
source "$cache/env.sh"

# The Python baseline's environment (pinned in bench/requirements.txt), kept in the cache.
venv="$cache/bench-venv"
stamp="$venv/.requirements.sha256"
want=$(sha256sum bench/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bench.sh: creating the Python baseline environment in $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
    echo "$want" >"$stamp"
fi
export VEIL_BENCH_PYTHON="$venv/bin/python"

cargo build --release --workspace --bins --locked
cargo bench --locked -p veil-tests --bench latency -- "${args[@]}"
if [ -f protocol/benches/verify.rs ]; then
    cargo bench --locked -p veil-protocol --bench verify -- "${args[@]}"
fi
