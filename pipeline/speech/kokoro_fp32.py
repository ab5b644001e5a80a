"""kokoro's int8 ONNX file rewritten to float32 (``voicebot models kokoro-fp32 IN OUT``).

kokoro v1.0 is also published dynamically quantised (onnxruntime's ``quantize_dynamic``): weights
stored as int8/uint8, activations quantised at run time. On CPUs with AVX512-VNNI onnxruntime's
ConvInteger kernel with uint8 weights computes wrong values, and the model outputs garbage (peaks
of 1e9 and more) for most sentences; on a CPU the int8 convolutions are slower than float ones
anyway. The int8 file holds every weight, so the float model is recovered exactly up to the
weights' rounding:

- ``x -> DynamicQuantizeLinear -> (xq, xs, xzp)``, ``MatMulInteger(xq, Wq, xzp, wzp) -> Cast ->
  Mul(., xs * ws)`` becomes ``MatMul(x, (Wq - wzp) * ws)``;
- the same around ``ConvInteger``, whose int32 bias (``Floor(b / (xs * ws))``, computed at run
  time) is replaced by the float bias ``b`` itself: ``Conv(x, (Wq - wzp) * ws, b)``;
- ``DynamicQuantizeLSTM`` becomes ``LSTM``, its weights dequantised and transposed from
  ``[dirs, input, 4H]`` to ONNX's ``[dirs, 4H, input]``;
- ``Gather(Tq, i) -> DequantizeLinear(s, zp)`` becomes ``Gather((Tq - zp) * s, i)``.

What the rewrite leaves unused (the quantisation of activations, the bias arithmetic) is removed.
Needs the ``onnx`` package (the ``convert`` extra).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: operators of a quantised graph; none may be left after the rewrite
QUANTIZED_OPS = frozenset(
    {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DequantizeLinear",
     "QuantizeLinear", "QLinearMatMul", "QLinearConv", "MatMulIntegerToFloat"}
)


class ConversionError(ValueError):
    """The file is not a quantised model this rewrite understands (the message says why)."""


@dataclass
class Conversion:
    """What ``convert`` did."""

    src: Path
    dst: Path
    #: rewritten patterns by kind, e.g. ``{"ConvInteger": 87, ...}``
    rewritten: dict[str, int] = field(default_factory=dict)
    nodes_before: int = 0
    nodes_after: int = 0
    bytes_out: int = 0
    seconds: float = 0.0


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise ConversionError(
            "rewriting a kokoro model needs the onnx package: pip install 'voicebot[convert]' "
            "(or `uv sync --extra convert`)"
        ) from None
    return onnx


class _Graph:
    """Producers, consumers and constant values of one ONNX graph."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list] = collections.defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self._values: dict[str, np.ndarray] = {}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output; None if it is computed."""
        if not name:
            return None
        if name not in self._values:
            if name in self.initializers:
                self._values[name] = self._to_array(self.initializers[name])
            else:
                node = self.producer.get(name)
                value = next((a.t for a in node.attribute if a.name == "value"), None) if (
                    node is not None and node.op_type == "Constant") else None
                if value is None:
                    return None
                self._values[name] = self._to_array(value)
        return self._values[name]

    def need_constant(self, name: str, what: str, node) -> np.ndarray:
        value = self.constant(name)
        if value is None:
            raise ConversionError(f"{node.op_type} {node.name!r}: its {what} ({name!r}) is not a constant")
        return value

    def sole_consumer(self, name: str, node, *op_types: str):
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type not in op_types:
            raise ConversionError(
                f"{node.op_type} {node.name!r}: expected {' or '.join(op_types)} to be the only user of "
                f"{name!r}, found {[u.op_type for u in users]}"
            )
        return users[0]

    def made_by(self, name: str, node, *op_types: str):
        prod = self.producer.get(name)
        if prod is None or prod.op_type not in op_types:
            raise ConversionError(
                f"{node.op_type} {node.name!r}: expected {name!r} to come from {' or '.join(op_types)}, "
                f"found {prod.op_type if prod is not None else 'a graph input or initializer'}"
            )
        return prod


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _along(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A scalar as it is; a per-channel vector shaped to broadcast along ``axis`` of an ``ndim`` array."""
    values = np.asarray(values, np.float32)
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _dequantize(q: np.ndarray, zero_point, scale, axis: int) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32, per channel along ``axis`` when they are vectors."""
    zp = 0.0 if zero_point is None else _along(zero_point, axis, q.ndim)
    return ((q.astype(np.float32) - zp) * _along(scale, axis, q.ndim)).astype(np.float32)


@dataclass
class _Rewrite:
    tail: Any  # the node whose outputs the new node produces (it and what only fed it go)
    node: Any | None  # its replacement; None when the output became an initializer
    kind: str


class _Rewriter:
    def __init__(self, model):
        self.model = model
        self.g = _Graph(model.graph)
        #: new float initializers by name (a weight shared by several nodes is dequantised once)
        self.weights: dict[str, np.ndarray] = {}
        self._names = {node.name for node in model.graph.node}

    def name(self, node) -> str:
        """A node name no other node has, after the quantised one it replaces."""
        base = f"{node.name or node.op_type}.f32"
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}.{i}", i + 1
        self._names.add(name)
        return name

    def weight(self, name: str, make) -> str:
        new = f"{name}.f32"
        if new not in self.weights:
            self.weights[new] = make()
        return new

    # -------------------------------------------------------------------- MatMulInteger, ConvInteger
    def integer_op(self, node) -> _Rewrite:
        from onnx import TensorProto, helper

        g = self.g
        xq, wq, _xzp, wzp = (list(node.input) + [""] * 4)[:4]
        dql = g.made_by(xq, node, "DynamicQuantizeLinear")
        x, x_scale = dql.input[0], dql.output[1]
        weights = g.need_constant(wq, "weight", node)
        w_zero = g.constant(wzp) if wzp else None
        if wzp and w_zero is None:
            raise ConversionError(f"{node.op_type} {node.name!r}: its weight zero point is not a constant")

        nxt = g.sole_consumer(node.output[0], node, "Add", "Cast")
        bias = None
        if nxt.op_type == "Add":  # ConvInteger's int32 bias: Reshape(Cast(Floor(Div(b, xs * ws))))
            other = nxt.input[1] if nxt.input[0] == node.output[0] else nxt.input[0]
            bias = self.float_bias(other, node)
            nxt = g.sole_consumer(nxt.output[0], node, "Cast")
        if _attrs(nxt).get("to") != TensorProto.FLOAT:
            raise ConversionError(f"{node.op_type} {node.name!r}: its result is not cast to float")
        mul = g.sole_consumer(nxt.output[0], node, "Mul")
        scale_name = mul.input[1] if mul.input[0] == nxt.output[0] else mul.input[0]
        w_scale = self.weight_scale(scale_name, x_scale, node)

        if node.op_type == "MatMulInteger":
            # B is [..., K, N]: zero points and scales are per column (the last axis)
            wname = self.weight(wq, lambda: _dequantize(weights, w_zero, w_scale, weights.ndim - 1))
            new = helper.make_node("MatMul", [x, wname], [mul.output[0]], name=self.name(node))
        else:
            # W is [M, C/group, k...]: per output channel (axis 0)
            wname = self.weight(wq, lambda: _dequantize(weights, w_zero, w_scale, 0))
            inputs = [x, wname]
            if bias is not None:
                inputs.append(self.weight(bias[0], lambda: bias[1].astype(np.float32).reshape(-1)))
            new = helper.make_node("Conv", inputs, [mul.output[0]], name=self.name(node), **_attrs(node))
        return _Rewrite(mul, new, node.op_type)

    def float_bias(self, name: str, node) -> tuple[str, np.ndarray]:
        """The float bias behind an int32 conv bias computed as ``Floor(b / scale)`` (reshaped, cast)."""
        cur = self.g.made_by(name, node, "Reshape", "Cast", "Floor", "Round", "Div")
        while cur.op_type != "Div":
            cur = self.g.made_by(cur.input[0], node, "Reshape", "Cast", "Floor", "Round", "Div")
        return cur.input[0], self.g.need_constant(cur.input[0], "float bias", node)

    def weight_scale(self, name: str, x_scale: str, node) -> np.ndarray:
        """The output scale is ``Mul(x_scale, w_scale)``: the constant ``w_scale``."""
        mul = self.g.made_by(name, node, "Mul")
        if x_scale not in mul.input:
            raise ConversionError(f"{node.op_type} {node.name!r}: its output scale does not use the input's scale")
        other = mul.input[1] if mul.input[0] == x_scale else mul.input[0]
        return self.g.need_constant(other, "weight scale", node)

    # -------------------------------------------------------------------- DynamicQuantizeLSTM
    def lstm(self, node) -> _Rewrite:
        from onnx import helper

        g = self.g
        x, wq, rq, b, seq, h0, c0, p, ws, wzp, rs, rzp = (list(node.input) + [""] * 12)[:12]
        names = []
        for q_name, s_name, z_name in ((wq, ws, wzp), (rq, rs, rzp)):
            q = g.need_constant(q_name, "weight", node)  # [dirs, input, 4H]
            s = g.need_constant(s_name, "weight scale", node)  # [dirs] or [dirs, 4H]
            z = g.constant(z_name) if z_name else None

            def make(q=q, s=s, z=z):
                dirs = q.shape[0]

                def per_direction(v):  # a scalar, [dirs] or [dirs, 4H] -> broadcastable over [dirs, input, 4H]
                    v = np.asarray(v, np.float32)
                    return v.reshape(()) if v.size == 1 else v.reshape(dirs, 1, -1)

                scale = per_direction(s)
                zero = 0.0 if z is None else per_direction(z)
                w = (q.astype(np.float32) - zero) * scale
                return np.ascontiguousarray(w.transpose(0, 2, 1), dtype=np.float32)  # [dirs, 4H, input]

            names.append(self.weight(q_name, make))
        inputs = [x, names[0], names[1], b, seq, h0, c0, p]
        while inputs and not inputs[-1]:
            inputs.pop()
        new = helper.make_node("LSTM", inputs, list(node.output), name=self.name(node), **_attrs(node))
        return _Rewrite(node, new, node.op_type)

    # -------------------------------------------------------------------- DequantizeLinear
    def dequantize_linear(self, node) -> _Rewrite:
        from onnx import helper

        g = self.g
        xq, s_name, z_name = (list(node.input) + [""] * 3)[:3]
        scale = g.need_constant(s_name, "scale", node)
        zero = g.constant(z_name) if z_name else None
        axis = int(_attrs(node).get("axis", 1))
        table = g.constant(xq)
        if table is not None:  # a constant: becomes a float initializer of the same name
            self.weights[node.output[0]] = _dequantize(table, zero, scale, axis % max(table.ndim, 1))
            return _Rewrite(node, None, "DequantizeLinear")
        gather = g.made_by(xq, node, "Gather")
        table = g.need_constant(gather.input[0], "table", gather)
        if np.asarray(scale).size != 1 or (zero is not None and np.asarray(zero).size != 1):
            raise ConversionError(f"{node.op_type} {node.name!r}: per-channel scales after a Gather are not supported")
        if len(g.consumers[xq]) != 1:
            raise ConversionError(f"Gather {gather.name!r}: its quantised rows are used elsewhere too")
        tname = self.weight(gather.input[0], lambda: _dequantize(table, zero, scale, 0))
        new = helper.make_node("Gather", [tname, gather.input[1]], list(node.output), name=self.name(gather),
                               **_attrs(gather))
        return _Rewrite(node, new, "Gather+DequantizeLinear")

    # -------------------------------------------------------------------- the whole graph
    def run(self) -> dict[str, int]:
        from onnx import numpy_helper

        handlers = {"MatMulInteger": self.integer_op, "ConvInteger": self.integer_op,
                    "DynamicQuantizeLSTM": self.lstm, "DequantizeLinear": self.dequantize_linear}
        graph = self.model.graph
        if any(a.type in (5, 10) for n in graph.node for a in n.attribute):  # GRAPH, GRAPHS
            raise ConversionError("graphs with subgraphs (If, Loop, Scan) are not supported")
        replaced: dict[int, Any] = {}
        counts: collections.Counter[str] = collections.Counter()
        for node in list(graph.node):
            handler = handlers.get(node.op_type)
            if handler is None:
                continue
            rewrite = handler(node)
            if id(rewrite.tail) in replaced:
                raise ConversionError(f"{rewrite.tail.op_type} {rewrite.tail.name!r} ends two quantised patterns")
            # In the tail's place: everything the new node reads (x, the indices) is computed before it.
            replaced[id(rewrite.tail)] = rewrite.node
            counts[rewrite.kind] += 1
        nodes = []
        for node in graph.node:
            if id(node) not in replaced:
                nodes.append(node)
            elif replaced[id(node)] is not None:
                nodes.append(replaced[id(node)])
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(numpy_helper.from_array(w, name) for name, w in self.weights.items())
        _prune(self.model)
        return dict(counts)


