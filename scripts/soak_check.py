#!/usr/bin/env python3
"""The checks of a soak run (scripts/soak.sh), from what it left in its output directory.

    python3 scripts/soak_check.py OUT_DIR --requests N --killed 0|1

OUT_DIR holds load.json (veil load --json), samples.csv (t_ms, phase, role, pid, rss_kb, fds, served:
one row a process every half second; phase idle_before, load or idle_after), kill.csv (t_ms, pid, served) when
the enclave was killed, and status.json (veil dev's supervisor). Prints a report and writes
OUT_DIR/soak.json; exits 1 when a check fails.

The checks:
  - wrong answers: none;
  - lost requests: none once retries are counted (every request answered, none failed);
  - the enclave restarted once per kill, and answers resumed after it;
  - memory: each process (the parent; the enclave before and after its restart, each its own process)
    after its warm-up (the first WARM_UP of all the requests it saw served) never holds more than
    MEMORY_SLACK above its RSS at the end of warm-up. The parent's life is judged in two spans when
    the enclave was killed, before the kill and after it, each with its own warm-up: a new enclave
    means new links and, in KMS envelope mode, a burst of relayed KMS sessions (every client's next
    data key), whose buffers the allocator keeps for the next burst;
  - descriptors: at the end of its life under load, no process holds more than FD_SLACK above its count
    at the end of warm-up (a peak in between, such as the parent's links being dialled again after the
    enclave's restart, is reported but not judged); once the load is gone, the parent holds at most
    FD_SLACK more than before it came;
  - the audit log (audit.json: `veil audit verify --json` of the stack's log): it verifies, and without
    a kill it holds exactly one receipt per answer; with one, the killed enclave's last records (those
    it had not yet handed to the parent) are missing, and answers it made that never reached their
    client may be there: the difference is reported, not judged.
A process whose life after warm-up has fewer than MIN_SAMPLES samples is reported, not judged (a run too
short to say).
"""
import csv
import json
import sys
from collections import defaultdict

