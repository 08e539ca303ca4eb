#!/usr/bin/env bash
# Fuzz Veil's attestation parser, verifier and user_data commitment decoder with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh                      every target, 60 s each
#   scripts/fuzz.sh attestation_verify   one target, 60 s
#   scripts/fuzz.sh all 600              every target, 10 minutes each
#
# No nightly toolchain is needed: cargo-fuzz passes a few -Z flags to rustc, and RUSTC_BOOTSTRAP=1 lets
# the stable compiler accept them. The seed corpus is the real documents of tests/vectors (decoded to raw
# CBOR); findings land in fuzz/artifacts/<target>/ and make the script exit non-zero.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
targets=(attestation_parse attestation_verify commitment_decode)
which="${1:-all}"
seconds="${2:-60}"
if [[ "$which" != all ]]; then
    if [[ ! " ${targets[*]} " == *" $which "* ]]; then
        echo "fuzz.sh: unknown target '$which' (one of: ${targets[*]}, or all)" >&2
        exit 2
    fi
    targets=("$which")
fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (from crates.io)" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Seed corpus: every attestation document of tests/vectors as raw CBOR, plus a few commitments.
seed="$root/fuzz/corpus"
mkdir -p "$seed/attestation_parse" "$seed/attestation_verify" "$seed/commitment_decode"
python3 - "$root/tests/vectors" "$seed" <<'PY'
import base64, binascii, hashlib, json, os, sys
vectors, seed = sys.argv[1], sys.argv[2]
for e in json.load(open(os.path.join(vectors, "MANIFEST.json"))):
    raw = open(os.path.join(vectors, e["file"]), "rb").read()
    text = b"".join(raw.split())
    doc = {"raw": lambda: raw, "hex": lambda: binascii.unhexlify(text), "b64": lambda: base64.b64decode(text)}[e["encoding"]]()
    name = hashlib.sha256(doc).hexdigest()[:16]
    for t in ("attestation_parse", "attestation_verify"):
        open(os.path.join(seed, t, name), "wb").write(doc)
# Commitment v1: {"v":1,"x25519":null,"recipient_rsa_spki_sha384":null,"models":[],"config_sha384":h'00'*48}
def t(s): return bytes([0x60 + len(s)]) + s.encode()
c = b"\xa5" + t("v") + b"\x01" + t("x25519") + b"\xf6" + b"\x78\x19recipient_rsa_spki_sha384" + b"\xf6" \
    + t("models") + b"\x80" + t("config_sha384") + b"\x58\x30" + bytes(48)
open(os.path.join(seed, "commitment_decode", "empty-v1"), "wb").write(c)
PY

cd "$root/fuzz"
status=0
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s" >&2
    # Sanitizer "none" by default: the code under test forbids `unsafe`, so ASan mostly slows the search;
    # FUZZ_SANITIZER=address also checks ring's C code.
    if ! cargo fuzz run -s "${FUZZ_SANITIZER:-none}" "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=20000 -rss_limit_mb=2048; then
        echo "fuzz.sh: $t found a failure; see fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit "$status"
