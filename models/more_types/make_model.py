#!/usr/bin/env python3
"""Builds more_types.onnx: a tiny model whose inputs and outputs are the v2 datatypes FP16, BF16 and BYTES.

It exists for tests, next to models/datatypes (FP64, INT32, BOOL, FP32, INT64): none of the sample models
takes half-precision floats or strings, so this one checks that they cross the whole path, as JSON and
as binary tensor data, with their types and values intact. Every output is a simple function of its
input, so the expected answers are obvious:

    h (FP16   [N]) -> h_plus_one = h + 1      (computed in FP32, cast back to FP16)
    b (BF16   [N]) -> b_plus_one = b + 1      (computed in FP32, cast back to BF16)
    s (STRING [N]) -> s_marked   = s + "!"    (StringConcat: locale-free, unlike StringNormalizer)

Deterministic: run it again and the bytes are the same. Needs the `onnx` package (1.23.2 was used);
check with onnxruntime that the answers are as above.
"""
import sys

import onnx
from onnx import TensorProto, helper

N = "N"


def io(name, ty):
    return helper.make_tensor_value_info(name, ty, [N])


nodes = [
    helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one_v", TensorProto.FLOAT, [], [1.0])),
    helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT),
    helper.make_node("Add", ["h32", "one"], ["h32_plus"]),
    helper.make_node("Cast", ["h32_plus"], ["h_plus_one"], to=TensorProto.FLOAT16),
    helper.make_node("Cast", ["b"], ["b32"], to=TensorProto.FLOAT),
    helper.make_node("Add", ["b32", "one"], ["b32_plus"]),
    helper.make_node("Cast", ["b32_plus"], ["b_plus_one"], to=TensorProto.BFLOAT16),
    helper.make_node("Constant", [], ["bang"], value=helper.make_tensor("bang_v", TensorProto.STRING, [], [b"!"])),
    helper.make_node("StringConcat", ["s", "bang"], ["s_marked"]),
]
graph = helper.make_graph(
    nodes,
    "veil_more_types",
    [io("h", TensorProto.FLOAT16), io("b", TensorProto.BFLOAT16), io("s", TensorProto.STRING)],
    [io("h_plus_one", TensorProto.FLOAT16), io("b_plus_one", TensorProto.BFLOAT16), io("s_marked", TensorProto.STRING)],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], producer_name="veil")
model.ir_version = 9
onnx.checker.check_model(model)
out = sys.argv[1] if len(sys.argv) > 1 else "more_types.onnx"
onnx.save(model, out)
print(f"wrote {out}")
