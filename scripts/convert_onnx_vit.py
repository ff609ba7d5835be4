"""Convert a DINOv2-family ViT backbone exported to ONNX into timm's ``vit_small_patch14_dinov2`` layout.

    .venv/bin/python scripts/convert_onnx_vit.py MODEL.onnx OUT_DIR [--sizes 224 518 112] [--tolerance 1e-4]

writes ``OUT_DIR/model.safetensors`` (a timm state dict that loads with ``strict=True``) and ``OUT_DIR/config.json``
(a timm Hub config: ``POST /v1/ancestries`` with ``config`` then ``file`` registers the pair), then prints the
file's sha256. Before writing, it checks itself: onnxruntime runs the graph cut at the backbone's final LayerNorm,
timm runs the converted model on the same seeded inputs, and the largest difference of the tokens must stay
within ``--tolerance`` of their largest magnitude, or nothing is written and the exit status is 1.

Tensors are found by the graph's structure, never by their names (exporters name initializers ``onnx::MatMul_1966``
and fold identical ones into one):

1. patch embedding: the one Conv the image reaches with kernel = stride -> ``patch_embed.proj``;
2. class token: the [1, 1, D] constant concatenated in front of the patch tokens -> ``cls_token``;
3. position embedding: what is added to [class; patches], either one [1, 1 + N, D] constant or a class position
   [1, 1, D] concatenated with a patch grid [1, N, D] that the graph resizes to the input's grid (as Hugging Face's
   DINOv2 does when traced) -> ``pos_embed`` as stored, so ``img_size`` is the stored grid times the patch;
4. each block, following the residual stream: LayerNorm -> ``norm1``; the MatMuls reading it, one fused [D, 3D] or
   three [D, D] -> ``attn.qkv`` (q|k|v, each told apart by where it lands: left or right of the score MatMul, or
   right of the MatMul after the Softmax); the MatMul after attention -> ``attn.proj``; a Mul by a [D] constant ->
   ``ls1.gamma``; the Add back into the stream; then LayerNorm, MatMul, exact GELU, MatMul, Mul, Add ->
   ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``;
5. the LayerNorm after the last block -> ``norm``; its output is timm's ``forward_features`` (all tokens). What
   reads it downstream (a classifier, a saliency decoder) is left out and listed.

A MatMul's constant operand is [in, out] (the exporter folds ``nn.Linear``'s transpose) and is transposed back; a
MatMul reading ``Transpose(W)`` takes ``W`` as it is. Anything else is refused with a :class:`GraphError` naming
the node and what was expected. What the structure does not pin down (the attention scale, the exact GELU
constants) is what the numerical check is for.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: timm's DINOv2 constructor; the sizes found in the graph are given as model_args, so it builds any width/depth.
ARCHITECTURE = "vit_small_patch14_dinov2"
#: timm's DINOv2 models initialise layer scale at 1e-5 (the weights carry the trained values).
INIT_VALUES = 1e-5
#: Ops that only move, rename or scale a tensor on its way from q/k/v to attention.
PASS_THROUGH = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Identity", "Mul", "Div"})
#: The ops of an exact (erf) GELU as exporters write it, x * 0.5 * (1 + erf(x / sqrt 2)).
GELU_ERF_OPS = frozenset({"Div", "Erf", "Add", "Mul"})
DEFAULT_TOLERANCE = 1e-4


class GraphError(ValueError):
    """The graph is not a ViT backbone this converter understands; the message names what was not understood."""


class CheckError(RuntimeError):
    """The converted model's outputs differ from onnxruntime's beyond the tolerance."""


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


class Graph:
    """An ONNX graph indexed both ways: who produces a value, who reads it, which values are constants."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for value in node.output:
                self.producer[value] = node
            for value in node.input:
                if value:
                    self.consumers[value].append(node)
        inputs = [i for i in model.graph.input if i.name not in self.initializers]
        if len(inputs) != 1:
            raise GraphError(f"expected one image input, found {[i.name for i in inputs]}")
        self.input = inputs[0]
        self._arrays: dict[str, np.ndarray] = {}  # each weight is looked at several times while matching

    def const(self, value: str) -> np.ndarray | None:
        """The value as an array when it is an initializer or a Constant (through Identity), else None. Treat the
        array as read-only: it is cached."""
        node = self.producer.get(value)
        while node is not None and node.op_type == "Identity":
            value = node.input[0]
            node = self.producer.get(value)
        if value in self._arrays:
            return self._arrays[value]
        if value in self.initializers:
            found = numpy_helper.to_array(self.initializers[value])
        elif node is not None and node.op_type == "Constant":
            found = helper.get_attribute_value(node.attribute[0])
            found = numpy_helper.to_array(found) if isinstance(found, onnx.TensorProto) else found
        else:
            return None
        self._arrays[value] = np.array(found)
        return self._arrays[value]

    def readers(self, value: str) -> list[onnx.NodeProto]:
        """The nodes reading ``value``'s data (a Shape node reads only its shape)."""
        return [n for n in self.consumers.get(value, []) if n.op_type != "Shape"]

    def next(self, value: str, op_type: str, where: str) -> onnx.NodeProto:
        """The one ``op_type`` node reading ``value``."""
        found = [n for n in self.readers(value) if n.op_type == op_type]
        if len(found) != 1:
            after = self.producer[value].name if value in self.producer else value
            raise GraphError(f"{where}: expected one {op_type} after {after!r}, found "
                             f"{sorted(n.op_type for n in self.readers(value))}")
        return found[0]

    def other(self, node: onnx.NodeProto, value: str) -> str:
        """The other operand of a binary node, one of whose operands is ``value``."""
        first, second = node.input[0], node.input[1]
        return second if first == value else first

    def scalar_const(self, node: onnx.NodeProto, value: str, where: str) -> float:
        found = self.const(self.other(node, value))
        if found is None or found.size != 1:
            raise GraphError(f"{where}: {node.op_type} {node.name!r} has no constant scalar operand")
        return float(found.reshape(()))


