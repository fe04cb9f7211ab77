"""ONNX -> PyTorch: an ``nn.Module`` that runs an ONNX graph with torch ops, for ``torch.export``.

The cuda target compiles ONNX subgraphs with PyTorch's ahead-of-time compiler, so it needs the
subgraph as a torch program. This module is our own small op mapping (docs/gpu.md says why we
did not take onnx2torch): :data:`OPS` maps each supported ``op_type`` of the standard domain to a
function of torch ops, :func:`node_support` says per node whether it converts and why not, and
:func:`to_torch` builds the module.

Shapes stay symbolic. ``torch.export`` traces ``forward`` with fake tensors whose sizes are
``SymInt``\\ s, so the int64 tensors an ONNX graph computes from ``Shape`` (and its small integer
constants) are carried as :class:`ShapeValue`, a list of Python ints / ``SymInt``\\ s, instead of
tensors: ``Reshape``/``Expand``/``Slice``/``Range`` get sizes, not data, and the export stays
dynamic. They become tensors only where a data op consumes them. :func:`node_support` refuses a
size, axes or count input computed from a graph input's data (the export could not read it);
shape arithmetic on constants alone is folded before, by the canonicalize pass. An ``If`` on a
shape condition runs the branch chosen while tracing.

Precision: ``compute_dtype`` replaces float32 everywhere inside the graph (weights, constants,
``Cast(to=FLOAT)``); float32 inputs are cast on entry and float outputs cast back to float32 on
exit, so the module's signature stays the ONNX model's.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

# The op modules register their functions in OPS when imported.
import ai_vmm.targets.cuda_ops_index
import ai_vmm.targets.cuda_ops_nn
import ai_vmm.targets.cuda_ops_rnn
import ai_vmm.targets.cuda_ops_tensor  # noqa: F401
from ai_vmm.targets.cuda_convert_base import (
    CONST_INPUTS,
    DTYPES,
    OPS,
    SHAPE_AWARE,
    SMALL_CONSTANT,
    ConversionError,
    Node,
    ShapeValue,
    as_tensor,
    attr_value,
    bind_sizes,
    constant_array,
    ints,
    to_compute,
    torch_dtype,
)
from ai_vmm.targets.cuda_ops_resize import resize_support
from ai_vmm.targets.cuda_ops_rnn import rnn_support, scan_into_buffers

__all__ = [
    "OPS",
    "ConversionError",
    "ShapeValue",
    "named_forward",
    "node_support",
    "python_names",
    "to_torch",
    "torch_dtype",
]


# --------------------------------------------------------------------------------------------
# Capability
# --------------------------------------------------------------------------------------------

_MIN_OPSET = {"Split": 13, "Squeeze": 1, "Unsqueeze": 1}


def node_support(node: ir.Node, opset: int) -> str | None:
    """``None`` when ``node`` converts, else the reason it does not."""
    domain = node.domain or ""
    if domain not in ("", "ai.onnx"):
        return f"domain '{domain}' ops are not converted to torch ({node.op_type})"
    if node.op_type == "If" and domain in ("", "ai.onnx"):
        return _if_support(node, opset)
    if node.op_type == "Loop" and domain in ("", "ai.onnx"):
        return _loop_support(node, opset)
    for attr in node.attributes.values():
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return f"{node.op_type} has a subgraph (control flow is not converted)"
    if node.op_type not in OPS:
        return f"{node.op_type} is not in our ONNX->torch op mapping (docs/gpu.md lists it)"
    if opset < _MIN_OPSET.get(node.op_type, 1):
        return f"{node.op_type} before opset {_MIN_OPSET[node.op_type]} (other axis semantics)"
    for value in [*node.inputs, *node.outputs]:
        if value is None or value.dtype is None:
            continue
        if value.dtype not in DTYPES:
            return f"{node.op_type} uses element type {value.dtype.name}"
    if node.op_type == "Cast" and "to" in node.attributes:
        to = ir.DataType(node.attributes["to"].as_int())
        if to not in DTYPES:
            return f"Cast to {to.name}"
    if node.op_type in ("MaxPool",) and len(node.outputs) > 1 and node.outputs[1].name:
        return "MaxPool with an Indices output"
    if node.op_type == "Dropout" and len(node.outputs) > 1:
        return "Dropout with a mask output"
    return _shape_input_support(node) or _feature_support(node, opset)


FLOAT32_KEPT = {"BatchNormalization": (1, 2, 3, 4)}
"""op_type -> input positions whose float32 initializers keep float32 under a float16/bfloat16
compute dtype (their values can be out of its range; the op computes in float32)."""


def _float32_kept(graph: ir.Graph) -> set[str]:
    return {
        value.name
        for node in graph
        for position in FLOAT32_KEPT.get(node.op_type, ())
        if position < len(node.inputs)
        and (value := node.inputs[position]) is not None
        and value.name
    }


def _shape_derived(value: ir.Value | None) -> bool:
    """Whether ``value`` is computed from shapes and constants only, never from the data of a
    graph input (every path back ends at a ``Shape``/``Size``, a constant or an initializer)."""
    stack: list[ir.Value | None] = [value]
    visited: set[int] = set()
    while stack:
        current = stack.pop()
        if current is None or current.const_value is not None or id(current) in visited:
            continue
        visited.add(id(current))
        producer = current.producer()
        if producer is None:  # a graph input: data
            return False
        if producer.op_type not in ("Shape", "Size", "Constant"):
            stack.extend(producer.inputs)
    return True


_SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4),
    "Resize": (3,),
    "TopK": (1,),
    "Pad": (1, 3),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Split": (1,),
    "CumSum": (1,),
    "Trilu": (1,),
    "CumProd": (1,),
    "OneHot": (1,),
    **dict.fromkeys(
        ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"), (1,)
    ),
    **dict.fromkeys(("ReduceSumSquare", "ReduceLogSumExp", "ReduceL1", "ReduceLogSum"), (1,)),
}
"""op_type -> positions of inputs that are sizes, axes or counts: ``torch.export`` needs them
as numbers while tracing, so they must come from shapes and constants, not from data."""


def _shape_input_support(node: ir.Node) -> str | None:
    for position in _SHAPE_INPUTS.get(node.op_type, ()):
        if position < len(node.inputs) and not _shape_derived(node.inputs[position]):
            return (
                f"{node.op_type} input {position} is computed from tensor data "
                "(a size torch.export cannot read while tracing)"
            )
    return None


def _if_support(node: ir.Node, opset: int) -> str | None:
    """An ``If`` converts when its condition comes from shapes (exporters' "squeeze this axis
    if it is 1"): the branch is chosen while tracing. A data condition would need
    ``torch.cond`` (not converted)."""
    if not _shape_derived(node.inputs[0]):
        return "If on a condition computed from tensor data (control flow is not converted)"
    for key in ("then_branch", "else_branch"):
        attr = node.attributes.get(key)
        if attr is None:
            return f"If without {key}"
        for inner in attr.value:
            reason = node_support(inner, opset)
            if reason is not None:
                return f"If {key}: {reason}"
    return None


def _loop_support(node: ir.Node, opset: int) -> str | None:
    """A ``Loop`` converts when it is counted: a trip count and a start condition computed
    from shapes (what TF's ``while`` over a sequence exports to). It runs as a scan over the
    trip count; the body's condition is checked at run time (``_run_loop``)."""
    trip = node.inputs[0] if node.inputs else None
    if trip is None or not trip.name:
        return "Loop without a trip count (a while loop on a data condition is not converted)"
    if not _shape_derived(trip):
        return "Loop whose trip count is computed from tensor data (not converted)"
    start = node.inputs[1] if len(node.inputs) > 1 else None
    if start is not None and start.name and not _shape_derived(start):
        return "Loop whose start condition is computed from tensor data (not converted)"
    body = node.attributes.get("body")
    if body is None:
        return "Loop without a body"
    for inner in body.value:
        reason = node_support(inner, opset)
        if reason is not None:
            return f"Loop body: {reason}"
    return None


def _consts(node: ir.Node) -> dict[int, np.ndarray]:
    """The inputs ``CONST_INPUTS`` names for this op, read now (see ``Node.consts``)."""
    out: dict[int, np.ndarray] = {}
    for position in CONST_INPUTS.get(node.op_type, ()):
        if position < len(node.inputs):
            array = constant_array(node.inputs[position])
            if array is not None:
                out[position] = array
    return out


def _const_bool(value: ir.Value | None) -> bool | None:
    """A constant boolean input's value, ``None`` when it is not a constant."""
    if value is None or value.const_value is None:
        return None
    return bool(np.asarray(value.const_value.numpy()).reshape(-1)[0])


def _feature_support(node: ir.Node, opset: int) -> str | None:
    """Features of mapped ops that the op functions do not express (checked per node)."""
    op = node.op_type

    def attr(name: str, default: Any = None) -> Any:
        a = node.attributes.get(name)
        return default if a is None else a.value

    for value in [*node.inputs, *node.outputs]:
        kind = value.type if value is not None else None
        if kind is not None and not isinstance(kind, ir.TensorType):
            return f"{op} on a {type(kind).__name__} (sequences/optionals)"
    named_outputs = [bool(v.name) for v in node.outputs]
    if op == "BatchNormalization" and (attr("training_mode", 0) or any(named_outputs[1:])):
        return "BatchNormalization with training_mode=1 (batch statistics)"
    training = node.inputs[2] if op == "Dropout" and len(node.inputs) > 2 else None
    if training is not None and _const_bool(training) is not False:
        return "Dropout with a training_mode input that is not a constant false"
    if op == "Attention":
        if any(named_outputs[3:]):
            return "Attention with a qk_matmul_output output"
        if len(node.inputs) > 6 and node.inputs[6] is not None:
            return "Attention with nonpad_kv_seqlen"
        if attr("softcap", 0.0) or attr("qk_matmul_output_mode", 0):
            return "Attention with softcap or qk_matmul_output_mode"
        if attr("left_window_size", -1) != -1 or attr("right_window_size", -1) != -1:
            return "Attention with a sliding window"
    if op in ("Resize", "Upsample"):
        return resize_support(node, opset)
    if op in ("LSTM", "GRU", "RNN"):
        return rnn_support(node)
    if op in ("QuantizeLinear", "DequantizeLinear") and attr("block_size", 0):
        return f"{op} with block_size (blocked quantization)"
    if op == "ConvTranspose" and (
        attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or attr("output_shape")
    ):
        return "ConvTranspose with auto_pad SAME or output_shape"
    if op == "AveragePool" and any(d != 1 for d in attr("dilations") or []):
        return "AveragePool with dilations"
    if op == "GatherND" and attr("batch_dims", 0):
        return "GatherND with batch_dims > 0"
    return None


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


def _python_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name) or "x"
    if base[0].isdigit() or keyword.iskeyword(base):
        base = "v_" + base
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


class OnnxGraphModule(torch.nn.Module):
    """Runs an ONNX graph with torch ops (see the module doc); built by :func:`to_torch`."""

    def __init__(self, model: ir.Model, compute: torch.dtype) -> None:
        super().__init__()
        graph = model.graph
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        self.compute = compute
        self.input_names = [v.name or "" for v in graph.inputs]
        self.arg_names: list[str] = list(self.input_names)
        self.output_names = [v.name or "" for v in graph.outputs]
        self.input_float = [v.dtype == ir.DataType.FLOAT for v in graph.inputs]
        self.output_float = [v.dtype == ir.DataType.FLOAT for v in graph.outputs]
        self._constants: dict[str, ShapeValue] = {}
        self._buffers_by_value: dict[str, str] = {}
        self._taken: set[str] = set()
        self._opset = opset
        self._nodes: list[Node] = self._convert_graph(graph)

    @property
    def runs_loops(self) -> bool:
        """Whether the module runs a ``scan`` (an RNN or a counted ``Loop``, in branches too)."""

        def loops(nodes: list[Node]) -> bool:
            return any(
                node.op_type in _LOOP_OPS
                or any(loops(b.nodes) for b in node.attrs.values() if isinstance(b, Branch))
                for node in nodes
            )

        return loops(self._nodes)

    def _convert_graph(self, graph: ir.Graph) -> list[Node]:
        """Register ``graph``'s initializers and convert its nodes (subgraphs of ``If`` too:
        their names share the main graph's scope, as ONNX requires)."""
        keep_float32 = _float32_kept(graph)
        for name, value in graph.initializers.items():
            if name in self.input_names:
                continue  # an initializer that is also an input: the input wins
            tensor = value.const_value
            if tensor is None:
                raise ConversionError(f"initializer {name} has no data")
            array = tensor.numpy()
            integer = array.dtype in (np.int64, np.int32)
            if integer and array.ndim <= 1 and array.size <= SMALL_CONSTANT:
                self._constants[name] = ShapeValue(
                    [int(v) for v in array.reshape(-1)],
                    scalar=array.ndim == 0,
                    dtype=torch.int64 if array.dtype == np.int64 else torch.int32,
                )
                continue
            data = torch.from_numpy(np.array(array, copy=True))
            if data.dtype == torch.float32 and name not in keep_float32:
                data = to_compute(data, self.compute)
            attr = _python_name(name, self._taken)
            self.register_buffer(attr, data)
            self._buffers_by_value[name] = attr
        nodes = []
        for node in graph:
            reason = node_support(node, self._opset)
            if reason is not None:
                raise ConversionError(f"node {node.name}: {reason}")
            if node.op_type == "If":
                attrs: dict[str, Any] = {
                    key: Branch(
                        self._convert_graph(node.attributes[key].value),
                        [v.name or "" for v in node.attributes[key].value.outputs],
                    )
                    for key in ("then_branch", "else_branch")
                }
            elif node.op_type == "Loop":
                body = node.attributes["body"].value
                attrs = {
                    "body": Branch(self._convert_graph(body), [v.name or "" for v in body.outputs]),
                    "body_inputs": [v.name or "" for v in body.inputs],
                }
            else:
                attrs = {k: attr_value(a) for k, a in node.attributes.items()}
            nodes.append(
                Node(
                    op_type=node.op_type,
                    attrs=attrs,
                    inputs=[v.name or "" if v is not None else "" for v in node.inputs],
                    outputs=[v.name or "" for v in node.outputs],
                    opset=self._opset,
                    compute=self.compute,
                    consts=_consts(node),
                )
            )
        return nodes

    def _run_node(self, node: Node, env: dict[str, Any], device: torch.device) -> None:
        """Run one node on ``env`` (values by name) and store its outputs there."""
        if node.op_type == "If":
            branch = node.attrs["then_branch" if _condition(env[node.inputs[0]]) else "else_branch"]
            for inner in branch.nodes:
                self._run_node(inner, env, device)
            for name, value in zip(node.outputs, branch.outputs, strict=True):
                env[name] = env[value]
            return
        if node.op_type == "Loop":
            self._run_loop(node, env, device)
            return
        fn = OPS[node.op_type]
        inputs = [env[name] if name else None for name in node.inputs]
        # Trailing absent optional inputs are dropped; interior ones stay None.
        while inputs and inputs[-1] is None:
            inputs.pop()
        if node.op_type not in SHAPE_AWARE:
            inputs = [as_tensor(v, device) if v is not None else None for v in inputs]
        elif node.op_type not in _FLOAT_SHAPE_READERS:
            inputs = [as_tensor(v, device) if _float_shape(v) else v for v in inputs]
        result = fn(node, device, *inputs)
        if isinstance(result, tuple):
            for name, value in zip(node.outputs, result, strict=False):
                if name:
                    env[name] = value
        else:
            env[node.outputs[0]] = result

    def _run_loop(self, node: Node, env: dict[str, Any], device: torch.device) -> None:
        """A counted ``Loop`` as ``scan`` over its trip count (symbolic in export, like the
        RNNs'): the carried values are the scan's carry, the body's scan outputs its stacked
        outputs. ONNX stops a loop when the body's condition turns false; a scan cannot stop, so
        the condition of every step but the last must be true, which is asserted on the device
        (an error at run time, never a silently longer result)."""
        from torch._higher_order_ops.scan import scan

        body: Branch = node.attrs["body"]
        names: list[str] = node.attrs["body_inputs"]
        trip = env[node.inputs[0]]
        start = env[node.inputs[1]] if len(node.inputs) > 1 and node.inputs[1] else None
        if isinstance(start, ShapeValue) and not _condition(start):
            raise ConversionError("Loop whose start condition is false (not converted)")
        steps = ints(trip, "Loop trip count")[0]
        initial = [env[name] for name in node.inputs[2:]]
        count = len(initial)
        # Values the body hands back unchanged (TF passes its weights through every step) are
        # closed over, not carried: a scan may not return its inputs (aliasing).
        same = [out == name for out, name in zip(body.outputs[1:], names[2:], strict=False)]
        moving = [k for k in range(count) if not same[k]]
        fixed = {names[2 + k]: initial[k] for k in range(count) if same[k]}
        # Cloned: TF passes one zeros tensor as both LSTM states, and scan refuses aliased carries.
        carried = tuple(as_tensor(initial[k], device).clone() for k in moving)

        hoisted = _hoisted_constants(body.nodes, env, device)
        sizes: list[tuple[Any, ...]] | None = None

        def step(carry: tuple[Any, ...], index: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
            local = {**env, **hoisted, **fixed}
            local[names[0]] = index
            local[names[1]] = torch.ones((), dtype=torch.bool, device=device)
            local.update(zip([names[2 + k] for k in moving], carry, strict=True))
            for inner in body.nodes:
                self._run_node(inner, local, device)
            out = [as_tensor(local[name], device) for name in body.outputs]
            new = tuple(
                out[1 + k].to(c.dtype).reshape(c.shape).clone()
                for k, c in zip(moving, carry, strict=True)
            )
            scans = tuple(
                (o if sizes is None else bind_sizes(o, shape)).clone()
                for o, shape in zip(out[1 + count :], sizes or out[1 + count :], strict=True)
            )
            return new, (out[0].reshape(()).to(torch.bool), *scans)

        indices = torch.arange(steps, dtype=torch.int64, device=device)
        if isinstance(steps, torch.SymInt):
            # Traced with symbolic sizes: one step run outside the scan (dead code, dropped
            # from the export) gives the stacked outputs' per-step sizes in the outer graph's
            # symbols, and the body reshapes to them (``bind_sizes``). Without it chars2vec's
            # per-step [batch, 300] failed AOTInductor's scan lowering (``KeyError: s64``).
            probe = step(carried, torch.zeros((), dtype=torch.int64, device=device))[1][1:]
            sizes = [tuple(p.shape) for p in probe]
        # Every step's condition but the last must hold (no slice: a length of steps - 1 would
        # make export guard the trip count above 2).
        last = indices == steps - 1
        if isinstance(steps, torch.SymInt) and not steps.node.expr.is_Symbol:
            # Nothing stacked (``scan_into_buffers``): the conditions fold into one carried
            # flag, the outputs go into buffers shaped by the probe step.
            def flagged(carry: tuple[Any, ...], xs: tuple[Any, ...]) -> Any:
                index, is_last = xs
                new, (condition, *rows) = step(carry[:-1], index)
                return (*new, carry[-1] & (condition | is_last)), tuple(rows)

            flag = torch.ones((), dtype=torch.bool, device=device)
            final_carry, scans = scan_into_buffers(
                flagged, (*carried, flag), (indices, last), probe
            )
            final_moving, ran = final_carry[:-1], final_carry[-1]
        else:
            final_moving, stacked = scan(step, carried, indices)
            conditions, scans = stacked[0], stacked[1:]
            ran = (conditions | last).all()
        final = list(initial)
        for k, value in zip(moving, final_moving, strict=True):
            final[k] = value
        if isinstance(start, torch.Tensor):  # shapes through a float cast: known at run time
            ran = ran & start.reshape(()).to(torch.bool)
        torch._assert_async(
            ran, "Loop: its condition ended the loop before its trip count (not converted)"
        )
        for name, value in zip(node.outputs, [*final, *scans], strict=False):
            if name:
                env[name] = value

    def run_graph(self, args: Sequence[Any]) -> tuple[Any, ...]:
        """Run the graph on the inputs in graph order (``forward`` calls this)."""
        device = args[0].device if args else torch.device("cpu")
        for buffer in self.buffers():
            device = buffer.device
            break
        env: dict[str, Any] = dict(self._constants)
        for name, attr in self._buffers_by_value.items():
            env[name] = getattr(self, attr)
        for name, is_float, value in zip(self.input_names, self.input_float, args, strict=True):
            env[name] = (
                value.to(self.compute) if is_float and value.dtype != self.compute else value
            )
        for node in self._nodes:
            self._run_node(node, env, device)
        outputs = []
        for name, is_float in zip(self.output_names, self.output_float, strict=True):
            value = as_tensor(env[name], device)
            outputs.append(value.to(torch.float32) if is_float else value)
        return tuple(outputs)


def _hoisted_constants(
    nodes: list[Node], env: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """Outer small constants a loop body uses as data (an ``Add`` of a counter and 1), as
    tensors made before the loop: a tensor constant created inside a scan body fails
    Inductor's lowering of the scan (``Attempting to use FunctionalTensor on its own``,
    chars2vec on AOTInductor, PyTorch 2.13). Inputs read as sizes stay ``ShapeValue``, and so
    do symbolic ones (TF's condition reads the trip count): made into a tensor before the loop,
    such a scalar gave a package that segfaulted on its first call (chars2vec and a 20-node
    repro, CPU, 2026-12-05); made in the body, from the size dynamo lifts, it runs right."""
    as_sizes = {
        name
        for node in nodes
        for position, name in enumerate(node.inputs)
        if position in _SHAPE_INPUTS.get(node.op_type, ())
        or position in CONST_INPUTS.get(node.op_type, ())
    }
    return {
        name: as_tensor(env[name], device)
        for node in nodes
        for name in node.inputs
        if name
        and name not in as_sizes
        and isinstance(env.get(name), ShapeValue)
        and all(isinstance(v, int) for v in env[name].values)
    }


@dataclass
class Branch:
    """A converted ``If`` branch: its nodes and the names of its outputs."""

    nodes: list[Node]
    outputs: list[str]


def _condition(value: Any) -> bool:
    """An ``If`` condition computed from shapes, as a Python bool (a guard when symbolic)."""
    if not isinstance(value, ShapeValue) or len(value.values) != 1:
        raise ConversionError("If on a condition computed from tensor data (not converted)")
    return bool(value.values[0])


def _if_placeholder(node: Node, device: torch.device, *inputs: Any) -> Any:
    raise AssertionError(f"{node.op_type} runs in OnnxGraphModule._run_node")


OPS["If"] = _if_placeholder
OPS["Loop"] = _if_placeholder
SHAPE_AWARE.update(("If", "Loop"))

_LOOP_OPS = frozenset({"LSTM", "GRU", "RNN", "Loop"})
"""ONNX ops the converter runs as a ``scan``."""
_FLOAT_SHAPE_READERS = frozenset({"Range", "Cast", "CastLike"})


def _float_shape(value: Any) -> bool:
    return isinstance(value, ShapeValue) and value.dtype.is_floating_point


def named_forward(cls: type, names: Sequence[str]) -> type:
    """A subclass of ``cls`` whose ``forward`` takes one named argument per input.

    ``forward(a, b)`` calls ``self.run_graph([a, b])``; named arguments let ``torch.export``'s
    ``dynamic_shapes`` be keyed by name. ``names`` must be Python identifiers (see
    :func:`python_names`).
    """
    params = ", ".join(names)
    source = f"def forward(self, {params}):\n    return self.run_graph([{params}])\n"
    scope: dict[str, Any] = {}
    exec(source, scope)
    return type(cls.__name__, (cls,), {"forward": scope["forward"]})


def python_names(names: Sequence[str]) -> list[str]:
    """Distinct Python identifiers for tensor names (``input.1`` -> ``input_1``)."""
    taken: set[str] = {"self"}
    return [_python_name(name or "x", taken) for name in names]


def to_torch(model: ir.Model, compute: torch.dtype = torch.float32) -> OnnxGraphModule:
    """An ``nn.Module`` running ``model``'s main graph; ``forward(<inputs>) -> tuple``.

    ``forward`` takes one named argument per graph input (names made Python-safe, in graph
    order: ``module.arg_names``), so ``torch.export``'s ``dynamic_shapes`` can be keyed by them.

    Raises:
        ConversionError: a node has no mapping (the message names it and says why).
    """
    names = python_names([v.name or "" for v in model.graph.inputs])
    module: OnnxGraphModule = named_forward(OnnxGraphModule, names)(model, compute)
    module.arg_names = names
    return module
