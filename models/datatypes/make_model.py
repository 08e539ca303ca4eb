#!/usr/bin/env python3
"""Builds datatypes.onnx: a tiny model whose inputs and outputs cover the v2 datatypes Veil carries.

It exists for tests: the sample models only take FP32 and INT64, so this one checks that FP64, INT32,
BOOL (and FP32, INT64) cross the whole path with their types and values intact. Every output is a simple
function of its input, so the expected answers are obvious:

    f64 (FP64  [N]) -> f64_doubled   = f64 * 2
    i32 (INT32 [N]) -> i32_plus_one  = i32 + 1
    b   (BOOL  [N]) -> b_not         = not b
    f32 (FP32  [N]) -> f32_negated   = -f32
    i64 (INT64 [N]) -> i64_squared   = i64 * i64

Deterministic: run it again and the bytes are the same. Needs the `onnx` package (1.23.2 was used);
check with onnxruntime that the answers are as above.
"""
import sys

import onnx
from onnx import TensorProto, helper

N = "N"


def io(name, ty):
    return helper.make_tensor_value_info(name, ty, [N])


def const(name, ty, value):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", ty, [], [value]))


nodes = [
    const("two", TensorProto.DOUBLE, 2.0),
    helper.make_node("Mul", ["f64", "two"], ["f64_doubled"]),
    const("one", TensorProto.INT32, 1),
    helper.make_node("Add", ["i32", "one"], ["i32_plus_one"]),
    helper.make_node("Not", ["b"], ["b_not"]),
    helper.make_node("Neg", ["f32"], ["f32_negated"]),
    helper.make_node("Mul", ["i64", "i64"], ["i64_squared"]),
]
graph = helper.make_graph(
    nodes,
    "veil_datatypes",
    [io("f64", TensorProto.DOUBLE), io("i32", TensorProto.INT32), io("b", TensorProto.BOOL),
     io("f32", TensorProto.FLOAT), io("i64", TensorProto.INT64)],
    [io("f64_doubled", TensorProto.DOUBLE), io("i32_plus_one", TensorProto.INT32), io("b_not", TensorProto.BOOL),
     io("f32_negated", TensorProto.FLOAT), io("i64_squared", TensorProto.INT64)],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="veil")
model.ir_version = 8
onnx.checker.check_model(model)
out = sys.argv[1] if len(sys.argv) > 1 else "datatypes.onnx"
onnx.save(model, out)
print(f"wrote {out}")
