"""TensorFlow frontend (extra ``[tf]``): SavedModel, Keras and TFLite models through tf2onnx.

Accepted: a SavedModel directory (one signature, ``serving_default`` unless ``signature=``), a
Keras ``.keras`` / ``.h5`` file or an in-memory ``keras.Model`` (Keras 3 on the TensorFlow
backend), an object with SavedModel signatures (``tf.saved_model.load``'s result) and a
``.tflite`` file. TensorFlow and tf2onnx are imported only when such a source is compiled.

Keras models and SavedModel signatures are wrapped in a ``tf.function`` with an explicit input
signature and converted by ``tf2onnx.convert.from_function`` (``from_keras`` fails under Keras 3);
``.tflite`` files by ``tf2onnx.convert.from_tflite``. Ops tf2onnx leaves unconverted are an error
naming the op and quoting tf2onnx. One op tf2onnx 1.17 lacks is added here: ``Erfc`` (exact GELU,
Keras 3's default ``gelu``), converted as ``1 - Erf(x)``.

Names: Keras inputs keep their ``keras.Input`` names, outputs the model's output names (a dict
output: its keys); SavedModel inputs and outputs keep the signature's keys; TFLite the tensor
names. A dynamic dimension is named ``<input>_dim<axis>`` (tf2onnx calls them ``unk__N``).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from ai_vmm.runtime.errors import CompileError, ModelLoadError

_HINT = "pip install 'ai-vmm[tf]'"
DEFAULT_OPSET = 17  # tf2onnx 1.17 supports opsets up to 18; 17 brings LayerNormalization


def export_tensorflow(
    source: Any,
    kind: str,
    *,
    input_signature: Any = None,
    signature: str | None = None,
    tag: str | list[str] | None = None,
    opset: int | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """Convert a TensorFlow, Keras or TFLite model to an ONNX ``ModelProto`` with tf2onnx.

    Args:
        source: a SavedModel directory, a ``.keras`` / ``.h5`` / ``.tflite`` path, a
            ``keras.Model`` or an object with SavedModel ``signatures``.
        kind: the format ``ai_vmm.frontends.detect_format`` gave ``source``.
        input_signature: Keras only: ``tf.TensorSpec`` (or a list of them) for a model that
            declares no inputs (a subclassed model); ``None`` in a shape is a dynamic dimension.
        signature: SavedModel only: which signature to convert (default ``serving_default``).
        tag: SavedModel only: the MetaGraph tag(s) to load (default ``serve``).
        opset: the ONNX opset to convert to (default 17).

    Returns:
        The ONNX model and notes for the compile report.

    Raises:
        ModelLoadError: TensorFlow or tf2onnx is missing, the model is unreadable, or tf2onnx
            cannot convert an op (named in the message).
        CompileError: an option that does not apply to this kind of source.
    """
    if isinstance(source, str | Path):
        label = str(source)
    else:
        name = getattr(source, "name", None)
        label = type(source).__qualname__ + (f" {name!r}" if isinstance(name, str) else "")
    _check_options(kind, label, input_signature, signature, tag)
    tf, tf2onnx = _import_tf(kind)
    notes: list[str] = []
    opset = opset or DEFAULT_OPSET
    if kind == "tflite":
        proto = _convert(
            tf2onnx,
            label,
            lambda handlers: tf2onnx.convert.from_tflite(
                str(source), opset=opset, custom_op_handlers=handlers
            ),
        )
        proto = _rename(proto, _tflite_io_names(Path(source), proto))
        notes.append(f"converted by tf2onnx {tf2onnx.__version__} from TFLite")
    else:
        if kind == "keras.file":
            model = _load_keras(Path(source))
            function, specs, output_names = _keras_function(tf, model, input_signature, label)
        elif kind == "keras.model":
            function, specs, output_names = _keras_function(tf, source, input_signature, label)
        else:
            loaded = (
                _load_saved_model(tf, Path(source), tag) if kind == "tf.saved_model" else source
            )
            function, specs = _signature_function(tf, loaded, signature, label)
            output_names = None
        proto = _convert(
            tf2onnx,
            label,
            lambda handlers: tf2onnx.convert.from_function(
                function, input_signature=specs, opset=opset, custom_op_handlers=handlers
            ),
        )
        if output_names and len(output_names) == len(proto.graph.output):
            renames = dict(zip((o.name for o in proto.graph.output), output_names, strict=True))
            proto = _rename(proto, renames)
        notes.append(f"converted by tf2onnx {tf2onnx.__version__} from TensorFlow {tf.__version__}")
    _name_dynamic_dims(proto)
    _stable_order(proto.graph)
    _canonical_names(proto)
    _number_unknown_dims(proto)
    proto.graph.doc_string = ""  # tf2onnx writes the traced function's name, numbered per process
    return proto, notes


def _check_options(
    kind: str, label: str, input_signature: Any, signature: str | None, tag: Any
) -> None:
    given = {"input_signature": input_signature, "signature": signature, "tag": tag}
    applies = {
        "input_signature": kind in ("keras.file", "keras.model"),
        "signature": kind in ("tf.saved_model", "tf.module"),
        "tag": kind == "tf.saved_model",
    }
    wrong = [name for name, value in given.items() if value is not None and not applies[name]]
    if wrong:
        raise CompileError(f"{label}: option(s) {', '.join(wrong)} do not apply to a {kind} source")


def _import_tf(kind: str) -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ModelLoadError(f"a {kind} source needs TensorFlow: {_HINT}") from exc
    try:
        import tf2onnx
    except ImportError as exc:
        raise ModelLoadError(f"a {kind} source needs tf2onnx: {_HINT}") from exc
    return tf, tf2onnx


def _load_keras(path: Path) -> Any:
    try:
        import keras

        with _quiet():
            return keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a loadable Keras model: {_one_line(exc)}") from exc


def _load_saved_model(tf: Any, path: Path, tag: str | list[str] | None) -> Any:
    tags = [tag] if isinstance(tag, str) else tag
    try:
        with _quiet():
            return tf.saved_model.load(str(path), tags=tags)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a loadable SavedModel: {_one_line(exc)}") from exc


def _keras_function(
    tf: Any, model: Any, input_signature: Any, label: str
) -> tuple[Any, list[Any], list[str]]:
    """A ``tf.function`` calling the Keras model (inference mode), its specs and output names."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ModelLoadError(
            f"{label}: Keras runs on the {backend} backend; tf2onnx needs KERAS_BACKEND=tensorflow "
            f"(or save the model with model.export(dir) from a TensorFlow-backend session)"
        )
    if input_signature is not None:
        specs = _as_specs(tf, input_signature, label)
        struct: Any = None
    else:
        try:
            inputs = list(model.inputs)
        except (AttributeError, ValueError) as exc:
            raise ModelLoadError(
                f"{label}: this Keras model declares no inputs (a subclassed model): pass "
                f"input_signature=[tf.TensorSpec(shape, dtype, name=...)]"
            ) from exc
        names = _unique(
            [_clean(getattr(t, "name", "") or f"input_{i}") for i, t in enumerate(inputs)]
        )
        specs = [
            tf.TensorSpec(tuple(t.shape), t.dtype, name=name)
            for t, name in zip(inputs, names, strict=True)
        ]
        struct = getattr(model, "_inputs_struct", None)
    declared = list(getattr(model, "output_names", None) or [])

    @tf.function(input_signature=specs)  # type: ignore[misc]
    def call(*args: Any) -> Any:
        if struct is not None:
            feed = tf.nest.pack_sequence_as(struct, list(args))
        else:
            feed = args[0] if len(args) == 1 else list(args)
        return model(feed, training=False)

    try:
        with _quiet():
            concrete = call.get_concrete_function(*specs)
    except Exception as exc:
        raise ModelLoadError(f"cannot trace Keras model {label}: {_one_line(exc)}") from exc
    structured = concrete.structured_outputs
    if isinstance(structured, dict):
        output_names = sorted(str(k) for k in structured)  # tf.nest flattens dicts by sorted key
    else:
        count = len(tf.nest.flatten(structured))
        if len(declared) == count:
            output_names = [str(n) for n in declared]
        else:
            output_names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return call, specs, _unique(output_names)