WARM_UP = 0.10
MEMORY_SLACK = 0.10
FD_SLACK = 4
MIN_SAMPLES = 3


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    out = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    requests = int(opts.get("--requests", "0"))
    killed = opts.get("--killed", "0") == "1"

    load = json.load(open(f"{out}/load.json"))
    status = json.load(open(f"{out}/status.json"))
    rows = list(csv.DictReader(open(f"{out}/samples.csv")))
    for r in rows:
        for k in ("t_ms", "pid", "rss_kb", "fds", "served"):
            r[k] = int(r[k])
    checks = []

    def check(name, ok, detail):
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    check("no wrong answer", load["wrong"] == 0, f"{load['wrong']} wrong")
    check(
        "no request lost (retries counted)",
        load["failed"] == 0 and load["ok"] == requests,
        f"{load['ok']} of {requests} answered, {load['failed']} failed after {load['retries']} retries",
    )
    kill_t = None
    if killed:
        kill_t, _, kill_served = (int(x) for x in open(f"{out}/kill.csv").read().strip().split(","))
        restarts = status["restarts"]["enclave"]
        check("the enclave restarted once", restarts == 1, f"{restarts} restarts")
        after = max((r["served"] for r in rows), default=0) - kill_served
        check("answers resumed after the restart", after > 0, f"{after} answers after the kill")

    # One series per process: (role, pid), in time order, under load; the parent's split at the kill.
    series = defaultdict(list)
    for r in rows:
        if r["phase"] == "load":
            span = ""
            if r["role"] == "parent" and kill_t is not None:
                span = " (before the kill)" if r["t_ms"] < kill_t else " (after the kill)"
            series[(r["role"], r["pid"], span)].append(r)
    last_round = max((r["t_ms"] for r in rows if r["phase"] == "load"), default=0)
    processes = []
    for (role, pid, span), s in sorted(series.items(), key=lambda kv: kv[1][0]["t_ms"]):
        first = s[0]["served"]
        warm = next((i for i, r in enumerate(s) if r["served"] - first >= WARM_UP * requests), None)
        p = {"role": role, "pid": pid, "span": span.strip(" ()"), "samples": len(s), "rss_start_kb": s[0]["rss_kb"]}
        if warm is None or len(s) - warm < MIN_SAMPLES:
            p["note"] = "too few samples after warm-up to judge"
            processes.append(p)
            continue
        base, later = s[warm], s[warm:]
        peak = max(r["rss_kb"] for r in later)
        growth = peak / base["rss_kb"] - 1 if base["rss_kb"] else 0.0
        fd_peak = max(r["fds"] for r in later)
        # The end of its life under load: its last sample but the sampler's final round, which may come
        # after the load finished and its connections closed.
        busy = [r for r in later if r["t_ms"] < last_round] or later
        fd_end = busy[-1]["fds"]
        p.update(
            rss_warm_kb=base["rss_kb"],
            rss_peak_kb=peak,
            rss_end_kb=later[-1]["rss_kb"],
            growth=round(growth, 4),
            fds_warm=base["fds"],
            fds_peak=fd_peak,
            fds_end=fd_end,
        )
        processes.append(p)
        check(
            f"{role} {pid}{span}: memory flat after warm-up",
            growth <= MEMORY_SLACK,
            f"RSS {base['rss_kb'] / 1024:.1f} MiB after warm-up, peak {peak / 1024:.1f} MiB "
            f"({growth * 100:+.1f}%, at most {MEMORY_SLACK * 100:.0f}%)",
        )
        check(
            f"{role} {pid}{span}: no descriptor growth under load",
            fd_end <= base["fds"] + FD_SLACK,
            f"{base['fds']} after warm-up, {fd_end} at the end (at most +{FD_SLACK}; peak {fd_peak})",
        )
    idle = {ph: [r for r in rows if r["phase"] == ph and r["role"] == "parent"] for ph in ("idle_before", "idle_after")}
    if idle["idle_before"] and idle["idle_after"]:
        before, after = idle["idle_before"][0]["fds"], idle["idle_after"][-1]["fds"]
        check(
            "parent: descriptors back to idle once the load is gone",
            after <= before + FD_SLACK,
            f"{before} before the load, {after} after it",
        )

    audit, notes = None, []
    try:
        audit = json.load(open(f"{out}/audit.json"))
    except (OSError, ValueError):
        check("the audit log verifies", False, "no report from veil audit verify (see audit.log)")
    if audit is not None:
        logged = audit["summary"]["receipts"]
        boots = len(audit["summary"]["boots"])
        errors = [f["kind"] for f in audit["findings"] if f["error"]]
        check(
            "the audit log verifies",
            audit["verified"],
            f"{logged} receipts and {audit['summary']['tree_heads']} tree heads in {boots} boot{'s' if boots != 1 else ''}"
            + (f"; errors: {', '.join(sorted(set(errors)))}" if errors else ""),
        )
        if killed:
            notes.append(f"audit log: {logged} receipts for {load['ok']} answers ({logged - load['ok']:+d}: the kill)")
        else:
            check("one receipt per answer in the log", logged == load["ok"], f"{logged} receipts, {load['ok']} answers")

    report = {"load": load, "audit": audit and {k: audit[k] for k in ("verified", "summary")}, "processes": processes, "checks": checks, "passed": all(c["ok"] for c in checks)}
    json.dump(report, open(f"{out}/soak.json", "w"), indent=2)
    lat = load["latency_us"]
    print(
        f"soak: {load['requests']} requests at concurrency {load['concurrency']} ({load['mode']} mode) in "
        f"{load['duration_secs']:.1f} s: {load['ok']} ok, {load['wrong']} wrong, {load['failed']} failed, "
        f"{load['retries']} retries, {load['rps']} answers/s; latency ms p50 {lat['p50'] / 1000:.2f} "
        f"p99 {lat['p99'] / 1000:.2f} p99.9 {lat['p999'] / 1000:.2f} max {lat['max'] / 1000:.2f}"
    )
    for p in processes:
        if "note" in p:
            span = f" ({p['span']})" if p["span"] else ""
            print(f"  {p['role']} {p['pid']}{span}: {p['samples']} samples; {p['note']}")
    for n in notes:
        print(f"  {n}")
    for c in checks:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['detail']}")
    print(f"soak: {'PASSED' if report['passed'] else 'FAILED'} (details in {out}/soak.json)")
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
