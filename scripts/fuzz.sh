#!/usr/bin/env bash
# Fuzz everything the parent can reach, with cargo-fuzz (libFuzzer): frames, link messages, the KMS
# envelope v2 (requests parsed, sealed requests mutated, answers), padding, v2 JSON, encrypted model files
# (header and chunks), EIFs and their cpio ramdisks, attestation documents and the user_data commitment, and attested-key mode:
# OHTTP encapsulated requests and responses (arbitrary, and real ones mutated), key lists, and the Binary
# HTTP inside (against the bhttp crate).
#
#   scripts/fuzz.sh                      every target, 60 s each
#   scripts/fuzz.sh all 30               every target, 30 s each (what scripts/test.sh runs in CI)
#   scripts/fuzz.sh envelope_mutate 600  one target, 10 minutes
#   scripts/fuzz.sh list                 the targets, one a line
#
# No nightly toolchain is needed: cargo-fuzz passes a few -Z flags to rustc, and RUSTC_BOOTSTRAP=1 lets
# the stable compiler accept them. cargo-fuzz is installed from crates.io when missing.
#
# Seeds: the real attestation documents of tests/vectors (decoded to raw CBOR), and what
# fuzz/examples/make_corpus.rs writes: real frames and messages, envelopes sealed under the fixture key,
# the v2 requests of examples/ and tests/data/references, a model file, EIFs, and OHTTP exchanges under the
# fixture gateway keys (RFC 9458's worked example among them), their key lists and Binary HTTP messages. Inputs the fuzzer finds
# interesting accumulate in fuzz/corpus/<target>/ (not committed).
#
# A crash, a panic, a failed assertion, a leak, an input slower than 10 s or over 2 GiB makes libFuzzer
# write the input to fuzz/artifacts/<target>/ and stop; the script goes on with the other targets, then
# names every artifact (with the command that replays it) and exits 1. A summary line per target gives the
# seconds run, executions and executions per second.
#
# Environment: FUZZ_SANITIZER (default none: the code under test forbids `unsafe`, so AddressSanitizer
# mostly slows the search; `address` also checks ring's C code), FUZZ_MAX_LEN (default 20000 bytes).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
targets=(
    frame_decode message_decode
    envelope_parse envelope_mutate envelope_plaintext envelope_answer pad_unpad
    v2_request model_header model_open eif_read cpio_read
    attestation_parse attestation_verify commitment_decode evidence_parse evidence_merkle
    ohttp_decapsulate ohttp_response_open ohttp_key_list bhttp_request
)
which="${1:-all}"
seconds="${2:-60}"
if [[ "$which" == list ]]; then
    printf '%s\n' "${targets[@]}"
    exit 0
fi
if [[ "$which" != all ]]; then
    if [[ ! " ${targets[*]} " == *" $which "* ]]; then
        echo "fuzz.sh: unknown target '$which' (one of: ${targets[*]}, or all)" >&2
        exit 2
    fi
    targets=("$which")
fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -eq 0 ]]; then
    echo "fuzz.sh: SECONDS must be a whole number above 0, got '$seconds'" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-none}"
max_len="${FUZZ_MAX_LEN:-20000}"

bash "$root/scripts/toolchain.sh" # the Rust release rust-toolchain.toml pins, without a download
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (from crates.io)" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Seed corpus, part 1: every attestation document of tests/vectors as raw CBOR, and an empty commitment.
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
# Commitment v3: {"v":3,"ohttp_keys_sha384":null,"receipt_key":null,"recipient_rsa_spki_sha384":null,"models":[],
# "config_sha384":h'00'*48}
def t(s): return bytes([0x60 + len(s)]) + s.encode()
c = b"\xa6" + t("v") + b"\x03" + t("ohttp_keys_sha384") + b"\xf6" + t("receipt_key") + b"\xf6" \
    + b"\x78\x19recipient_rsa_spki_sha384" + b"\xf6" + t("models") + b"\x80" + t("config_sha384") + b"\x58\x30" + bytes(48)
open(os.path.join(seed, "commitment_decode", "empty-v3"), "wb").write(c)
PY
# Part 2: Veil's own formats, made with the code that makes them (and the fixture key the targets use).
echo "== fuzz.sh: writing the seed corpus (fuzz/examples/make_corpus.rs)" >&2
cargo run --quiet --locked --manifest-path "$root/fuzz/Cargo.toml" --example make_corpus -- "$root" "$seed"

cd "$root/fuzz"
echo "== fuzz.sh: building the targets (sanitizer: $sanitizer)" >&2
cargo fuzz build -s "$sanitizer" >&2

logs="$root/fuzz/logs"
mkdir -p "$logs"
failed=()
summary=()
for t in "${targets[@]}"; do
    echo "== fuzz.sh: fuzzing $t for ${seconds}s" >&2
    mkdir -p "artifacts/$t"
    before="$(find "artifacts/$t" -type f | sort)"
    status=0
    cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$logs/$t.log" 2>&1 || status=$?
    # libFuzzer's closing lines: "Done N runs in S second(s)" and the final stats.
    ran="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$logs/$t.log" | tail -1)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)"
    summary+=("$(printf '%-20s %6ss %12s runs %8s exec/s  %s' "$t" "${ran:-?}" "${runs:-?}" "${rate:-?}" \
        "$([[ $status -eq 0 ]] && echo ok || echo FAILED)")")
    if [[ $status -ne 0 ]]; then
        tail -n 40 "$logs/$t.log" >&2
        new="$(comm -13 <(printf '%s\n' "$before") <(find "artifacts/$t" -type f | sort) | sed '/^$/d')"
        if [[ -z "$new" ]]; then
            failed+=("$t: exit $status, no artifact written (see fuzz/logs/$t.log)")
        else
            while IFS= read -r a; do
                failed+=("$t: fuzz/$a  (replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer $t $a)")
            done <<<"$new"
        fi
    fi
done

printf '\n== fuzz.sh: summary (logs in fuzz/logs/)\n' >&2
printf '%s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
    printf '\nfuzz.sh: %d failure(s):\n' "${#failed[@]}" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "fuzz.sh: no failures" >&2