def _signature_function(
    tf: Any, loaded: Any, signature: str | None, label: str
) -> tuple[Any, list[Any]]:
    """A ``tf.function`` over one SavedModel signature (its keyword inputs made positional)."""
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    usable = sorted(k for k in signatures if not k.startswith("_"))
    if not usable:
        raise ModelLoadError(
            f"{label} has no signatures: save it with tf.saved_model.save(obj, dir, "
            f"signatures=...) or Keras model.export(dir)"
        )
    name = signature or ("serving_default" if "serving_default" in usable else usable[0])
    if name not in signatures:
        raise ModelLoadError(f"{label} has no signature {name!r}; it has: {', '.join(usable)}")
    function = signatures[name]
    _, kwargs = function.structured_input_signature
    names = sorted(kwargs)
    specs = [tf.TensorSpec(kwargs[k].shape, kwargs[k].dtype, name=k) for k in names]

    @tf.function(input_signature=specs)  # type: ignore[misc]
    def call(*args: Any) -> Any:
        return function(**dict(zip(names, args, strict=True)))

    return call, specs


def _as_specs(tf: Any, input_signature: Any, label: str) -> list[Any]:
    items = input_signature if isinstance(input_signature, list | tuple) else [input_signature]
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, tf.TensorSpec):
            raise ModelLoadError(
                f"{label}: input_signature must be tf.TensorSpec objects, got {type(item).__name__}"
            )
        specs.append(tf.TensorSpec(item.shape, item.dtype, name=_clean(item.name or f"input_{i}")))
    return specs


