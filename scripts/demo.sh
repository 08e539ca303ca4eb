#!/usr/bin/env bash
# The off-hardware demo, end to end, on a fresh machine:
#   1. set-up: ONNX Runtime and the sample models (scripts/setup.sh)
#   2. build the release binaries
#   3. `veil dev`: mock KMS (a key whose policy releases data keys only to this enclave's PCRs, the
#      models encrypted under it), enclave (mock NSM), parent, on real sockets
#   4. a client seals one patient's measurements under a KMS data key, sends them through the parent,
#      and opens the enclave's sealed answer; the client verifies the enclave's attestation too
#   5. everything stops
#
#   scripts/demo.sh            # run it
#   scripts/demo.sh --keep     # leave the stack running afterwards (Ctrl-C stops it)
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
case "${1:-}" in
    --keep) keep=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    "") ;;
    *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

say() { printf '\n\033[1m%s\033[0m\n' "$*" >&2; }

say "1/5 set-up: ONNX Runtime and sample models"
bash scripts/toolchain.sh # the Rust release rust-toolchain.toml pins, without a download
bash scripts/setup.sh
# shellcheck source=/dev/null
source "${VEIL_CACHE:-$HOME/.cache/veil}/env.sh"

say "2/5 build (release)"
cargo build --release --workspace --bins --locked
# Cargo puts the binaries in $CARGO_TARGET_DIR when it is set, else in target/.
veil="${CARGO_TARGET_DIR:-target}/release/veil"

say "3/5 start the stack: veil dev"
state=$(mktemp -d -t veil-demo-XXXXXX)
endpoints="$state/endpoints.json"
"$veil" dev --port 0 --json --state-dir "$state" >"$endpoints" 2>"$state/dev.log" &
dev_pid=$!
cleanup() {
    if kill -0 "$dev_pid" 2>/dev/null; then
        kill -TERM "$dev_pid" 2>/dev/null || true
        wait "$dev_pid" 2>/dev/null || true
    fi
    rm -rf "$state"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
    [ -s "$endpoints" ] && break
    if ! kill -0 "$dev_pid" 2>/dev/null; then
        cat "$state/dev.log" >&2
        echo "demo.sh: veil dev failed to start" >&2
        exit 1
    fi
    sleep 0.2
done
[ -s "$endpoints" ] || { echo "demo.sh: veil dev did not become ready" >&2; exit 1; }
url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$endpoints")
mock_root=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mock_root"])' "$endpoints")
# The client's KMS settings (mock KMS endpoint, its CA, the key, dev credentials), as veil dev printed them.
eval "$(python3 -c 'import json,shlex,sys; print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in json.load(open(sys.argv[1]))["env"].items()))' "$endpoints")"
python3 -m json.tool "$endpoints" >&2

say "4/5 the client checks the enclave, then sends one patient's measurements (examples/breast_cancer.json), sealed"
"$veil" attest verify --url "$url" --root "$mock_root" --max-age 5m >&2
"$veil" metadata --url "$url" breast_cancer >&2
answer=$("$veil" infer --url "$url" --model breast_cancer --input examples/breast_cancer.json --pretty)
echo "$answer"
python3 - "$answer" <<'PY' >&2
import json, sys
r = json.loads(sys.argv[1])
out = {o["name"]: o for o in r["outputs"]}
label = out["label"]["data"][0]
p = out["probabilities"]["data"]
print(f"\nThe enclave says: {'benign' if label == 1 else 'malignant'} "
      f"(P(malignant) = {p[0]:.3f}, P(benign) = {p[1]:.3f}) for request {r.get('id')}")
PY

if [ "$keep" = 1 ]; then
    say "the stack keeps running at $url (Ctrl-C stops it)"
    wait "$dev_pid"
else
    say "5/5 stop the stack"
fi