def _prune(model) -> None:
    """Drop the nodes, initializers, value infos and opset imports nothing uses any more."""
    graph = model.graph
    live = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in live for name in node.output):
            kept.append(node)
            live.update(name for name in node.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    produced = {name for node in kept for name in node.output}
    infos = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    domains = {node.domain or "" for node in kept}
    opsets = [o for o in model.opset_import if (o.domain or "") in ("", "ai.onnx") or o.domain in domains]
    del model.opset_import[:]
    model.opset_import.extend(opsets)


def dequantize_model(model) -> dict[str, int]:
    """Rewrite a dynamically quantised ``onnx.ModelProto`` to float32 in place; the patterns rewritten
    by kind. Raises ConversionError when it is not one, or when a quantised operator would be left."""
    ops = collections.Counter(node.op_type for node in model.graph.node)
    if not any(ops[op] for op in QUANTIZED_OPS):
        raise ConversionError("no quantised operators in this model: it is already float")
    counts = _Rewriter(model).run()
    left = collections.Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS)
    if left:
        raise ConversionError(
            "quantised operators this rewrite does not handle are left: "
            + ", ".join(f"{op} x{n}" for op, n in sorted(left.items()))
        )
    return counts


def convert(src: str | Path, dst: str | Path) -> Conversion:
    """Read the int8 model ``src``, write its float32 rewrite to ``dst`` (atomically) and check it."""
    onnx = _require_onnx()
    from google.protobuf.message import DecodeError

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConversionError(f"{src}: no such file")
    start = time.perf_counter()
    try:
        model = onnx.load(str(src))
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise ConversionError(f"{src}: not an ONNX model ({type(e).__name__}: {e})") from None
    result = Conversion(src, dst, nodes_before=len(model.graph.node))
    result.rewritten = dequantize_model(model)
    result.nodes_after = len(model.graph.node)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"the rewritten model does not pass onnx's checker: {e}") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    result.bytes_out = dst.stat().st_size
    result.seconds = time.perf_counter() - start
    log.info("kokoro %s -> %s: %s in %.1f s", src, dst, result.rewritten, result.seconds)
    return result
