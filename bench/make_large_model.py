#!/usr/bin/env python3
"""Writes a large ONNX model for the start-up and memory measurements (scripts/startup.sh): never committed.

    python bench/make_large_model.py OUT.onnx [SIZE_MB]

A chain of MatMul + Relu layers of 4096 x 4096 FP32 weights (64 MiB each) from input "x" FP32 [1, 4096]
to output "y" FP32 [1, 4096], with as many layers as make SIZE_MB (default 600) or more. The weights are
random (seeded, so the file is the same every time) and scaled so that activations stay in range. Needs
onnx and numpy (bench/requirements.txt).
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 4096


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = sys.argv[1]
    size_mb = int(sys.argv[2]) if len(sys.argv) == 3 else 600
    layer_bytes = WIDTH * WIDTH * 4
    layers = max(1, -(-size_mb * 1_000_000 // layer_bytes))
    rng = np.random.default_rng(20261207)
    nodes, initializers = [], []
    previous = "x"
    for i in range(layers):
        w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.float32(np.sqrt(WIDTH))).astype(np.float32)
        initializers.append(numpy_helper.from_array(w, name=f"w{i}"))
        product = f"m{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [product]))
        activation = "y" if i == layers - 1 else f"a{i}"
        nodes.append(helper.make_node("Relu", [product], [activation]))
        previous = activation
    graph = helper.make_graph(
        nodes,
        "veil-large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="veil-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, out)
    print(f"{out}: {layers} layers of {WIDTH}x{WIDTH} FP32, {layers * layer_bytes / 1e6:.0f} MB of weights")


if __name__ == "__main__":
    main()