@dataclass
class Linear:
    weight: np.ndarray  # [out, in], as nn.Linear holds it
    bias: np.ndarray | None
    output: str


@dataclass
class Norm:
    weight: np.ndarray
    bias: np.ndarray
    eps: float
    output: str


@dataclass
class Converted:
    """A timm state dict and how to build its model, plus what the check needs to know about the graph."""

    state: dict[str, torch.Tensor]
    architecture: str
    model_args: dict[str, Any]
    input_name: str
    features: str  # the value of the backbone's final LayerNorm, all tokens
    export_size: int | None  # the image side the graph was exported for, when it is fixed
    pos_resize: dict[str, Any] | None  # the Resize the graph applies to the stored patch positions
    downstream: Counter = field(default_factory=Counter)  # ops reading the backbone's output, left out

    @property
    def native_size(self) -> int:
        return int(self.model_args["img_size"])


def _matmul_weight(g: Graph, node: onnx.NodeProto) -> np.ndarray | None:
    """A MatMul's constant right operand as [out, in], or None when it multiplies two computed values."""
    weight = g.const(node.input[1])
    if weight is not None:
        return weight.T if weight.ndim == 2 else None
    producer = g.producer.get(node.input[1])
    if producer is not None and producer.op_type == "Transpose" and list(_attr(producer, "perm", [1, 0])) == [1, 0]:
        weight = g.const(producer.input[0])
        return weight if weight is not None and weight.ndim == 2 else None
    return None


def _weighted_matmuls(g: Graph, value: str) -> list[onnx.NodeProto]:
    return [n for n in g.readers(value)
            if n.op_type == "MatMul" and n.input[0] == value and _matmul_weight(g, n) is not None]


def _linear(g: Graph, node: onnx.NodeProto) -> Linear:
    weight = _matmul_weight(g, node)
    assert weight is not None
    out = node.output[0]
    readers = g.readers(out)
    if len(readers) == 1 and readers[0].op_type == "Add":
        bias = g.const(g.other(readers[0], out))
        if bias is not None and bias.shape == (weight.shape[0],):
            return Linear(weight, bias, readers[0].output[0])
    return Linear(weight, None, out)


def _reduce_axes(g: Graph, node: onnx.NodeProto) -> list[int]:
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1:  # opset 18 moved the axes to an input
        found = g.const(node.input[1])
        axes = None if found is None else found.reshape(-1).tolist()
    return list(axes or [])


def _layer_norm(g: Graph, x: str, where: str) -> Norm:
    """A LayerNorm over the last axis reading ``x``: one LayerNormalization node (opset 17+) or the decomposition
    older opsets give, mean -> centre -> square -> mean -> + eps -> sqrt -> divide -> * weight -> + bias."""
    fused = [n for n in g.readers(x) if n.op_type == "LayerNormalization" and n.input[0] == x]
    if fused:
        node = fused[0]
        weight = g.const(node.input[1])
        bias = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if _attr(node, "axis", -1) != -1 or weight is None or bias is None:
            raise GraphError(f"{where}: LayerNormalization {node.name!r} is not over the last axis with a constant "
                             "weight and bias")
        return Norm(weight, bias, float(_attr(node, "epsilon", 1e-5)), node.output[0])
    mean = g.next(x, "ReduceMean", where)
    centre = g.next(mean.output[0], "Sub", where)
    square = g.next(centre.output[0], "Pow", where)
    variance = g.next(square.output[0], "ReduceMean", where)
    plus_eps = g.next(variance.output[0], "Add", where)
    root = g.next(plus_eps.output[0], "Sqrt", where)
    divide = g.next(root.output[0], "Div", where)
    scale = g.next(divide.output[0], "Mul", where)
    shift = g.next(scale.output[0], "Add", where)
    weight, bias = g.const(g.other(scale, divide.output[0])), g.const(g.other(shift, scale.output[0]))
    if (list(centre.input) != [x, mean.output[0]] or list(divide.input) != [centre.output[0], root.output[0]]
            or g.scalar_const(square, centre.output[0], where) != 2.0
            or any(_reduce_axes(g, n) not in ([-1], [2]) for n in (mean, variance))):
        raise GraphError(f"{where}: the nodes from {mean.name!r} to {divide.name!r} do not normalise the last axis")
    if weight is None or bias is None:
        raise GraphError(f"{where}: {scale.name!r} / {shift.name!r} do not apply a constant weight and bias")
    return Norm(weight, bias, g.scalar_const(plus_eps, variance.output[0], where), shift.output[0])


