#!/usr/bin/env python3
"""Load from NVIDIA's tritonclient (HTTP), as a user's code sends it: latency percentiles and throughput.

    triton_load.py URL REFERENCE_JSON CASE THREADS REQUESTS WARMUP (binary|json)

URL is HOST:PORT. Each of THREADS threads has its own InferenceServerClient and sends WARMUP requests,
then REQUESTS timed ones, of the reference case CASE (tests/data/references/MODEL.json): `binary` sends
inputs and asks for outputs as binary tensor data (tritonclient's default), `json` sends and asks for JSON
(what a server without the binary extension, like bench/python_baseline_server.py, understands). Every
answer is checked to have every output of the case. Prints one JSON line: p50_us, p99_us, mean_us,
requests, throughput_rps.
"""
import json
import sys
import threading
import time

import numpy as np
import tritonclient.http as httpclient

NP = {"FP32": np.float32, "INT64": np.int64}


def main():
    url, ref_path, case_name, threads, requests, warmup, mode = sys.argv[1:8]
    threads, requests, warmup, binary = int(threads), int(requests), int(warmup), mode == "binary"
    ref = json.load(open(ref_path))
    case = next(c for c in ref["cases"] if c["name"] == case_name)
    model = ref["model"].removesuffix(".onnx")
    arrays = [(i["name"], i["datatype"], np.array(i["data"], dtype=NP[i["datatype"]]).reshape(i["shape"]))
              for i in case["request"]["inputs"]]
    names = [o["name"] for o in case["outputs"]]
    latencies = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def worker():
        client = httpclient.InferenceServerClient(url)
        inputs = []
        for name, dt, arr in arrays:
            t = httpclient.InferInput(name, list(arr.shape), dt)
            t.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(t)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]

        def once():
            r = client.infer(model, inputs, outputs=outputs)
            for n in names:
                if r.as_numpy(n) is None:
                    raise SystemExit(f"no output {n}")

        for _ in range(warmup):
            once()
        barrier.wait()
        mine = []
        for _ in range(requests):
            t = time.perf_counter()
            once()
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)
        client.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    pct = lambda p: latencies[round((len(latencies) - 1) * p)] * 1e6
    print(json.dumps({"p50_us": pct(0.5), "p99_us": pct(0.99), "mean_us": sum(latencies) / len(latencies) * 1e6,
                      "requests": len(latencies), "throughput_rps": len(latencies) / elapsed}))


if __name__ == "__main__":
    main()
