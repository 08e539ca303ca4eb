#!/usr/bin/env python3
"""Train Veil's demo model and export it to ONNX.

A StandardScaler + LogisticRegression pipeline on the Wisconsin Diagnostic
Breast Cancer data bundled with scikit-learn (no download). The ONNX graph has
tensor outputs only (no ZipMap):

    input          float32 [N, 30]   the 30 features, in load_breast_cancer() order
    label          int64   [N]       0 = malignant, 1 = benign
    probabilities  float32 [N, 2]    columns: P(malignant), P(benign)

Deterministic: fixed split seed, deterministic solver, fixed graph name, no
timestamps. Run from anywhere:

    python models/breast_cancer/train.py            # writes breast_cancer.onnx beside this file
    python models/breast_cancer/train.py --out X.onnx
"""

import argparse
import hashlib
import os
import sys

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

RANDOM_STATE = 42
# An upper bound: skl2onnx writes the lowest opsets its operators need (here ai.onnx 9, ai.onnx.ml 1).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "breast_cancer.onnx"))
    args = ap.parse_args()

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=RANDOM_STATE, stratify=y
    )

    pipe = Pipeline(
        [
            ("scaler", StandardScaler()),
            ("clf", LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, random_state=RANDOM_STATE)),
        ]
    )
    pipe.fit(x_train, y_train)
    acc = pipe.score(x_test, y_test)

    onx = convert_sklearn(
        pipe,
        name="veil_breast_cancer",
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, 2])),
        ],
        options={id(pipe.named_steps["clf"]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onx.doc_string = (
        "Veil demo: StandardScaler + LogisticRegression on the Wisconsin Diagnostic Breast Cancer "
        "dataset (scikit-learn bundle). label: 0=malignant 1=benign; probabilities[:, k] = P(class k)."
    )
    onnx.checker.check_model(onx, full_check=True)

    blob = onx.SerializeToString(deterministic=True)
    with open(args.out, "wb") as f:
        f.write(blob)

    domains = sorted({n.domain or "ai.onnx" for n in onx.graph.node})
    ops = sorted({(n.domain or "ai.onnx") + ":" + n.op_type for n in onx.graph.node})
    print(f"test accuracy: {acc:.4f} ({len(y_test)} held-out rows)")
    print(f"opsets: {[(o.domain or 'ai.onnx', o.version) for o in onx.opset_import]}")
    print(f"domains: {domains}; ops: {ops}")
    print(f"wrote {args.out} ({len(blob)} bytes) sha256 {hashlib.sha256(blob).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
