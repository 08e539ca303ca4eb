#!/usr/bin/env bash
# Start the Veil enclave on a parent instance with nitro-cli, sized from the EIF and the models.
#
#   scripts/run-enclave.sh --eif build/veil-enclave.eif --model iris=/var/lib/veil/models/iris.onnx
#   scripts/run-enclave.sh ... --wait          # stay in the foreground (systemd), stop it on TERM
#   scripts/run-enclave.sh ... --dry-run       # print what would run, start nothing
#   scripts/run-enclave.sh ... --debug --console   # development only: read the text below
#
# Memory: unless --memory is given, `veil eif size` computes it from the EIF's size and the model
# files (models live outside the EIF and are loaded into enclave memory): see docs/OPERATING.md.
# The allocator (/etc/nitro_enclaves/allocator.yaml) must have reserved at least that much, and at
# least --cpus vCPUs; this script checks before asking nitro-cli.
set -euo pipefail

eif="build/veil-enclave.eif"
models=()
cpus=2
memory=""
cid=16
name="veil"
debug=0
console=0
wait_mode=0
dry_run=0
assume_yes=0
allocator_yaml="${VEIL_ALLOCATOR_YAML:-/etc/nitro_enclaves/allocator.yaml}"

usage() {
    cat <<EOF
Usage: scripts/run-enclave.sh [options]

  --eif FILE          the enclave image (default: build/veil-enclave.eif)
  --model NAME=PATH   a model file the enclave will load, for sizing (repeat; same form as
                      veil-parent --model)
  --cpus N            vCPUs (default 2; use an even number on x86_64 with hyper-threading)
  --memory MIB        enclave memory; default: computed by \`veil eif size\`
  --cid N             enclave vsock CID (default 16; veil-parent --enclave vsock://N:5000)
  --name NAME         enclave name for nitro-cli (default veil)
  --wait              stay in the foreground while the enclave runs; exit non-zero if it stops;
                      terminate it on SIGTERM/SIGINT (for systemd)
  --dry-run           print the sizing and the nitro-cli command, start nothing
  --debug             DEBUG MODE (development only; see below). Never with real data.
  --console           attach to the enclave console after starting (requires --debug)
  --yes               do not pause before starting in debug mode
  -h, --help          this text

Debug mode gives away: the console (everything the enclave writes, panics included) becomes
readable by anyone on the parent instance, and its attestation documents report all-zero PCRs,
so KMS key policies with PCR conditions refuse it and clients reject it unless they pass
--allow-debug. A debug enclave can be impersonated by anything else in debug mode.
EOF
}

die() {
    printf 'run-enclave: error: %s\n' "$*" >&2
    exit 1
}
log() { printf 'run-enclave: %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --eif) eif="${2:?--eif needs a file}"; shift 2 ;;
        --model) models+=("${2:?--model needs NAME=PATH}"); shift 2 ;;
        --cpus) cpus="${2:?--cpus needs a number}"; shift 2 ;;
        --memory) memory="${2:?--memory needs MiB}"; shift 2 ;;
        --cid) cid="${2:?--cid needs a number}"; shift 2 ;;
        --name) name="${2:?--name needs a value}"; shift 2 ;;
        --wait) wait_mode=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --debug) debug=1; shift ;;
        --console) console=1; shift ;;
        --yes) assume_yes=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

is_uint() { case "$1" in "" | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }
if ! is_uint "$cpus" || [ "$cpus" -lt 1 ]; then die "--cpus must be a positive integer, got '$cpus'"; fi
if ! is_uint "$cid" || [ "$cid" -lt 4 ]; then die "--cid must be an integer >= 4 (0-3 are reserved), got '$cid'"; fi
[ -z "$memory" ] || is_uint "$memory" || die "--memory must be MiB as an integer, got '$memory'"
[ "$console" -eq 0 ] || [ "$debug" -eq 1 ] || die "--console needs --debug: a production enclave has no readable console"
[ "$console" -eq 0 ] || [ "$wait_mode" -eq 0 ] || die "--console and --wait exclude each other"
[ -r "$eif" ] || die "cannot read the EIF $eif (build it with scripts/build-eif.sh)"
for m in "${models[@]}"; do
    path="${m#*=}"
    [ -r "$path" ] || die "cannot read the model file $path (from --model $m)"
done
if [ $((cpus % 2)) -eq 1 ]; then
    log "warning: $cpus vCPUs is odd; on x86_64 instances with hyper-threading nitro-cli needs whole cores"
fi

# ---- sizing -------------------------------------------------------------------------------------
if [ -z "$memory" ]; then
    command -v veil > /dev/null || die "pass --memory MIB, or put the veil CLI on PATH so that it can be computed (veil eif size)"
    size_args=(eif size "$eif" --cpus "$cpus")
    for m in "${models[@]}"; do size_args+=(--model "$m"); done
    memory="$(veil "${size_args[@]}" --mib)" || die "veil eif size failed"
    log "sizing: $(veil "${size_args[@]}" | tail -n 1 | sed 's/^ *//')"
fi
log "enclave: $cpus vCPUs, $memory MiB, CID $cid, name $name"

# ---- allocator ------------------------------------------------------------------------------------
if [ -r "$allocator_yaml" ]; then
    alloc_mem="$(sed -nE 's/^[[:space:]]*memory_mib[[:space:]]*:[[:space:]]*([0-9]+).*/\1/p' "$allocator_yaml" | head -n 1)"
    alloc_cpu="$(sed -nE 's/^[[:space:]]*cpu_count[[:space:]]*:[[:space:]]*([0-9]+).*/\1/p' "$allocator_yaml" | head -n 1)"
    if [ -n "$alloc_mem" ] && [ "$alloc_mem" -lt "$memory" ]; then
        die "the allocator reserves $alloc_mem MiB ($allocator_yaml) but the enclave needs $memory MiB: set memory_mib: $memory (or more) there and run: sudo systemctl restart nitro-enclaves-allocator"
    fi
    if [ -n "$alloc_cpu" ] && [ "$alloc_cpu" -lt "$cpus" ]; then
        die "the allocator reserves $alloc_cpu vCPUs ($allocator_yaml) but --cpus is $cpus: set cpu_count: $cpus there and restart nitro-enclaves-allocator"
    fi
else
    log "note: $allocator_yaml not found; nitro-cli will check the reservation itself"
fi

run_args=(run-enclave --eif-path "$eif" --cpu-count "$cpus" --memory "$memory" --enclave-cid "$cid" --enclave-name "$name")

# ---- debug mode -----------------------------------------------------------------------------------
if [ "$debug" -eq 1 ]; then
    run_args+=(--debug-mode)
    cat >&2 <<'EOF'

  ###########################################################################################
  #  DEBUG MODE. Development only. Never with real data, real keys, or real clients.        #
  #                                                                                         #
  #  - The enclave console is readable from the parent: every log line, every panic message #
  #    and anything else the enclave prints leaves the enclave in plain text.               #
  #  - Attestation documents carry all-zero PCRs: they prove nothing about the code. KMS    #
  #    keys whose policy checks PCRs refuse this enclave (as they must), and clients reject #
  #    it unless they pass --allow-debug, which makes their check meaningless.              #
  #  - Any debug enclave, running any code, produces the same zero PCRs.                    #
  ###########################################################################################

EOF
    if [ "$assume_yes" -eq 0 ] && [ "$dry_run" -eq 0 ]; then
        log "starting in debug mode in 10 seconds; Ctrl-C to abort (--yes skips this pause)"
        sleep 10
    fi
fi

if [ "$dry_run" -eq 1 ]; then
    printf 'nitro-cli'
    printf ' %q' "${run_args[@]}"
    printf '\n'
    exit 0
fi

command -v nitro-cli > /dev/null || die "nitro-cli is not installed (this must run on an enclave-enabled parent instance)"

# ---- start ----------------------------------------------------------------------------------------
if nitro-cli describe-enclaves 2> /dev/null | grep -q "\"EnclaveName\": \"$name\""; then
    die "an enclave named $name is already running (nitro-cli terminate-enclave --enclave-name $name)"
fi
out="$(nitro-cli "${run_args[@]}")" || die "nitro-cli run-enclave failed (see /var/log/nitro_enclaves/)"
printf '%s\n' "$out"
enclave_id="$(printf '%s\n' "$out" | sed -nE 's/.*"EnclaveID": *"([^"]+)".*/\1/p' | head -n 1)"
[ -n "$enclave_id" ] || die "nitro-cli did not report an EnclaveID"
log "started $enclave_id; veil-parent reaches it at vsock://$cid:5000"

if [ "$console" -eq 1 ]; then
    log "attaching to the console of $enclave_id (debug mode); Ctrl-C detaches, the enclave keeps running"
    exec nitro-cli console --enclave-id "$enclave_id"
fi

if [ "$wait_mode" -eq 1 ]; then
    # shellcheck disable=SC2317 # called by the trap below
    stop() {
        log "stopping $enclave_id"
        nitro-cli terminate-enclave --enclave-id "$enclave_id" > /dev/null || true
        exit 0
    }
    trap stop TERM INT
    while nitro-cli describe-enclaves 2> /dev/null | grep -q "\"EnclaveID\": \"$enclave_id\""; do
        sleep 5 &
        wait $! || true
    done
    die "enclave $enclave_id is no longer running"
fi