def _convert(tf2onnx: Any, label: str, run: Any) -> onnx.ModelProto:
    """Run one tf2onnx conversion; an op it leaves unconverted is a ``ModelLoadError``."""
    tf2onnx.utils.INTERNAL_NAME = 1  # tf2onnx's name counter: same model -> same bytes
    records: list[logging.LogRecord] = []
    try:
        with _quiet(records):
            proto, _ = run({"Erfc": (_erfc_handler, []), "TFL_GELU": (_gelu_handler, [])})
    except Exception as exc:
        op = _op_from_records(records)
        what = f" op {op}" if op else ""
        raise ModelLoadError(f"tf2onnx cannot convert{what} of {label}: {_one_line(exc)}") from exc
    unconverted = _unconverted_ops(proto)
    if unconverted:
        op, count = next(iter(unconverted.items()))
        others = [o for o in unconverted if o != op]
        also = f" (also: {', '.join(others)})" if others else ""
        quote = _quote_for(op, records)
        raise ModelLoadError(
            f"tf2onnx cannot convert TensorFlow op {op} ({count} node(s)){also} of {label}: {quote}"
        )
    if not proto.graph.output:
        raise ModelLoadError(f"tf2onnx produced no outputs for {label}")
    return proto


def _erfc_handler(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
    """tf2onnx handler for TensorFlow's ``Erfc``: ``1 - Erf(x)`` (Keras 3's exact GELU)."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = ctx.get_dtype(node.output[0])
    one = ctx.make_const(
        utils.make_name(f"{node.name}_one"),
        np.array(1, dtype=onnx.helper.tensor_dtype_to_np_dtype(dtype)),
    )
    ctx.insert_new_node_on_output(
        "Sub",
        node.output[0],
        name=utils.make_name(f"{node.name}_erfc"),
        inputs=[one.output[0], node.output[0]],
    )


def _gelu_handler(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
    """tf2onnx handler for TFLite's ``GELU``: exact (Erf) or tanh-approximate, as the op says."""
    from tf2onnx import utils

    x = node.input[0]
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(ctx.get_dtype(x))

    def const(value: float) -> str:
        made = ctx.make_const(utils.make_name(f"{node.name}_c"), np.array(value, dtype=np_dtype))
        return str(made.output[0])

    def op(op_type: str, *inputs: str) -> str:
        made = ctx.make_node(op_type, list(inputs), op_name_scope=node.name)
        return str(made.output[0])

    if node.get_attr_value("approximate", 0):
        cube = op("Mul", op("Mul", x, x), x)
        inner = op("Mul", op("Add", x, op("Mul", cube, const(0.044715))), const(np.sqrt(2 / np.pi)))
        gate = op("Add", op("Tanh", inner), const(1.0))
    else:
        gate = op("Add", op("Erf", op("Mul", x, const(1 / np.sqrt(2)))), const(1.0))
    half = op("Mul", x, const(0.5))
    node.type = "Mul"
    for attribute in list(node.attr):
        del node.attr[attribute]
    ctx.replace_inputs(node, [half, gate])


def _unconverted_ops(proto: onnx.ModelProto) -> dict[str, int]:
    """Ops of the default domain that ONNX does not define (tf2onnx leaves TF ops so)."""
    counts: dict[str, int] = {}
    for graph in _graphs(proto.graph):
        for node in graph.node:
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in _subgraphs(attribute):
                yield from _graphs(sub)


def _op_from_records(records: list[logging.LogRecord]) -> str | None:
    for record in records:
        match = re.search(r"\[[^\]]*: (\w+)\] is not supported", record.getMessage())
        if match:
            return match.group(1)
    return None


def _quote_for(op: str, records: list[logging.LogRecord]) -> str:
    """tf2onnx's own line about ``op`` (its error log), or a generic one."""
    for record in records:
        message = record.getMessage()
        if op in message:
            text = _first_line(message)
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({_one_line(record.exc_info[1])})"
            return text
    return "tf2onnx has no conversion for it (add one with custom_op_handlers, or change the model)"


def _rename(proto: onnx.ModelProto, renames: dict[str, str]) -> onnx.ModelProto:
    """Rename graph inputs and outputs (old name -> new), skipping names already taken."""
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return proto
    model = ir.serde.deserialize_model(proto)
    graph = model.graph
    taken = {v.name or "" for v in graph.inputs} | set(graph.initializers)
    taken |= {v.name or "" for node in graph for v in node.outputs}
    for value in [*graph.inputs, *graph.outputs]:
        new = renames.get(value.name or "")
        if new and new not in taken:
            taken.discard(value.name or "")
            taken.add(new)
            value.name = new
    return ir.serde.serialize_model(model)


def _tflite_io_names(path: Path, proto: onnx.ModelProto) -> dict[str, str]:
    """Tensor name -> the name users know: the signature's key, else the name without ``:0``."""
    renames = {v.name: _clean(v.name) for v in [*proto.graph.input, *proto.graph.output]}
    try:
        from tf2onnx.tflite.Model import Model

        model = Model.GetRootAsModel(bytearray(path.read_bytes()), 0)
        if model.SignatureDefsLength() != 1:
            return renames
        signature = model.SignatureDefs(0)
        subgraph = model.Subgraphs(signature.SubgraphIndex())
        maps = [signature.Inputs(i) for i in range(signature.InputsLength())]
        maps += [signature.Outputs(i) for i in range(signature.OutputsLength())]
        for entry in maps:
            tensor = subgraph.Tensors(entry.TensorIndex()).Name().decode()
            if tensor in renames:
                renames[tensor] = entry.Name().decode()
    except Exception:  # an old file without signatures, or a schema tf2onnx reads differently
        pass
    return renames


def _stable_order(graph: onnx.GraphProto, outer: dict[str, str] | None = None) -> str:
    """Reorder ``graph``'s nodes (and its subgraphs') into a topological order that depends on
    structure only, never on names or on the order tf2onnx emitted; return the graph's key.

    A node's key hashes its op, attributes (a subgraph: that subgraph's key) and the keys of its
    inputs: a graph input's name, an initializer's contents, a producer's key and output index.
    Among the nodes whose inputs are ready, the smallest key goes first.
    """
    keys: dict[str, str] = dict(outer or {})
    for index, value in enumerate(graph.input):
        keys[value.name] = _digest("input", value.name if outer is None else index)
    for tensor in graph.initializer:
        content = onnx.TensorProto()
        content.CopyFrom(tensor)
        content.name = ""
        keys[tensor.name] = _digest("initializer", content.SerializeToString(deterministic=True))
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                producer[name] = index
    node_keys: list[str] = []
    needs: list[set[int]] = []
    for index, node in enumerate(graph.node):  # tf2onnx emits nodes in some topological order
        attributes: list[Any] = []
        reads = set(node.input)
        for attribute in sorted(node.attribute, key=lambda a: a.name):
            subgraphs = _subgraphs(attribute)
            if subgraphs:
                attributes.append((attribute.name, [_stable_order(g, keys) for g in subgraphs]))
                reads |= {n for g in subgraphs for n in _outer_reads(g)}
            else:
                attributes.append((attribute.name, attribute.SerializeToString(deterministic=True)))
        inputs = [keys.get(n, "none") if n else "none" for n in node.input]
        key = _digest(node.op_type, node.domain, attributes, inputs)
        node_keys.append(key)
        for position, name in enumerate(node.output):
            if name:
                keys[name] = _digest(key, position)
        needs.append({producer[n] for n in reads if n in producer and producer[n] != index})
    users: dict[int, list[int]] = {}
    for index, dependencies in enumerate(needs):
        for dependency in dependencies:
            users.setdefault(dependency, []).append(index)
    waiting = [len(d) for d in needs]
    ready = [(node_keys[i], i) for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, index = heapq.heappop(ready)
        order.append(index)
        for user in users.get(index, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, (node_keys[user], user))
    if len(order) == len(graph.node):  # else a cycle (not a valid graph): leave it as it is
        nodes = [onnx.NodeProto.FromString(graph.node[i].SerializeToString()) for i in order]
        del graph.node[:]
        graph.node.extend(nodes)
    return _digest([node_keys[i] for i in order], [keys.get(v.name, "") for v in graph.output])


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads |= {n for n in node.input if n and n not in defined}
        for attribute in node.attribute:
            for sub in _subgraphs(attribute):
                reads |= _outer_reads(sub) - defined
        defined |= set(node.output)
    return reads


def _digest(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _canonical_names(proto: onnx.ModelProto) -> None:
    """Name every node and internal value by position (``Conv_12``, its weights ``Conv_12_w1``),
    sort attributes, initializers and value_info; graph inputs and outputs keep their names.

    tf2onnx numbers the names it makes from a process-wide counter, and when its optimizer merges
    identical nodes (a TFLite model's forward and backward LSTM loop conditions, a weight several
    ops share) the survivor's name is whichever it met first, which changes between runs. Without
    this, converting the same ``.tflite`` twice gives different bytes.
    """
    keep = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}
    used = set(keep)
    mapping: dict[str, str] = {}
    referenced: list[str] = []  # every name read by a node, in walk order
    counter = [0]

    def claim(name: str) -> str:
        unique, k = name, 0
        while unique in used:
            k += 1
            unique = f"{name}_{k}"
        used.add(unique)
        return unique

    def walk(graph: onnx.GraphProto, prefix: str) -> None:
        for k, value in enumerate(graph.input):
            if value.name not in keep and value.name not in mapping:
                mapping[value.name] = claim(f"{prefix}in{k}")
        initializers = {t.name for t in graph.initializer}
        for node in graph.node:
            node.name = claim(f"{node.op_type}_{counter[0]}")
            counter[0] += 1
            if not node.domain:
                node.ClearField("domain")  # tf2onnx sets domain "" on some nodes, not others
            for j, name in enumerate(node.input):
                referenced.append(name)
                if name in initializers and name not in mapping and name not in keep:
                    mapping[name] = claim(f"{node.name}_w{j}")
            attributes = sorted(node.attribute, key=lambda a: a.name)
            copies = [onnx.AttributeProto.FromString(a.SerializeToString()) for a in attributes]
            del node.attribute[:]
            node.attribute.extend(copies)
            for attribute in node.attribute:
                for i, sub in enumerate(_subgraphs(attribute)):
                    sub.name = f"{node.name}_{attribute.name}{i or ''}"
                    walk(sub, f"{sub.name}_")
            for j, name in enumerate(node.output):
                if name and name not in keep and name not in mapping:
                    mapping[name] = claim(
                        node.name if len(node.output) == 1 else f"{node.name}_{j}"
                    )

    def apply(graph: onnx.GraphProto) -> None:
        first_use: dict[str, int] = {}
        for node in graph.node:
            node.input[:] = [mapping.get(n, n) for n in node.input]
            node.output[:] = [mapping.get(n, n) for n in node.output]
            for name in node.input:
                first_use.setdefault(name, len(first_use))
            for attribute in node.attribute:
                for sub in _subgraphs(attribute):
                    apply(sub)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.name = mapping.get(value.name, value.name)
        for tensor in graph.initializer:
            tensor.name = mapping.get(tensor.name, tensor.name)
        end = len(first_use)
        tensors = sorted(graph.initializer, key=lambda t: (first_use.get(t.name, end), t.name))
        tensor_copies = [onnx.TensorProto.FromString(t.SerializeToString()) for t in tensors]
        del graph.initializer[:]
        graph.initializer.extend(tensor_copies)
        infos = sorted(graph.value_info, key=lambda v: v.name)
        info_copies = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in infos]
        del graph.value_info[:]
        graph.value_info.extend(info_copies)

    walk(proto.graph, "")
    # Initializers read only inside a subgraph (a Loop body): named in the order they are read.
    order = {name: i for i, name in reversed(list(enumerate(referenced)))}
    for graph in _graphs(proto.graph):
        for tensor in sorted(graph.initializer, key=lambda t: order.get(t.name, len(order))):
            if tensor.name not in mapping and tensor.name not in keep:
                mapping[tensor.name] = claim(f"const_{order.get(tensor.name, len(order))}")
    apply(proto.graph)


def _subgraphs(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attribute.type == onnx.AttributeProto.GRAPH:
        return [attribute.g]
    return list(attribute.graphs)


def _name_dynamic_dims(proto: onnx.ModelProto) -> None:
    """tf2onnx's ``unk__N`` dims of inputs and outputs -> ``<value>_dim<axis>`` (in place)."""
    mapping: dict[str, str] = {}
    for value in [*proto.graph.input, *proto.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param.startswith("unk__") and dim.dim_param not in mapping:
                mapping[dim.dim_param] = f"{value.name}_dim{axis}"
    if not mapping:
        return
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


def _number_unknown_dims(proto: onnx.ModelProto) -> None:
    """The ``unk__N`` dims left inside the graph (tf2onnx's process-wide counter) -> ``unk_K``,
    numbered in the order they appear (in place)."""
    mapping: dict[str, str] = {}
    for graph in _graphs(proto.graph):
        for value in [*graph.input, *graph.output, *graph.value_info]:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param.startswith("unk__"):
                    new = mapping.setdefault(dim.dim_param, f"unk_{len(mapping)}")
                    dim.dim_param = new


def _clean(name: str) -> str:
    """A tensor name without TensorFlow's ``:0`` port suffix."""
    return re.sub(r":\d+$", "", name)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= 300 else line[:297] + "..."


def _one_line(exc: BaseException) -> str:
    text = _first_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _quiet(records: list[logging.LogRecord] | None = None) -> Iterator[None]:
    """Collect tf2onnx's log lines instead of printing them; silence Python warnings."""
    logger = logging.getLogger("tf2onnx")
    handler = _Collect(records if records is not None else [])
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
