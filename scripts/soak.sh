#!/usr/bin/env bash
# Soak: many sealed requests through `veil dev` at high concurrency (`veil load`), with the enclave killed
# (SIGKILL) in the middle and restarted by veil dev's supervisor, then the checks docs/RELIABILITY.md
# records (scripts/soak_check.py): no wrong answer; no request lost once retries are counted; the
# enclave's and the parent's memory flat after warm-up (within 10%); no growth in open file descriptors.
# Samples (RSS and descriptors of both processes, answers served, twice a second), the load's report and
# the verdict go to the output directory. The stack's audit log is then verified (`veil audit verify`):
# every receipt, chain and tree head across both enclave boots.
#
#   scripts/soak.sh                     # the full soak: 100,000 requests at concurrency 64 on iris, release build
#   scripts/soak.sh --model minilm --requests 5000 --concurrency 16
#   scripts/soak.sh --short             # CI's variant (scripts/test.sh): 8,000 requests at 16, debug build
#
# Options: --model NAME (a sample model: iris, breast_cancer, minilm), --requests N, --concurrency C,
# --retries N (default 8), --mode kms|attested-key, --kill-at FRACTION of the requests (default 0.5;
# 0: no kill), --threads N (veil load's), --bin-dir DIR (use these binaries instead of building release
# ones), --out DIR (default: $CARGO_TARGET_DIR/soak/MODEL-REQUESTS), --replay-window-secs W (default 5;
# 0: the enclave's defaults), --short.
#
# The replay window: the enclave keeps a record of every request for its replay window (300 s for
# sealed requests and 60 s for OHTTP by default), so in a run shorter than that its memory grows with
# every request (about 64 bytes each), towards a bound (rate x window), not a leak. The full soak sets
# both windows to W seconds (`veil dev --enclave-config`), so that the records reach their bound within
# seconds (about 2 MB at 5,000 requests a second) and turn over for the rest of the run: what grows
# after that is a leak. The short variant keeps the defaults: its 8,000 requests add about 0.5 MB.
# Exit status: 0 when every check passes, 1 when one fails (the report says which), 2 on bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."

model=iris requests=100000 concurrency=64 retries=8 kill_at=0.5 mode=kms threads="" bin_dir="" out=""
short=0 window=5
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --requests) requests="$2"; shift 2 ;;
        --concurrency) concurrency="$2"; shift 2 ;;
        --retries) retries="$2"; shift 2 ;;
        --mode) mode="$2"; shift 2 ;;
        --kill-at) kill_at="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --bin-dir) bin_dir="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --replay-window-secs) window="$2"; shift 2 ;;
        --short) short=1; shift ;;
        -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
target_dir="${CARGO_TARGET_DIR:-target}"
if [ "$short" -eq 1 ]; then
    requests=8000 concurrency=16 window=0
    bin_dir="${bin_dir:-$target_dir/debug}"
fi
case "$window" in '' | *[!0-9]*) echo "soak.sh: --replay-window-secs is a whole number of seconds" >&2; exit 2 ;; esac
case "$mode" in kms | attested-key) ;; *) echo "soak.sh: --mode is kms or attested-key" >&2; exit 2 ;; esac
out="${out:-$target_dir/soak/$model-$requests}"

