#!/usr/bin/env python3
"""NVIDIA's tritonclient (HTTP), unmodified, against `veil proxy`: what a user's own code does.

    triton_client.py check URL REFERENCES_DIR MODEL...   every reference case of each model, with binary
                                                        tensors and with JSON ones; health, metadata and
                                                        errors as tritonclient reports them
    triton_client.py more_types URL                      FP16, BF16 and BYTES (models/more_types)
    triton_client.py load URL REFERENCES_DIR MODEL THREADS REQUESTS
                                                        THREADS clients at once, REQUESTS each, every
                                                        answer checked

URL is HOST:PORT, as tritonclient takes it. Prints one JSON object (what was checked) and exits 0, or
prints what differed and exits 1. Outputs are compared with the references that Python onnxruntime
computed (tests/data/references): bit for bit (their SHA-256) when they came back binary, within the
reference's tolerance as JSON.
"""
import hashlib
import json
import os
import sys
import threading

import ml_dtypes
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

NP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


def fail(message):
    print(json.dumps({"ok": False, "error": message}))
    sys.exit(1)


def load_cases(references, model):
    with open(os.path.join(references, f"{model}.json")) as f:
        return json.load(f)["cases"]


def inputs_of(case, binary):
    out = []
    for i in case["request"]["inputs"]:
        arr = np.array(i["data"], dtype=NP[i["datatype"]]).reshape(i["shape"])
        t = httpclient.InferInput(i["name"], list(arr.shape), i["datatype"])
        t.set_data_from_numpy(arr, binary_data=binary)
        out.append(t)
    return out


def compare(model, case, result, binary):
    for want in case["outputs"]:
        got = result.as_numpy(want["name"])
        if got is None:
            fail(f"{model}/{case['name']}: no output {want['name']}")
        if list(got.shape) != want["shape"]:
            fail(f"{model}/{case['name']}: {want['name']} has shape {list(got.shape)}, want {want['shape']}")
        if binary:
            digest = hashlib.sha256(np.ascontiguousarray(got).astype(got.dtype.newbyteorder("<")).tobytes()).hexdigest()
            if digest != want["sha256_le"]:
                fail(f"{model}/{case['name']}: {want['name']} (binary) differs from onnxruntime's bit pattern")
        else:
            tol = case.get("tolerance", {"atol": 0, "rtol": 0})
            ref = np.array(want["data"], dtype=got.dtype).reshape(want["shape"])
            if not np.allclose(got, ref, atol=tol["atol"], rtol=tol["rtol"]):
                fail(f"{model}/{case['name']}: {want['name']} (JSON) differs from onnxruntime's beyond tolerance")


def expect_error(call, status, fragment, what):
    try:
        call()
    except InferenceServerException as e:
        if str(e.status()) != str(status) or fragment not in e.message():
            fail(f"{what}: got HTTP {e.status()} {e.message()!r}, want {status} with {fragment!r}")
        return e.message()
    fail(f"{what}: no error raised")