def _shape_entries(g: Graph, value: str, where: str) -> list[int | None]:
    """A Reshape's target shape, None where an entry is computed (the batch and token counts)."""
    found = g.const(value)
    if found is not None:
        return [int(v) for v in found.reshape(-1)]
    node = g.producer.get(value)
    if node is None or node.op_type != "Concat":
        raise GraphError(f"{where}: the shape given to a Reshape ({value!r}) is neither constant nor a Concat")
    entries: list[int | None] = []
    for part in node.input:
        found = g.const(part)
        if found is not None:
            entries += [int(v) for v in found.reshape(-1)]
        elif g.producer.get(part) is not None and g.producer[part].op_type == "Unsqueeze":
            entries.append(None)  # one computed size
        else:
            raise GraphError(f"{where}: cannot read the shape built by {node.name!r}")
    return entries


def _follow(g: Graph, value: str, where: str) -> tuple[onnx.NodeProto, int, list[onnx.NodeProto]]:
    """Walk from ``value`` through reshapes, transposes and scalings to the first MatMul of two computed values:
    (that MatMul, which operand the walk arrives at, the nodes passed)."""
    passed: list[onnx.NodeProto] = []
    while True:
        readers = g.readers(value)
        if len(readers) != 1:
            raise GraphError(f"{where}: expected one reader of {value!r}, found {sorted(n.op_type for n in readers)}")
        node = readers[0]
        if node.op_type == "MatMul" and _matmul_weight(g, node) is None:
            return node, list(node.input).index(value), passed
        if node.op_type not in PASS_THROUGH or len(passed) > 16:
            raise GraphError(f"{where}: {node.op_type} {node.name!r} between a projection and attention is not "
                             "understood")
        passed.append(node)
        value = node.output[0]


def _reaches_softmax(g: Graph, value: str) -> onnx.NodeProto | None:
    for _ in range(8):
        readers = g.readers(value)
        if len(readers) != 1:
            return None
        if readers[0].op_type == "Softmax":
            return readers[0]
        if readers[0].op_type not in PASS_THROUGH:
            return None
        value = readers[0].output[0]
    return None


def _from_softmax(g: Graph, value: str) -> onnx.NodeProto | None:
    for _ in range(8):
        node = g.producer.get(value)
        if node is None:
            return None
        if node.op_type == "Softmax":
            return node
        if node.op_type not in PASS_THROUGH:
            return None
        value = node.input[0]
    return None


def _role(g: Graph, matmul: onnx.NodeProto, operand: int, where: str) -> str:
    """q, k or v: the left and right of the MatMul whose scores go to a Softmax, or the right of the MatMul the
    Softmax's probabilities go to."""
    if _reaches_softmax(g, matmul.output[0]) is not None:
        return "qk"[operand]
    if operand == 1 and _from_softmax(g, matmul.input[0]) is not None:
        return "v"
    raise GraphError(f"{where}: MatMul {matmul.name!r} is neither the attention scores nor their weighted sum")