log() { printf '[%s] soak: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

bash scripts/setup.sh >/dev/null
cache="${VEIL_CACHE:-$HOME/.cache/veil}"
# shellcheck source=/dev/null
source "$cache/env.sh"
if [ -z "$bin_dir" ]; then
    log "building release binaries"
    cargo build --release --workspace --bins --locked
    bin_dir="$target_dir/release"
fi
model_file="${VEIL_MODELS_DIR:-$cache/models}/$model.onnx"
[ -f "$model_file" ] || { echo "soak.sh: no model $model_file (scripts/setup.sh fetches the samples)" >&2; exit 2; }

rm -rf "$out"
mkdir -p "$out/no-models"
dev_pid="" load_pid=""
cleanup() {
    if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
    if [ -n "$dev_pid" ]; then
        kill -TERM "$dev_pid" 2>/dev/null || true
        wait "$dev_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

dev_args=(--port 0 --json --state-dir "$out/stack" --models-dir "$out/no-models" --model "$model=$model_file")
window_note="the enclave's defaults"
if [ "$window" -gt 0 ]; then
    window_note="$window s"
    printf '[limits]\nreplay_window_secs = %s\n\n[ohttp]\ndate_window_secs = %s\n' "$window" "$window" \
        >"$out/enclave-settings.toml"
    dev_args+=(--enclave-config "$out/enclave-settings.toml")
fi
log "starting veil dev with $model (state and logs in $out/stack; replay windows: $window_note)"
"$bin_dir/veil" dev "${dev_args[@]}" >"$out/dev.jsonl" 2>"$out/dev.log" &
dev_pid=$!
for _ in $(seq 600); do
    [ -s "$out/dev.jsonl" ] && break
    kill -0 "$dev_pid" 2>/dev/null || { echo "soak.sh: veil dev failed:" >&2; tail -20 "$out/dev.log" >&2; exit 1; }
    sleep 0.5
done
[ -s "$out/dev.jsonl" ] || { echo "soak.sh: veil dev did not come up in 300 s" >&2; exit 1; }

# The stack's URL, status file and client policy, and the client environment it printed.
url="" status_file="" client_policy="" audit_log=""
eval "$(python3 - "$out/dev.jsonl" <<'EOF'
import json, shlex, sys
d = json.loads(open(sys.argv[1]).readline())
print(f"url={shlex.quote(d['url'])} status_file={shlex.quote(d['status_file'])}"
      f" client_policy={shlex.quote(d['client_policy'])} audit_log={shlex.quote(d['audit_log'])}")
for k, v in d["env"].items():
    print(f"export {k}={shlex.quote(v)}")
EOF
)"
python3 - "$model" "$out/request.json" <<'EOF'
import json, sys
refs = json.load(open(f"tests/data/references/{sys.argv[1]}.json"))
json.dump(refs["cases"][0]["request"], open(sys.argv[2], "w"))
EOF

port="${url##*:}"
# Answers served so far (HTTP 200 on the inference routes), from the parent's metrics, in plain bash.
served() {
    {
        exec 3<>"/dev/tcp/127.0.0.1/$port" &&
            printf 'GET /metrics HTTP/1.0\r\nHost: soak\r\n\r\n' >&3 &&
            cat <&3
        exec 3<&-
    } 2>/dev/null | awk '/^veil_parent_requests_total\{/ && /status="200"/ && (/route="infer"/ || /route="ohttp"/) { s += $NF }
        END { printf "%d\n", s }'
}
pids() {
    python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))["children"]
print(s["parent"]["pid"] or 0, s["enclave"]["pid"] or 0)' "$status_file"
}
sample() { # phase
    local now p e s role pid rss fds
    now=$(date +%s%3N)
    read -r p e < <(pids)
    s=$(served)
    for role in parent enclave; do
        if [ "$role" = parent ]; then pid=$p; else pid=$e; fi
        if [ "$pid" -le 0 ] || [ ! -r "/proc/$pid/status" ]; then continue; fi
        rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        echo "$now,$1,$role,$pid,${rss:-0},$fds,$s" >>"$out/samples.csv"
    done
}

echo "t_ms,phase,role,pid,rss_kb,fds,served" >"$out/samples.csv"
sample idle_before
load_args=(--json --url "$url" --model "$model" --input "$out/request.json" --requests "$requests"
    --concurrency "$concurrency" --retries "$retries")
[ -n "$threads" ] && load_args+=(--threads "$threads")
[ "$mode" = attested-key ] && load_args+=(--policy "$client_policy")
log "veil load: $requests requests at concurrency $concurrency ($mode mode, $retries retries)"
"$bin_dir/veil" load "${load_args[@]}" >"$out/load.json" 2>"$out/load.log" &
load_pid=$!
kill_after=$(python3 -c "import sys; print(int(float(sys.argv[1]) * int(sys.argv[2])))" "$kill_at" "$requests")
killed=0
while kill -0 "$load_pid" 2>/dev/null; do
    sample load
    if [ "$killed" -eq 0 ] && [ "$kill_after" -gt 0 ] && [ "$(served)" -ge "$kill_after" ]; then
        read -r _ enclave < <(pids)
        log "killing the enclave (pid $enclave, SIGKILL) after $(served) answers"
        kill -KILL "$enclave"
        echo "$(date +%s%3N),$enclave,$(served)" >"$out/kill.csv"
        killed=1
    fi
    sleep 0.5
done
load_status=0
wait "$load_pid" || load_status=$?
load_pid=""
sleep 3
sample idle_after
cp "$status_file" "$out/status.json"
log "veil load exited with $load_status; verifying the audit log ($audit_log)"
# The dev stack's own mock root; any image, since the soak is about the log, not about which image ran.
"$bin_dir/veil" audit verify "$audit_log" --any-image --root "$out/stack/mock-nsm/mock-root.pem" --json \
    >"$out/audit.json" 2>"$out/audit.log" || true
log "checking"
if [ "$kill_after" -gt 0 ] && [ "$killed" -eq 0 ]; then
    # The run ended (or /metrics never answered) before the kill point: the soak did not test what it says.
    echo "soak.sh: FAIL: the enclave was to be killed after $kill_after answers, and never was (served: $(served))" >&2
    exit 1
fi
python3 scripts/soak_check.py "$out" --requests "$requests" --killed "$killed"