def check(url, references, models):
    client = httpclient.InferenceServerClient(url)
    if not client.is_server_live() or not client.is_server_ready():
        fail("the server is not live and ready")
    meta = client.get_server_metadata()
    if "binary_tensor_data" not in meta.get("extensions", []):
        fail(f"server metadata lists no binary_tensor_data extension: {meta}")
    checked = 0
    for model in models:
        if not client.is_model_ready(model) or not client.is_model_ready(model, model_version="1"):
            fail(f"model {model} is not ready")
        m = client.get_model_metadata(model)
        if m["name"] != model or not m["inputs"] or "sha384" not in m.get("parameters", {}):
            fail(f"model {model}: metadata {m}")
        for n, case in enumerate(load_cases(references, model)):
            for binary in (True, False):
                outputs = None
                if not binary:
                    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=False) for o in case["outputs"]]
                # Every other case names a version, as clients configured with one do.
                version = "1" if n % 2 else ""
                result = client.infer(model, inputs_of(case, binary), outputs=outputs, model_version=version)
                compare(model, case, result, binary)
                checked += 1
    # Errors, as tritonclient raises them, with the proxy's and the enclave's messages.
    case = load_cases(references, models[0])[0]
    expect_error(lambda: client.infer("no_such_model", inputs_of(case, True)), 404, "not in the proxy's policy",
                 "unknown model")
    expect_error(lambda: client.get_model_metadata("no_such_model"), 404, "not in the proxy's policy",
                 "unknown model's metadata")
    if client.is_model_ready("no_such_model"):
        fail("an unknown model is ready")
    bad = httpclient.InferInput(case["request"]["inputs"][0]["name"], [1, 1], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    expect_error(lambda: client.infer(models[0], [bad]), 400, "expected shape", "wrong shape")
    expect_error(lambda: client.infer(models[0], inputs_of(case, True), model_version="7"), 404, "version",
                 "unknown version")
    client.close()
    return {"ok": True, "inferences": checked}


def more_types(url):
    client = httpclient.InferenceServerClient(url)
    h = np.array([0.5, -2.0, 1024.0], dtype=np.float16)
    b = np.array([1.5, -3.0, 256.0], dtype=ml_dtypes.bfloat16)
    s = np.array(["héllo".encode(), b"", b"ok"], dtype=np.object_)
    checked = 0
    for binary in (True, False):
        inputs = [httpclient.InferInput("h", [3], "FP16"), httpclient.InferInput("b", [3], "BF16"),
                  httpclient.InferInput("s", [3], "BYTES")]
        inputs[0].set_data_from_numpy(h, binary_data=binary)
        inputs[1].set_data_from_numpy(b, binary_data=True)  # tritonclient sends BF16 as binary only
        inputs[2].set_data_from_numpy(s, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("h_plus_one", "s_marked")]
        outputs.append(httpclient.InferRequestedOutput("b_plus_one", binary_data=True))
        r = client.infer("more_types", inputs, outputs=outputs)
        got_h = r.as_numpy("h_plus_one")
        if got_h.dtype != np.float16 or not np.array_equal(got_h, h + np.float16(1)):
            fail(f"FP16 (binary={binary}): got {got_h!r}")
        got_b = r.as_numpy("b_plus_one")
        if got_b.dtype != ml_dtypes.bfloat16 or not np.array_equal(got_b.astype(np.float32), [2.5, -2.0, 256.0]):
            fail(f"BF16: got {got_b!r}")
        got_s = [x if isinstance(x, bytes) else str(x).encode() for x in r.as_numpy("s_marked").tolist()]
        if got_s != ["héllo!".encode(), b"!", b"ok!"]:
            fail(f"BYTES (binary={binary}): got {got_s!r}")
        checked += 1
    # BF16 answered as JSON numbers (tritonclient reads them with ml_dtypes).
    inputs = [httpclient.InferInput("h", [3], "FP16"), httpclient.InferInput("b", [3], "BF16"),
              httpclient.InferInput("s", [3], "BYTES")]
    inputs[0].set_data_from_numpy(h)
    inputs[1].set_data_from_numpy(b)
    inputs[2].set_data_from_numpy(s)
    r = client.infer("more_types", inputs, outputs=[httpclient.InferRequestedOutput("b_plus_one", binary_data=False)])
    if not np.array_equal(r.as_numpy("b_plus_one").astype(np.float32), [2.5, -2.0, 256.0]):
        fail(f"BF16 as JSON: got {r.as_numpy('b_plus_one')!r}")
    # Strings ONNX Runtime cannot take: refused by the enclave, named, as tritonclient reports errors.
    for bad, why in ((b"\xff", "not UTF-8"), (b"a\x00b", "NUL")):
        inputs[2].set_data_from_numpy(np.array([bad, b"", b"ok"], dtype=np.object_))
        expect_error(lambda: client.infer("more_types", inputs), 400, why, f"BYTES {bad!r}")
    client.close()
    return {"ok": True, "inferences": checked}


def load(url, references, model, threads, requests):
    case = load_cases(references, model)[0]
    errors = []
    done = [0]
    lock = threading.Lock()

    def worker(k):
        try:
            client = httpclient.InferenceServerClient(url)
            for i in range(requests):
                binary = (k + i) % 2 == 0
                compare(model, case, client.infer(model, inputs_of(case, binary)), True)
                with lock:
                    done[0] += 1
            client.close()
        except BaseException as e:  # noqa: BLE001 (fail() raises SystemExit in a thread)
            errors.append(f"client {k}: {e}")

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        fail("; ".join(errors[:5]))
    return {"ok": True, "inferences": done[0]}


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd = argv[1]
    if cmd == "check":
        out = check(argv[2], argv[3], argv[4:])
    elif cmd == "more_types":
        out = more_types(argv[2])
    elif cmd == "load":
        out = load(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]))
    else:
        fail(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