def _heads(g: Graph, passed: list[onnx.NodeProto], dim: int, where: str) -> int:
    reshapes = [n for n in passed if n.op_type == "Reshape"]
    if not reshapes:
        raise GraphError(f"{where}: no Reshape splits the heads")
    entries = _shape_entries(g, reshapes[0].input[1], where)
    heads, head_dim = (entries[-2], entries[-1]) if len(entries) >= 4 else (None, None)
    if heads in (None, -1) and head_dim and head_dim > 0 and dim % head_dim == 0:
        heads = dim // head_dim  # [batch, tokens, -1, head_dim]
    if heads is None or heads <= 0 or dim % heads or head_dim not in (dim // heads, -1, None):
        raise GraphError(f"{where}: Reshape {reshapes[0].name!r} to {entries} does not split width {dim} into heads")
    return heads


def _fused_chunks(g: Graph, value: str, where: str) -> tuple[list[str], list[onnx.NodeProto]]:
    """The q|k|v parts of a fused projection, in the order of its output rows: the values the graph splits them
    into along the axis of size 3 its Reshape makes (timm's [B, N, 3, heads, head_dim])."""
    passed: list[onnx.NodeProto] = []
    axis: int | None = None
    entries: list[int | None] = []
    rank = 0
    while True:
        readers = g.readers(value)
        if len(readers) == 1 and readers[0].op_type in ("Reshape", "Transpose"):
            node = readers[0]
            if node.op_type == "Reshape":
                entries = _shape_entries(g, node.input[1], where)
                rank = len(entries)
                axis = entries.index(3) if 3 in entries else None
            elif axis is not None:
                axis = list(_attr(node, "perm")).index(axis)
            passed.append(node)
            value = node.output[0]
            continue
        break
    if axis is None or entries.index(3) != rank - 3:
        # only [..., 3, heads, head_dim] makes the output rows q, then k, then v, each a block of D rows
        raise GraphError(f"{where}: the fused q|k|v projection is not reshaped to [..., 3, heads, head_dim]")
    if len(readers) == 1 and readers[0].op_type == "Split" and len(readers[0].output) == 3 \
            and _attr(readers[0], "axis", 0) % rank == axis:
        return list(readers[0].output), passed
    gathers = {}
    for node in readers:
        index = g.const(node.input[1]) if node.op_type == "Gather" else None
        if index is None or index.size != 1 or _attr(node, "axis", 0) % rank != axis:
            gathers = {}
            break
        gathers[int(index.reshape(())) % 3] = node.output[0]
    if sorted(gathers) == [0, 1, 2]:
        return [gathers[i] for i in range(3)], passed
    raise GraphError(f"{where}: the fused q|k|v projection is split by {sorted(n.op_type for n in readers)}, not "
                     "understood")


def _attention(g: Graph, normed: str, dim: int, where: str) -> tuple[dict[str, np.ndarray], str, int]:
    """(q|k|v and projection tensors in timm's names, the attention's output value, the number of heads)."""
    linears = [_linear(g, n) for n in _weighted_matmuls(g, normed)]
    shapes = [tuple(lin.weight.shape) for lin in linears]
    if shapes == [(3 * dim, dim)]:
        chunks, before = _fused_chunks(g, linears[0].output, where)
        sources = [(chunk, before) for chunk in chunks]
    elif shapes == [(dim, dim)] * 3:
        sources = [(lin.output, []) for lin in linears]
    else:
        raise GraphError(f"{where}: expected one [{dim}, {3 * dim}] (fused q|k|v) or three [{dim}, {dim}] MatMuls "
                         f"reading the norm, found weights {[list(s[::-1]) for s in shapes]}")
    landing: dict[str, tuple[int, onnx.NodeProto]] = {}  # role -> (source index, the MatMul it reaches)
    heads = set()
    for index, (value, before) in enumerate(sources):
        matmul, operand, passed = _follow(g, value, where)
        landing[_role(g, matmul, operand, where)] = (index, matmul)
        heads.add(_heads(g, before + passed, dim, where))
    if sorted(landing) != ["k", "q", "v"] or landing["q"][1] is not landing["k"][1] or len(heads) != 1:
        raise GraphError(f"{where}: the projections do not make one query, key and value of one head count")
    order = [landing[r][0] for r in "qkv"]
    if len(linears) == 1:
        rows = [slice(i * dim, (i + 1) * dim) for i in order]
        weight = np.concatenate([linears[0].weight[r] for r in rows])
        bias = None if linears[0].bias is None else np.concatenate([linears[0].bias[r] for r in rows])
    else:
        weight = np.concatenate([linears[i].weight for i in order])
        biases = [linears[i].bias for i in order]
        if any(b is None for b in biases) != all(b is None for b in biases):
            raise GraphError(f"{where}: only some of query/key/value have a bias")
        bias = None if biases[0] is None else np.concatenate(biases)  # type: ignore[arg-type]
    out, projection = landing["v"][1].output[0], None
    for _ in range(4):  # transpose back and merge the heads, then the output projection
        readers = g.readers(out)
        if len(readers) != 1:
            break
        if readers[0].op_type == "MatMul" and _matmul_weight(g, readers[0]) is not None:
            projection = _linear(g, readers[0])
            break
        if readers[0].op_type not in ("Transpose", "Reshape"):
            break
        out = readers[0].output[0]
    if projection is None or projection.weight.shape != (dim, dim) or projection.bias is None:
        raise GraphError(f"{where}: no [{dim}, {dim}] output projection with a bias after the attention")
    tensors = {"attn.qkv.weight": weight, "attn.proj.weight": projection.weight, "attn.proj.bias": projection.bias}
    if bias is not None:
        tensors["attn.qkv.bias"] = bias
    return tensors, projection.output, heads.pop()


def _residual(g: Graph, branch: str, stream: str, dim: int, where: str) -> tuple[np.ndarray | None, str]:
    """(the layer scale, if the branch is multiplied by a [D] constant, the stream after the branch is added)."""
    gamma = None
    readers = g.readers(branch)
    if len(readers) == 1 and readers[0].op_type == "Mul":
        gamma = g.const(g.other(readers[0], branch))
        if gamma is None or gamma.shape != (dim,):
            raise GraphError(f"{where}: Mul {readers[0].name!r} is not a layer scale by a [{dim}] constant")
        branch = readers[0].output[0]
        readers = g.readers(branch)
    if len(readers) != 1 or readers[0].op_type != "Add" or g.other(readers[0], branch) != stream:
        raise GraphError(f"{where}: the branch ending at {branch!r} is not added back to the block's input")
    return gamma, readers[0].output[0]


def _mlp(g: Graph, normed: str, dim: int, where: str) -> tuple[dict[str, np.ndarray], str]:
    matmuls = _weighted_matmuls(g, normed)
    if len(matmuls) != 1:
        raise GraphError(f"{where}: expected one MatMul reading norm2, found {len(matmuls)}")
    fc1 = _linear(g, matmuls[0])
    seen: list[onnx.NodeProto] = []
    frontier, ends = [fc1.output], []
    while frontier:  # the activation, up to the MatMul it feeds
        for node in g.readers(frontier.pop()):
            if node.op_type == "MatMul":
                ends.append(node)
            elif len(seen) > 16:
                raise GraphError(f"{where}: the MLP activation after {matmuls[0].name!r} never reaches a MatMul")
            elif all(node is not n for n in seen):
                seen.append(node)
                frontier.append(node.output[0])
    ops = {n.op_type for n in seen}
    exact = (ops <= GELU_ERF_OPS and "Erf" in ops) or (
        ops == {"Gelu"} and _attr(seen[0], "approximate", "none") == "none")
    if not exact:
        raise GraphError(f"{where}: the MLP activation is made of {sorted(ops)}, not an exact (erf) GELU")
    if len({id(n) for n in ends}) != 1 or _matmul_weight(g, ends[0]) is None:
        raise GraphError(f"{where}: the MLP activation does not feed one MatMul by a constant")
    fc2 = _linear(g, ends[0])
    hidden = fc1.weight.shape[0]
    if fc1.weight.shape != (hidden, dim) or fc2.weight.shape != (dim, hidden) or fc1.bias is None or fc2.bias is None:
        raise GraphError(f"{where}: the MLP's MatMuls are {fc1.weight.shape[::-1]} and {fc2.weight.shape[::-1]} "
                         "with biases, expected [D, hidden] and [hidden, D]")
    return {"mlp.fc1.weight": fc1.weight, "mlp.fc1.bias": fc1.bias, "mlp.fc2.weight": fc2.weight,
            "mlp.fc2.bias": fc2.bias}, fc2.output


def _block(g: Graph, stream: str, norm1: Norm, dim: int, where: str) -> tuple[dict[str, np.ndarray], str, int]:
    tensors = {"norm1.weight": norm1.weight, "norm1.bias": norm1.bias}
    attention, branch, heads = _attention(g, norm1.output, dim, f"{where} attention")
    tensors.update(attention)
    gamma1, middle = _residual(g, branch, stream, dim, f"{where} attention")
    norm2 = _layer_norm(g, middle, f"{where} norm2")
    if norm2.eps != norm1.eps:
        raise GraphError(f"{where}: norm2's eps {norm2.eps} differs from norm1's {norm1.eps}")
    mlp, branch = _mlp(g, norm2.output, dim, f"{where} MLP")
    gamma2, out = _residual(g, branch, middle, dim, f"{where} MLP")
    if (gamma1 is None) != (gamma2 is None):
        raise GraphError(f"{where}: layer scale on one branch only")
    tensors.update({"norm2.weight": norm2.weight, "norm2.bias": norm2.bias, **mlp})
    if gamma1 is not None:
        tensors.update({"ls1.gamma": gamma1, "ls2.gamma": gamma2})
    return tensors, out, heads


def _through(g: Graph, value: str, ops: Iterable[str]) -> str:
    """Back from ``value`` through the producers of the given ops (first operand each)."""
    ops = set(ops)
    while (node := g.producer.get(value)) is not None and node.op_type in ops:
        value = node.input[0]
    return value


def _cone(g: Graph, value: str, through_shapes: bool) -> list[onnx.NodeProto]:
    """The nodes ``value`` is computed from; a Shape node's input is followed only with ``through_shapes``."""
    seen: dict[int, onnx.NodeProto] = {}
    stack = [value]
    while stack:
        node = g.producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        if node.op_type != "Shape" or through_shapes:
            stack += [v for v in node.input if v]
    return list(seen.values())


def _positions(g: Graph, value: str, dim: int) -> tuple[np.ndarray, dict[str, Any] | None]:
    """(pos_embed as stored, [1, 1 + N, D]; the Resize the graph applies to its patch grid, if any)."""
    where = "position embedding"
    stored = g.const(value)
    if stored is not None:
        if stored.ndim != 3 or stored.shape[0] != 1 or stored.shape[2] != dim:
            raise GraphError(f"{where}: the constant added to the tokens is {list(stored.shape)}, not "
                             f"[1, 1 + N, {dim}]")
        return stored, None
    node = g.producer.get(value)
    first = g.const(node.input[0]) if node is not None and node.op_type == "Concat" else None
    if first is None or _attr(node, "axis") not in (1, -2) or len(node.input) != 2 or first.shape != (1, 1, dim):
        raise GraphError(f"{where}: what is added to the tokens is neither a constant nor a class position "
                         f"concatenated with the patch positions (found {node.op_type if node else value!r})")
    cone = _cone(g, node.input[1], through_shapes=False)
    grids = [a for a in (g.const(v) for n in cone for v in n.input if v) if a is not None
             and a.ndim == 3 and a.shape[2] == dim and a.dtype.kind == "f"]
    resizes = [n for n in cone if n.op_type == "Resize"]
    side = math.isqrt(grids[0].shape[1]) if len(grids) == 1 else 0
    if len(grids) != 1 or side * side != grids[0].shape[1] or len(resizes) != 1:
        raise GraphError(f"{where}: expected one square patch grid [1, N, {dim}] resized once, found "
                         f"{[list(a.shape) for a in grids]} and {len(resizes)} Resize")
    resize = resizes[0]
    sizes_given = len(resize.input) > 3 and bool(resize.input[3])
    how = {"mode": _attr(resize, "mode", "nearest"), "sizes": sizes_given,
           "coordinate_transformation_mode": _attr(resize, "coordinate_transformation_mode", "half_pixel"),
           "cubic_coeff_a": float(_attr(resize, "cubic_coeff_a", -0.75)),
           "exclude_outside": int(_attr(resize, "exclude_outside", 0)), "antialias": int(_attr(resize, "antialias", 0))}
    return np.concatenate([first, grids[0]], axis=1), how


def _embeddings(g: Graph) -> tuple[dict[str, np.ndarray], str, int, dict[str, Any] | None]:
    """(patch embedding, class token and positions; the stream entering block 0; the patch size; the positions'
    Resize)."""
    image = g.input.name
    convs = [n for n in g.nodes if n.op_type == "Conv" and _through(g, n.input[0], ("Cast", "Identity")) == image]
    if len(convs) != 1:
        raise GraphError(f"patch embedding: expected one Conv reading the image, found {len(convs)}")
    conv = convs[0]
    weight = g.const(conv.input[1])
    bias = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    kernel, strides = list(_attr(conv, "kernel_shape", [])), list(_attr(conv, "strides", [1, 1]))
    if (weight is None or bias is None or weight.ndim != 4 or kernel != strides or len(set(kernel)) != 1
            or any(_attr(conv, "pads", [0, 0, 0, 0])) or _attr(conv, "group", 1) != 1):
        raise GraphError(f"patch embedding: Conv {conv.name!r} is not a square patchify (kernel = stride, no "
                         "padding, constant weight and bias)")
    dim = weight.shape[0]
    where = "patch embedding"
    flat = g.next(conv.output[0], "Reshape", where)
    tokens = g.next(flat.output[0], "Transpose", where)
    if list(_attr(tokens, "perm", [])) != [0, 2, 1]:
        raise GraphError(f"{where}: Transpose {tokens.name!r} does not make [batch, patches, width]")
    where = "class token"
    concat = g.next(tokens.output[0], "Concat", where)
    cls = g.const(_through(g, concat.input[0], ("Expand", "Tile", "Cast", "Identity")))
    if (len(concat.input) != 2 or concat.input[1] != tokens.output[0] or _attr(concat, "axis") not in (1, -2)
            or cls is None or cls.shape != (1, 1, dim)):
        raise GraphError(f"{where}: Concat {concat.name!r} does not put one [1, 1, {dim}] token before the patches "
                         "(register tokens and pooled models are not this converter's)")
    add = g.next(concat.output[0], "Add", "position embedding")
    pos_embed, resize = _positions(g, g.other(add, concat.output[0]), dim)
    tensors = {"patch_embed.proj.weight": weight, "patch_embed.proj.bias": bias, "cls_token": cls,
               "pos_embed": pos_embed}
    return tensors, add.output[0], int(kernel[0]), resize


def convert(model: onnx.ModelProto) -> Converted:
    """Map an exported DINOv2-family backbone's tensors onto timm's names by following the graph (see the module
    docstring). Raises :class:`GraphError` naming what was not understood."""
    from engine.ancestry import AncestryError, check_weights, inspect_architecture

    g = Graph(model)
    state, stream, patch, resize = _embeddings(g)
    dim = state["cls_token"].shape[-1]
    blocks: list[tuple[dict[str, np.ndarray], int]] = []
    eps: set[float] = set()
    while True:
        where = f"the LayerNorm after block {len(blocks) - 1}" if blocks else "the LayerNorm after the embeddings"
        norm = _layer_norm(g, stream, where)
        eps.add(float(np.float32(norm.eps)))
        if sum(_matmul_weight(g, n).shape[0] for n in _weighted_matmuls(g, norm.output)) != 3 * dim:  # type: ignore
            break  # not read by q|k|v: the final norm
        block, stream, heads = _block(g, stream, norm, dim, f"block {len(blocks)}")
        blocks.append((block, heads))
    if not blocks:
        raise GraphError("no transformer block reads the embeddings")
    if eps != {float(np.float32(1e-6))}:
        raise GraphError(f"the LayerNorms' eps are {sorted(eps)}; timm's DINOv2 uses 1e-6 throughout")
    state.update({"norm.weight": norm.weight, "norm.bias": norm.bias})
    first = blocks[0][0]
    for i, (block, heads) in enumerate(blocks):
        if {k: v.shape for k, v in block.items()} != {k: v.shape for k, v in first.items()} or heads != blocks[0][1]:
            raise GraphError(f"block {i} differs from block 0 in its tensors ({sorted(block)}) or heads ({heads}): "
                             "timm's ViT repeats one block")
        state.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    hidden = first["mlp.fc1.weight"].shape[0]
    model_args = {"img_size": grid * patch, "patch_size": patch,
                  "in_chans": int(state["patch_embed.proj.weight"].shape[1]), "embed_dim": int(dim),
                  "depth": len(blocks), "num_heads": int(blocks[0][1]),
                  "mlp_ratio": hidden / dim, "init_values": INIT_VALUES if "ls1.gamma" in first else None,
                  "qkv_bias": "attn.qkv.bias" in first, "num_classes": 0}
    dims = [d.dim_value if d.HasField("dim_value") else None for d in g.input.type.tensor_type.shape.dim]
    export_size = dims[2] if len(dims) == 4 and dims[2] and dims[2] == dims[3] else None
    if resize is None and export_size not in (None, grid * patch):
        raise GraphError(f"the graph adds {grid}x{grid} positions to a {export_size}-pixel input without resizing "
                         "them")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    try:  # the strict load, on shapes only: every key timm's model has, nothing else, each of its shape
        _, expected, _ = inspect_architecture(ARCHITECTURE, model_args)
        check_weights(tensors, expected, ARCHITECTURE)
    except AncestryError as exc:
        raise GraphError(f"what the graph holds does not make timm's model: {exc}") from exc
    backbone = {id(n) for n in _cone(g, norm.output, through_shapes=True)}
    downstream = Counter(n.op_type for n in g.nodes if id(n) not in backbone and n.op_type != "Constant")
    return Converted(
        state=tensors, architecture=ARCHITECTURE, model_args=model_args, input_name=g.input.name, features=norm.output,
        export_size=export_size, pos_resize=resize, downstream=downstream)


def backbone_graph(model: onnx.ModelProto, converted: Converted) -> onnx.ModelProto:
    """The graph cut at the backbone's final LayerNorm (its only output), whatever read it downstream dropped; the
    image's height and width left free when the graph resizes its positions, so other sizes can be checked."""
    g = Graph(model)
    keep = {id(n) for n in _cone(g, converted.features, through_shapes=True)}
    nodes = [n for n in g.nodes if id(n) in keep]
    used = {v for n in nodes for v in n.input}
    image = onnx.ValueInfoProto()
    image.CopyFrom(g.input)
    if converted.pos_resize is not None:
        for axis, name in ((2, "height"), (3, "width")):
            image.type.tensor_type.shape.dim[axis].Clear()
            image.type.tensor_type.shape.dim[axis].dim_param = name
    graph = helper.make_graph(nodes, "backbone", [image],
                              [helper.make_tensor_value_info(converted.features, onnx.TensorProto.FLOAT, None)],
                              initializer=[t for t in model.graph.initializer if t.name in used])
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def positions_for(converted: Converted, img_size: int, how: str = "graph") -> torch.Tensor:
    """``pos_embed`` for ``img_size``: the stored grid when it fits, else resampled as the graph does (``graph``:
    bicubic on half-pixel centres, no antialiasing, ONNX's Resize cubic a = -0.75, which is PyTorch's bicubic) or as
    timm does for another image size (``timm``: its ``resample_abs_pos_embed``, antialiased, what the service's
    img_size handling and timm's dynamic_img_size use)."""
    from timm.layers import resample_abs_pos_embed

    pos = converted.state["pos_embed"]
    grid = img_size // converted.model_args["patch_size"]
    if grid * grid == pos.shape[1] - 1:
        return pos
    if how == "timm":
        return resample_abs_pos_embed(pos, new_size=[grid, grid], num_prefix_tokens=1)
    resize = converted.pos_resize or {}
    reproducible = (resize.get("mode") == "cubic" and resize.get("sizes") and resize.get("cubic_coeff_a") == -0.75
                    and resize.get("coordinate_transformation_mode") in ("half_pixel", "pytorch_half_pixel")
                    and not resize.get("exclude_outside") and not resize.get("antialias"))
    if not reproducible:
        raise CheckError(f"cannot check at {img_size} px: the graph resizes its positions with {resize or 'nothing'}, "
                         "which this check does not reproduce")
    side = math.isqrt(pos.shape[1] - 1)
    patches = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def timm_model(converted: Converted, img_size: int | None = None, positions: str = "graph") -> torch.nn.Module:
    """The converted model, built by timm and loaded strictly; at ``img_size`` (default: the stored grid's) with the
    positions resampled as :func:`positions_for` says."""
    import timm

    img_size = img_size or converted.native_size
    model = timm.create_model(converted.architecture, pretrained=False,
                              **{**converted.model_args, "img_size": img_size})
    state = {**converted.state, "pos_embed": positions_for(converted, img_size, positions)}
    model.load_state_dict(state, strict=True)
    return model.eval()


@dataclass
class Comparison:
    """timm's ``forward_features`` (all tokens after the final norm) against the graph's final-norm output."""

    img_size: int
    max_abs: float  # all tokens
    relative: float  # max_abs over the largest magnitude onnxruntime gave
    class_token_max_abs: float  # the pooled output timm's model(x) returns with num_classes=0
    timm_resample_max_abs: float | None  # at another size: timm's own position resampling instead of the graph's


def check(model: onnx.ModelProto, converted: Converted, sizes: Iterable[int], samples: int = 2, seed: int = 0,
          tolerance: float = DEFAULT_TOLERANCE) -> list[Comparison]:
    """Run onnxruntime and timm on the same seeded inputs (standard normal, as normalized images are) at each size;
    raise :class:`CheckError` when a relative difference exceeds ``tolerance``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(backbone_graph(model, converted).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    results = []
    for size in sizes:
        x = torch.randn(samples, converted.model_args["in_chans"], size, size, generator=generator)
        (reference,) = session.run([converted.features], {converted.input_name: x.numpy()})
        reference = torch.from_numpy(reference)
        with torch.inference_mode():
            ours = timm_model(converted, size).forward_features(x)
            theirs = None
            if size != converted.native_size:
                theirs = timm_model(converted, size, "timm").forward_features(x)
        if ours.shape != reference.shape:
            raise CheckError(f"at {size} px timm gives tokens {list(ours.shape)}, onnxruntime {list(reference.shape)}")
        diff = (ours - reference).abs()
        results.append(Comparison(
            img_size=size, max_abs=float(diff.max()), relative=float(diff.max() / reference.abs().max()),
            class_token_max_abs=float(diff[:, 0].max()),
            timm_resample_max_abs=None if theirs is None else float((theirs - reference).abs().max())))
    failed = [r for r in results if not r.relative <= tolerance]
    if failed:
        raise CheckError("timm's outputs differ from onnxruntime's beyond the tolerance "
                         f"{tolerance:g}: " + "; ".join(f"{r.img_size} px: max |diff| {r.max_abs:.3g} "
                                                        f"(relative {r.relative:.3g})" for r in failed))
    return results


def default_sizes(converted: Converted) -> list[int]:
    """The size the graph was exported for and, when it resizes its positions, the stored grid's."""
    sizes = {converted.export_size or converted.native_size}
    if converted.pos_resize is not None:
        sizes.add(converted.native_size)
    return sorted(sizes)


def write(converted: Converted, out_dir: Path, source_sha256: str) -> str:
    """``model.safetensors`` and ``config.json`` (a timm Hub config, ImageNet normalization as DINOv2 was trained
    with); returns the safetensors file's sha256. The pair is read back as the service's upload reads it."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from engine.ancestry import inspect_architecture
    from engine.artifacts import descendant_config, write_safetensors
    from engine.methods.base import Descendant
    from engine.upload import read_upload

    spec, _, preprocessing = inspect_architecture(converted.architecture, converted.model_args)
    preprocessing = {**preprocessing, "mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD)}
    config = descendant_config(Descendant({}, converted.architecture, converted.model_args), spec, preprocessing)
    config["pretrained_cfg"]["tag"] = "onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = write_safetensors(converted.state, {"converted_from": "onnx", "onnx_sha256": source_sha256},
                               out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    read_upload(out_dir / "model.safetensors", "", {}, hf_config=config)
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", type=Path, help="the exported backbone (.onnx)")
    parser.add_argument("out_dir", type=Path, help="where model.safetensors and config.json go")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="image sides to check at (default: the export's and the stored grid's)")
    parser.add_argument("--samples", type=int, default=2, help="seeded inputs per size")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest allowed max |diff| over the largest token magnitude")
    args = parser.parse_args(argv)
    from engine.artifacts import sha256_file

    started = time.perf_counter()
    model = onnx.load(str(args.onnx))
    source_sha256 = sha256_file(args.onnx)
    try:
        converted = convert(model)
    except GraphError as exc:
        print(f"not converted: {exc}", file=sys.stderr)
        return 1
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.input, *model.graph.output)}
    print(f"{args.onnx.name} (sha256 {source_sha256}): input {converted.input_name!r} "
          f"{shapes[converted.input_name]}, outputs {({o.name: shapes[o.name] for o in model.graph.output})}")
    positions = f"resized by the graph {json.dumps(converted.pos_resize)}" if converted.pos_resize else "as stored"
    print(f"-> {converted.architecture} {json.dumps(converted.model_args)}; positions {positions}")
    print(f"backbone output: {converted.features!r} (all tokens after the final LayerNorm = timm forward_features); "
          f"left out downstream: {dict(converted.downstream) or 'nothing'}")
    try:
        results = check(model, converted, args.sizes or default_sizes(converted), args.samples,
                        tolerance=args.tolerance)
    except CheckError as exc:
        print(f"check FAILED, nothing written: {exc}", file=sys.stderr)
        return 1
    for r in results:
        extra = "" if r.timm_resample_max_abs is None else \
            f"; with timm's own position resampling instead: {r.timm_resample_max_abs:.3g}"
        print(f"check {r.img_size} px, {args.samples} inputs: max |diff| {r.max_abs:.3g} (relative {r.relative:.3g}), "
              f"class token {r.class_token_max_abs:.3g}{extra}")
    digest = write(converted, args.out_dir, source_sha256)
    print(f"wrote {args.out_dir / 'model.safetensors'} and config.json in {time.perf_counter() - started:.1f} s")
    print(f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
