#!/usr/bin/env python3
"""Plain, unencrypted Python onnxruntime HTTP server: the baseline Veil is benchmarked against.

Serves one ONNX model with the same KServe v2 / Open Inference Protocol JSON that Veil speaks:

    POST /v2/models/{name}/infer   {"inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}]}
    GET  /v2/models/{name}         model metadata
    GET  /v2/models/{name}/ready, /v2/health/ready, /v2/health/live

Only the standard library's ThreadingHTTPServer, onnxruntime and numpy. One onnxruntime session shared by
all request threads, with 1 intra-op thread by default (like Veil's benchmark configuration).
Outputs that are sequences of maps (ZipMap, as in logreg_iris.onnx) are returned as an FP32 [N, K]
tensor whose columns are ordered by key, as Veil does.

    python bench/python_baseline_server.py --model ~/.cache/veil/models/iris.onnx --name iris --port 8081

prints "listening on http://127.0.0.1:PORT" once it accepts connections (--port 0 picks a free port).
"""

import argparse
import json
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort

# KServe datatype <-> numpy dtype <-> onnxruntime type string
DATATYPES = {
    "BOOL": (np.bool_, "tensor(bool)"),
    "UINT8": (np.uint8, "tensor(uint8)"),
    "UINT16": (np.uint16, "tensor(uint16)"),
    "UINT32": (np.uint32, "tensor(uint32)"),
    "UINT64": (np.uint64, "tensor(uint64)"),
    "INT8": (np.int8, "tensor(int8)"),
    "INT16": (np.int16, "tensor(int16)"),
    "INT32": (np.int32, "tensor(int32)"),
    "INT64": (np.int64, "tensor(int64)"),
    "FP16": (np.float16, "tensor(float16)"),
    "FP32": (np.float32, "tensor(float)"),
    "FP64": (np.float64, "tensor(double)"),
}
ORT_TO_KSERVE = {ort_type: dt for dt, (_, ort_type) in DATATYPES.items()}
NUMPY_TO_KSERVE = {np.dtype(np_type): dt for dt, (np_type, _) in DATATYPES.items()}


class BadRequest(Exception):
    pass


class Model:
    def __init__(self, path, name, intra_op_threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.name = name
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = json.dumps({
            "name": name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [self._meta(i) for i in self.session.get_inputs()],
            "outputs": [self._meta(o) for o in self.session.get_outputs()],
        }).encode()

    @staticmethod
    def _meta(arg):
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        datatype = ORT_TO_KSERVE.get(arg.type)
        if datatype is None and arg.type.startswith("seq(map("):
            datatype, shape = "FP32", [-1, -1]
        return {"name": arg.name, "datatype": datatype or arg.type, "shape": shape}

    def infer(self, body):
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"invalid JSON: {e}") from None
        if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
            raise BadRequest("request must be an object with an 'inputs' list")
        feeds = {}
        for t in req["inputs"]:
            if not isinstance(t, dict):
                raise BadRequest("each input must be an object")
            name, shape, datatype, data = t.get("name"), t.get("shape"), t.get("datatype"), t.get("data")
            meta = self.inputs.get(name)
            if meta is None:
                raise BadRequest(f"unknown input {name!r}; the model takes {sorted(self.inputs)}")
            if name in feeds:
                raise BadRequest(f"input {name!r} given twice")
            if datatype not in DATATYPES:
                raise BadRequest(f"input {name!r}: unsupported datatype {datatype!r}")
            np_type, ort_type = DATATYPES[datatype]
            if ort_type != meta.type:
                raise BadRequest(f"input {name!r}: datatype {datatype} but the model expects {meta.type}")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
            try:
                arr = np.array(data, dtype=np_type)
            except (TypeError, ValueError, OverflowError) as e:
                raise BadRequest(f"input {name!r}: bad data: {e}") from None
            if arr.size != int(np.prod(shape, dtype=np.int64)):
                raise BadRequest(f"input {name!r}: {arr.size} values for shape {shape}")
            feeds[name] = arr.reshape(shape)
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise BadRequest(f"missing inputs {missing}")

        wanted = self.output_names
        if req.get("outputs") is not None:
            try:
                wanted = [o["name"] for o in req["outputs"]]
            except (TypeError, KeyError):
                raise BadRequest("'outputs' must be a list of objects with a 'name'") from None
            unknown = [n for n in wanted if n not in self.output_names]
            if unknown:
                raise BadRequest(f"unknown outputs {unknown}")
        try:
            results = self.session.run(wanted, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own, non-public exception types
            raise BadRequest(f"inference failed: {e}") from None

        outputs = [self._output(n, v) for n, v in zip(wanted, results)]
        resp = {"model_name": self.name, "model_version": "1", "outputs": outputs}
        if "id" in req:
            resp["id"] = req["id"]
        return json.dumps(resp, separators=(",", ":")).encode()

    @staticmethod
    def _output(name, value):
        if isinstance(value, list):  # sequence of maps (ZipMap): FP32 [N, K], columns ordered by key
            keys = sorted(value[0].keys()) if value else []
            value = np.array([[m[k] for k in keys] for m in value], dtype=np.float32).reshape(len(value), len(keys))
        value = np.asarray(value)
        datatype = NUMPY_TO_KSERVE.get(value.dtype)
        if datatype is None:
            raise BadRequest(f"output {name!r} has unsupported type {value.dtype}")
        return {"name": name, "datatype": datatype, "shape": list(value.shape), "data": value.reshape(-1).tolist()}


def make_handler(model):
    infer_path = f"/v2/models/{model.name}/infer"
    model_path = f"/v2/models/{model.name}"
    ready_paths = {f"/v2/models/{model.name}/ready", "/v2/health/ready", "/v2/health/live"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the benchmark clients expect
        disable_nagle_algorithm = True  # headers and body go out in separate writes
        server_version = "veil-python-baseline"

        def log_message(self, format, *args):
            pass

        def _reply(self, status, body=b"", content_type="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def _error(self, status, message):
            self._reply(status, json.dumps({"error": message}).encode())

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path in ready_paths:
                self._reply(HTTPStatus.OK)
            elif path == model_path:
                self._reply(HTTPStatus.OK, model.metadata)
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route for GET {path}")

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
                return
            body = self.rfile.read(length)
            if path != infer_path:
                self._error(HTTPStatus.NOT_FOUND, f"no route for POST {path}")
                return
            try:
                out = model.infer(body)
            except BadRequest as e:
                self._error(HTTPStatus.BAD_REQUEST, str(e))
                return
            self._reply(HTTPStatus.OK, out)

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="path of the .onnx file")
    ap.add_argument("--name", required=True, help="model name in the URL: /v2/models/NAME/infer")
    ap.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--intra-op-threads", type=int, default=1)
    args = ap.parse_args()

    model = Model(args.model, args.name, args.intra_op_threads)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(model))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
