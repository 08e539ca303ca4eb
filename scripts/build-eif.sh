#!/usr/bin/env bash
# Build the Veil enclave image (EIF) and its measurements, reproducibly.
#
#   scripts/build-eif.sh [--config docker/enclave.toml] [--output-dir build] [--tag TAG]
#                        [--signing-key key.pem --signing-cert cert.pem] [--allow-dirty]
#
# Steps:
#   1. docker build docker/Dockerfile.enclave, with SOURCE_DATE_EPOCH = the commit's time, so the
#      same commit gives the same image on any machine;
#   2. nitro-cli build-enclave on that image -> OUTPUT_DIR/veil-enclave.eif, and the measurements
#      JSON nitro-cli prints -> OUTPUT_DIR/veil-enclave.measurements.json (PCR0, PCR1, PCR2, and
#      PCR8 when signed);
#   3. if the `veil` CLI is on PATH, recompute the PCRs from the EIF in Rust (`veil eif pcrs`)
#      and fail if they differ from nitro-cli's: two independent implementations must agree
#      before anyone puts these values in a KMS key policy.
#
# Signing (optional): an ECDSA P-384 key and its certificate, passed to nitro-cli as
# --private-key/--signing-certificate. PCR8 then measures the certificate, so a key policy can
# trust "anything this certificate signed" instead of one PCR0.
#   openssl ecparam -name secp384r1 -genkey -out key.pem
#   openssl req -new -x509 -key key.pem -out cert.pem -days 365 -subj "/CN=veil-enclave-signer"
#
# Needs: docker (with a running engine) and nitro-cli (from aws-nitro-enclaves-cli; its
# build-enclave works on any Linux, not only on a parent instance). Does not need root unless
# your docker does.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

config="${VEIL_CONFIG:-$root/docker/enclave.toml}"
out_dir="build"
tag=""
signing_key=""
signing_cert=""
allow_dirty=0

usage() {
    cat <<EOF
Usage: scripts/build-eif.sh [options]

Builds docker/Dockerfile.enclave into an EIF with nitro-cli and saves the measurements beside it.

  --config FILE         the enclave's configuration (models, their KMS keys, the KMS region;
                        default: \$VEIL_CONFIG or docker/enclave.toml, the example); baked into the
                        image, so part of PCR0/PCR2, and its SHA-384 is in every attestation document
  --output-dir DIR      where to write veil-enclave.eif and veil-enclave.measurements.json
                        (default: build)
  --tag TAG             docker image tag (default: the short commit id)
  --signing-key FILE    ECDSA P-384 private key (PEM) to sign the EIF with (PCR8)
  --signing-cert FILE   its certificate (PEM)
  --allow-dirty         build even if the work tree has uncommitted changes (the result is then
                        not reproducible from any commit)
  -h, --help            this text
EOF
}

die() {
    printf 'build-eif: error: %s\n' "$*" >&2
    exit 1
}
log() { printf 'build-eif: %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --config) config="${2:?--config needs a file}"; shift 2 ;;
        --output-dir) out_dir="${2:?--output-dir needs a value}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --signing-key) signing_key="${2:?--signing-key needs a file}"; shift 2 ;;
        --signing-cert) signing_cert="${2:?--signing-cert needs a file}"; shift 2 ;;
        --allow-dirty) allow_dirty=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

if { [ -n "$signing_key" ] && [ -z "$signing_cert" ]; } || { [ -z "$signing_key" ] && [ -n "$signing_cert" ]; }; then
    die "--signing-key and --signing-cert go together"
fi
for f in "$signing_key" "$signing_cert"; do
    [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"
done
[ -r "$config" ] || die "cannot read the enclave configuration $config"

command -v docker > /dev/null || die "docker is not installed (this script builds the enclave image with it)"
command -v nitro-cli > /dev/null || die "nitro-cli is not installed: see https://docs.aws.amazon.com/enclaves/latest/user/nitro-enclave-cli-install.html"
docker info > /dev/null 2>&1 || die "the docker engine is not reachable (is it running, and may this user use it?)"

config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
cd "$root"
case "$config" in
    "$root"/*) config_in_context="${config#"$root"/}" ;;
    *) die "the configuration must be inside the repository (the docker build context): $config" ;;
esac
# shellcheck source=scripts/commit.sh
source "$root/scripts/commit.sh"
build_commit "$allow_dirty"
tag="${tag:-${commit:0:12}}"
image="veil-enclave:${tag}"

mkdir -p "$out_dir"
eif="$out_dir/veil-enclave.eif"
measurements="$out_dir/veil-enclave.measurements.json"

log "building $image (SOURCE_DATE_EPOCH=$source_date_epoch, configuration: $config_in_context, SHA-384 $(sha384sum "$config" | cut -d' ' -f1))"
DOCKER_BUILDKIT=1 docker build \
    --file docker/Dockerfile.enclave \
    --build-arg "SOURCE_DATE_EPOCH=$source_date_epoch" \
    --build-arg "VEIL_CONFIG=$config_in_context" \
    --label "org.opencontainers.image.revision=$commit" \
    --tag "$image" \
    .

sign_args=()
if [ -n "$signing_key" ]; then
    sign_args=(--private-key "$signing_key" --signing-certificate "$signing_cert")
    log "signing with $signing_cert"
fi

log "nitro-cli build-enclave -> $eif"
tmp_json="$(mktemp)"
trap 'rm -f "$tmp_json"' EXIT
# nitro-cli prints progress on stderr and the measurements JSON on stdout.
SOURCE_DATE_EPOCH="$source_date_epoch" nitro-cli build-enclave \
    --docker-uri "$image" --output-file "$eif" "${sign_args[@]}" > "$tmp_json"
mv "$tmp_json" "$measurements"
trap - EXIT
grep -q '"PCR0"' "$measurements" || die "nitro-cli printed no measurements (see $measurements)"

if command -v veil > /dev/null; then
    log "cross-checking nitro-cli's PCRs with veil eif pcrs"
    # Compare the PCR lines, not the whole text, so formatting differences cannot cause a false alarm.
    pcr_lines() { grep -oE '"PCR[0-9]+": *"[0-9a-f]+"' | tr -d ' ' | sort; }
    if [ "$(veil eif pcrs "$eif" | pcr_lines)" != "$(pcr_lines < "$measurements")" ]; then
        log "nitro-cli says:"
        cat "$measurements" >&2
        log "veil eif pcrs says:"
        veil eif pcrs "$eif" >&2 || true
        die "the two PCR computations disagree; do not publish these measurements"
    fi
    log "veil eif pcrs agrees with nitro-cli"
else
    log "note: \`veil\` is not on PATH, so the PCRs were not cross-checked (cargo build -p veil-client --release)"
fi

cat "$measurements"
cat >&2 <<EOF

build-eif: done.
  EIF           $eif  ($(wc -c < "$eif") bytes)
  measurements  $measurements
  image         $image  (commit $commit)

Next:
  - publish the measurements with the release; auditors reproduce them (docs/AUDITING.md);
  - update the KMS key policy to these PCRs before rolling out (docs/OPERATING.md, "Upgrades");
  - size and start the enclave: scripts/run-enclave.sh --eif $eif --model NAME=PATH
EOF
