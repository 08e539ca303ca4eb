#!/usr/bin/env bash
# Start-up and memory of the enclave: for MiniLM and for a generated model of about 600 MB
# (bench/make_large_model.py, written once into the cache, never committed), the enclave's cold start
# (process start to every model loaded: fetched from the parent, data key from KMS, decrypted in place,
# hashed, loaded into ONNX Runtime) and its peak memory (VmHWM), beside the model's size and what
# `veil eif size` advises for it. Each model runs alone in `veil dev` (release build), --runs times.
# A table on stdout; JSON in $CARGO_TARGET_DIR/startup/startup.json. Results belong in docs/RELIABILITY.md.
#
#   scripts/startup.sh                    # both models, 3 runs each
#   scripts/startup.sh --runs 1 --size-mb 800 --bin-dir target/release
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3 size_mb=600 bin_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --size-mb) size_mb="$2"; shift 2 ;;
        --bin-dir) bin_dir="$2"; shift 2 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "startup.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
log() { printf '[%s] startup: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

bash scripts/setup.sh >/dev/null
cache="${VEIL_CACHE:-$HOME/.cache/veil}"
# shellcheck source=/dev/null
source "$cache/env.sh"
target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "$bin_dir" ]; then
    cargo build --release --workspace --bins --locked
    bin_dir="$target_dir/release"
fi
large="$cache/large-model/large-$size_mb.onnx"
if [ ! -f "$large" ]; then
    python=$(bash scripts/venv.sh "$cache/bench-venv" bench/requirements.txt)
    mkdir -p "$(dirname "$large")"
    log "generating $large"
    "$python" bench/make_large_model.py "$large.partial" "$size_mb" >&2
    mv "$large.partial" "$large"
fi

out="$target_dir/startup"
rm -rf "$out"
mkdir -p "$out/no-models"
# A stand-in EIF of 60 MiB for `veil eif size` (only its size counts): the advice's model terms are what is
# compared here.
truncate -s 60M "$out/stand-in.eif"

dev_pid=""
trap '[ -n "$dev_pid" ] && kill -TERM "$dev_pid" 2>/dev/null; wait 2>/dev/null || true' EXIT
echo "[" >"$out/startup.json"
first=1
for entry in "minilm=${VEIL_MODELS_DIR:-$cache/models}/minilm.onnx" "large=$large"; do
    name="${entry%%=*}" path="${entry#*=}"
    for run in $(seq "$runs"); do
        state="$out/$name-$run"
        log "$name run $run: starting veil dev"
        "$bin_dir/veil" dev --port 0 --json --state-dir "$state" --models-dir "$out/no-models" \
            --model "$name=$path" >"$state.jsonl" 2>"$state.log" &
        dev_pid=$!
        for _ in $(seq 1200); do
            [ -s "$state.jsonl" ] && break
            kill -0 "$dev_pid" 2>/dev/null || { tail -20 "$state.log" >&2; exit 1; }
            sleep 0.5
        done
        # Everything about this run, read while the stack still runs (the peak is the enclave's VmHWM).
        python3 - "$state.jsonl" "$path" "$name" "$run" >>"$out/startup.json" <<'EOF'
import datetime, json, os, re, sys
dev = json.loads(open(sys.argv[1]).readline())
pid = dev["pids"]["enclave"]
status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
kib = lambda k: int(status[k].split()[0])
log = re.sub(r"\x1b\[[0-9;]*m", "", open(dev["logs"]["enclave"]).read())
fetched = re.search(r"model fetched.*?elapsed_ms=(\d+)", log)
def at(what):
    m = re.search(r"^(\S+)\s+INFO.*" + what, log, re.M)
    return datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")) if m else None
fetched_at, loaded_at = at("model fetched"), at("model loaded")
sessions = re.search(r"^sessions = (\d+)", open(dev["enclave_config"]).read(), re.M)
print(json.dumps({
    "model": sys.argv[3], "run": int(sys.argv[4]), "model_bytes": os.path.getsize(sys.argv[2]),
    "startup_ms": dev["enclave_startup_ms"], "fetch_ms": int(fetched.group(1)) if fetched else None,
    "open_and_load_ms": round((loaded_at - fetched_at).total_seconds() * 1000) if fetched_at and loaded_at else None,
    "peak_rss_kib": kib("VmHWM"), "rss_kib": kib("VmRSS"),
    "sessions": int(sessions.group(1)) if sessions else os.cpu_count(),
}) + ",")
EOF
        kill -TERM "$dev_pid"
        wait "$dev_pid" || true
        dev_pid=""
    done
    advice=$("$bin_dir/veil" eif size "$out/stand-in.eif" --model "$path" --cpus "$(nproc)" --json)
    printf '{"model": "%s", "eif_size_advice": %s}%s\n' "$name" "$advice" "," >>"$out/startup.json"
    first=0
done
[ "$first" -eq 0 ] && sed -i '$ s/,$//' "$out/startup.json"
echo "]" >>"$out/startup.json"

python3 - "$out/startup.json" <<'EOF'
import json, statistics, sys
rows = json.load(open(sys.argv[1]))
runs = [r for r in rows if "run" in r]
advice = {r["model"]: r["eif_size_advice"] for r in rows if "eif_size_advice" in r}
print("| model | size | sessions | cold start (median, min-max) | fetch | key, decrypt, hash, ONNX Runtime | peak RSS | after load | peak / size | veil eif size: model term | advised memory |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for model in dict.fromkeys(r["model"] for r in runs):
    rs = [r for r in runs if r["model"] == model]
    mb = rs[0]["model_bytes"] / 2**20
    start = [r["startup_ms"] / 1000 for r in rs]
    fetch = [r["fetch_ms"] / 1000 for r in rs if r["fetch_ms"] is not None]
    load = [r["open_and_load_ms"] / 1000 for r in rs if r["open_and_load_ms"] is not None]
    med = lambda xs: f"{statistics.median(xs):.2f} s" if xs else "?"
    peak = statistics.median(r["peak_rss_kib"] for r in rs) / 1024
    after = statistics.median(r["rss_kib"] for r in rs) / 1024
    a = advice[model]
    term = a["models_mib"] * (2 + a["sessions"])
    print(f"| {model} | {mb:.0f} MiB | {rs[0]['sessions']} | {statistics.median(start):.2f} s ({min(start):.2f}-{max(start):.2f}) "
          f"| {med(fetch)} | {med(load)} | {peak:.0f} MiB | {after:.0f} MiB | {peak / mb:.2f} "
          f"| {term} MiB ({a['models_mib']} x (2 + {a['sessions']})) | {a['memory_mib']} MiB |")
EOF
