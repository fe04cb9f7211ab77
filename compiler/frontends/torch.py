"""PyTorch frontend (extra ``[torch]``): a model is exported to ONNX by ``torch.onnx.export``.

Accepted: an ``nn.Module`` (with ``example_inputs``), a ``torch.export.ExportedProgram``, a
``.pt2`` file (``torch.export.save``) and TorchScript (a ``torch.jit`` module or a file from
``torch.jit.save``). Everything goes through the dynamo exporter (``torch.export`` then the
ONNX translation of each aten op); TorchScript is first converted to an ``ExportedProgram`` by
torch's own ``TS2EPConverter``. PyTorch is imported only when a torch source is compiled.

Names: inputs keep the ``forward`` argument names (TorchScript: the scripted argument names);
outputs are named from the output's structure: ``output`` for one tensor, ``output_0`` ... for a
tuple, the keys for a dict or a ``transformers`` ``ModelOutput`` (``last_hidden_state``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import traceback
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from ai_vmm.runtime.errors import CompileError, ModelLoadError

_HINT = "pip install 'ai-vmm[torch]'"
_SCALAR_TYPES = {
    "Float": "float32",
    "Double": "float64",
    "Half": "float16",
    "BFloat16": "bfloat16",
    "Long": "int64",
    "Int": "int32",
    "Short": "int16",
    "Char": "int8",
    "Byte": "uint8",
    "Bool": "bool",
}


def export_torch(
    source: Any,
    kind: str,
    *,
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    opset: int | None = None,
) -> tuple[onnx.ModelProto, list[str], Any]:
    """Export a PyTorch model to an ONNX ``ModelProto``.

    Args:
        source: an ``nn.Module``, an ``ExportedProgram``, a TorchScript module, or a path to a
            ``.pt2`` / TorchScript file.
        kind: the format ``ai_vmm.frontends.detect_format`` gave ``source``.
        example_inputs: a tensor (or NumPy array), a tuple of them (positional arguments) or a
            dict (keyword arguments). Needed for an ``nn.Module``, and for TorchScript that was
            scripted rather than traced; an ``ExportedProgram`` carries its own.
        dynamic_shapes: ``torch.export``'s ``dynamic_shapes``, keyed by ``forward`` argument
            name (or a tuple in argument order); an axis maps to a name (``"batch"``), to a
            ``torch.export.Dim`` or to ``Dim.AUTO``.
        opset: the ONNX opset to export to (default: the exporter's).

    Returns:
        The ONNX model, notes for the compile report, and the ``torch.export`` program it was
        translated from (``None`` when it cannot be called positionally with the ONNX inputs):
        the cuda target compiles that program directly instead of the ONNX graph.

    Raises:
        ModelLoadError: PyTorch is missing, the file is unreadable, inputs are missing, or the
            export failed (the message names the op and quotes PyTorch's own message).
        CompileError: ``example_inputs`` / ``dynamic_shapes`` given for a torch.export program.
    """
    torch = _import_torch(kind)
    notes: list[str] = []
    label = str(source) if isinstance(source, str | Path) else type(source).__qualname__
    input_names: list[str] | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    if kind in ("torch.pt2", "torch.exported"):
        if example_inputs is not None or dynamic_shapes is not None:
            raise CompileError(
                f"{label}: a torch.export program has its inputs and dynamic dimensions fixed at "
                f"export time: export it again with torch.export.export(..., dynamic_shapes=...) "
                f"instead of passing example_inputs / dynamic_shapes"
            )
        target: Any = _load_pt2(torch, Path(source)) if kind == "torch.pt2" else source
        eager: Any = target.module()
    elif kind == "torch.script":
        module = _load_torchscript(torch, source) if isinstance(source, str | Path) else source
        eager = module
        input_names = _script_input_names(module)
        if example_inputs is None:
            example_inputs = _traced_example_inputs(torch, module)
            if example_inputs is None:
                raise ModelLoadError(
                    f"{label}: TorchScript stores no input shapes (it was scripted, or saved "
                    f"before torch recorded traced inputs): pass example_inputs=(tensor, ...) "
                    f"through ai_vmm.compile, or save the model with torch.export.save as .pt2"
                )
            notes.append("example inputs made from the shapes traced into the TorchScript file")
        args, kwargs = _split_inputs(torch, example_inputs)
        target = _script_to_exported(torch, module, args, kwargs, label)
        if dynamic_shapes is not None:
            if isinstance(dynamic_shapes, dict) and input_names:
                dynamic_shapes = tuple(dynamic_shapes.get(name) for name in input_names)
            target = target.module()
        else:
            args, kwargs = (), None
    else:
        if example_inputs is None:
            raise ModelLoadError(
                f"{label}: an nn.Module needs example inputs to be exported: "
                f"ai_vmm.compile(module, ..., example_inputs=(tensor, ...))"
            )
        args, kwargs = _split_inputs(torch, example_inputs)
        target = eager = source
        if getattr(source, "training", False):
            notes.append(
                "the module was in training mode (dropout, batch-norm statistics): "
                "call module.eval() before compiling for inference"
            )
    program = _onnx_export(torch, target, args, kwargs, dynamic_shapes, opset, label)
    graph = program.model.graph
    _static_numeric_dims(graph)
    _name_values(graph, graph.inputs, input_names)
    _name_values(graph, graph.outputs, _output_names(program.exported_program))
    if kind == "torch.module" and getattr(source, "training", False):
        notes.append("dynamic sizes not checked: the module is in training mode")
    else:
        notes.extend(_check_other_sizes(torch, program, eager, label))
    proto = program.model_proto
    exported = program.exported_program
    if kwargs or len(proto.graph.input) != len(exported.graph_signature.user_inputs):
        exported = None  # keyword inputs or folded inputs: not callable as the ONNX graph is
    program.release()
    return proto, notes, exported


def _check_other_sizes(torch: Any, program: Any, eager: Any, label: str) -> list[str]:
    """Run the export and ``eager`` on inputs whose dynamic dimensions differ from the example's.

    The exporter can bake an example size into the graph (torch 2.13 does for multi-layer
    ``nn.LSTM`` / ``nn.GRU`` with a dynamic sequence length): such a model runs on the example
    and fails, or is wrong, at any other size. Catching it here turns a broken artifact into
    an error at load time.

    Returns:
        Notes for the report (what was checked, or why not).

    Raises:
        ModelLoadError: the export fails or differs from eager on the other sizes.
    """
    from torch.utils import _pytree

    exported = program.exported_program
    placeholders = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    values = [placeholders[n].meta.get("val") for n in exported.graph_signature.user_inputs]
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        return []
    examples = _pytree.tree_leaves(exported.example_inputs or ())
    examples = [e for e in examples if isinstance(e, torch.Tensor)]
    if len(examples) != len(values):
        examples = [None] * len(values)
    sizes: dict[Any, int] = {}
    for value, example in zip(values, examples, strict=True):
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, torch.SymInt):
                expr = dim.node.expr
                if expr.is_number:  # a SymInt that is a constant: a static dimension
                    continue
                if not expr.is_Symbol:
                    return [f"dynamic sizes not checked: dimension {expr} is an expression"]
                hint = example.shape[axis] if example is not None else dim.node.hint
                if hint is None:
                    return ["dynamic sizes not checked: no example size"]
                sizes.setdefault(expr, int(hint))
    if not sizes:
        return []
    other = {s: _other_size(n, exported.range_constraints.get(s)) for s, n in sizes.items()}
    generator = torch.Generator().manual_seed(0)
    flat = []
    for value, example in zip(values, examples, strict=True):
        shape = [
            other.get(d.node.expr, d) if isinstance(d, torch.SymInt) else d for d in value.shape
        ]
        shape = [int(d.node.expr) if isinstance(d, torch.SymInt) else int(d) for d in shape]
        flat.append(_like(torch, value.dtype, shape, example, generator))
    names: dict[Any, str] = {}  # symbol -> the dimension's name in the ONNX graph
    for value, onnx_value in zip(values, program.model.graph.inputs, strict=False):
        onnx_shape = list(onnx_value.shape or [])
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, torch.SymInt) and axis < len(onnx_shape):
                names.setdefault(dim.node.expr, str(getattr(onnx_shape[axis], "value", dim)))
    described = ", ".join(dict.fromkeys(f"{names.get(s, s)}={sizes[s]}->{other[s]}" for s in sizes))
    try:
        args, kwargs = _pytree.tree_unflatten(flat, exported.call_spec.in_spec)
        with torch.no_grad(), _quiet():
            expected = [
                t
                for t in _pytree.tree_leaves(eager(*args, **kwargs))
                if isinstance(t, torch.Tensor)
            ]
    except Exception as exc:
        return [f"dynamic sizes not checked: eager PyTorch fails at {described} ({_one_line(exc)})"]
    try:
        with _quiet():
            got = list(program(*args, **kwargs))
    except Exception as exc:
        raise ModelLoadError(
            f"the ONNX export of {label} fails when its dynamic dimensions change ({described}): "
            f"{_one_line(exc)}; the exporter baked an example size into the graph (torch 2.13 "
            f"does for multi-layer nn.LSTM/nn.GRU): keep those dimensions static or stack "
            f"single-layer modules"
        ) from exc
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=False)):
        a, b = ours.detach().float().numpy(), theirs.detach().float().numpy()
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4):
            error = (
                float(np.abs(a - b).max())
                if a.shape == b.shape
                else f"shape {a.shape} vs {b.shape}"
            )
            raise ModelLoadError(
                f"the ONNX export of {label} differs from PyTorch when its dynamic dimensions "
                f"change ({described}): output {index}: max abs error {error}"
            )
    return [f"export checked against eager PyTorch at other dynamic sizes ({described})"]


def _other_size(size: int, bounds: Any) -> int:
    """A size other than ``size`` inside the dimension's range (``size`` if there is none)."""
    low = _finite(getattr(bounds, "lower", None)) or 0
    high = _finite(getattr(bounds, "upper", None))
    for candidate in (size + 1, size - 1):
        if candidate >= max(low, 2) and (high is None or candidate <= high):
            return candidate
    return size


def _finite(bound: Any) -> int | None:
    """A range bound as an int; ``None`` for none or an infinite one (sympy's ``int_oo``)."""
    if bound is None or getattr(bound, "is_finite", True) is not True:
        return None
    try:
        return int(bound)
    except Exception:  # sympy infinities raise assorted errors
        return None


def _like(torch: Any, dtype: Any, shape: list[int], example: Any, generator: Any) -> Any:
    """A tensor of ``shape``: the example's values repeated (ids and masks stay meaningful), or
    random values when there is no example."""
    if example is not None and example.dim() == len(shape) and example.numel():
        out = example
        for axis, size in enumerate(shape):
            index = torch.arange(size) % example.shape[axis]
            out = out.index_select(axis, index)
        return out.to(dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.zeros(shape, dtype=dtype)


def _import_torch(kind: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError(f"a {kind} source needs PyTorch: {_HINT}") from exc
    return torch


def _load_pt2(torch: Any, path: Path) -> Any:
    try:
        with _quiet():
            return torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"{path} is not a loadable torch.export program: {_one_line(exc)}"
        ) from exc


def _load_torchscript(torch: Any, path: str | Path) -> Any:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            traced = any(name.endswith("/traced_inputs.pkl") for name in archive.namelist())
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu", _restore_shapes=traced)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not loadable TorchScript: {_one_line(exc)}") from exc


def _script_input_names(module: Any) -> list[str] | None:
    """The scripted ``forward``'s argument names (``x.1`` -> ``x``); ``None`` if unknown."""
    try:
        values = list(module.graph.inputs())[1:]
    except (AttributeError, RuntimeError):
        return None
    names = [value.debugName().split(".")[0] for value in values]
    return names if all(names) and len(set(names)) == len(names) else None


def _traced_example_inputs(torch: Any, module: Any) -> tuple[Any, ...] | None:
    """Example tensors from the input shapes a traced TorchScript file recorded, if complete."""
    try:
        values = list(module.graph.inputs())[1:]
    except (AttributeError, RuntimeError):
        return None
    tensors = []
    generator = torch.Generator().manual_seed(0)
    for value in values:
        type_ = value.type()
        sizes = type_.sizes() if hasattr(type_, "sizes") else None
        scalar = type_.scalarType() if hasattr(type_, "scalarType") else None
        if not sizes or scalar not in _SCALAR_TYPES or any(s is None for s in sizes):
            return None
        dtype = getattr(torch, _SCALAR_TYPES[scalar])
        if dtype.is_floating_point:
            tensors.append(torch.randn(sizes, generator=generator).to(dtype))
        else:
            tensors.append(torch.zeros(sizes, dtype=dtype))
    return tuple(tensors) if tensors else None


def _split_inputs(torch: Any, example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """``example_inputs`` -> (positional args, keyword args); NumPy arrays become tensors."""

    def tensor(value: Any) -> Any:
        return (
            torch.from_numpy(np.ascontiguousarray(value))
            if isinstance(value, np.ndarray)
            else value
        )

    if isinstance(example_inputs, dict):
        return (), {str(k): tensor(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, tuple | list):
        return tuple(tensor(v) for v in example_inputs), None
    return (tensor(example_inputs),), None


def _script_to_exported(
    torch: Any, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, label: str
) -> Any:
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError as exc:  # pragma: no cover - present in every torch this extra allows
        raise ModelLoadError(
            f"{label}: this PyTorch cannot convert TorchScript ({exc}): save the model with "
            f"torch.export.save as .pt2 instead"
        ) from exc
    try:
        with _quiet():
            return TS2EPConverter(module, args, kwargs or {}).convert()
    except Exception as exc:
        op = _op_name(exc)
        at = f" at op {op}" if op else ""
        raise ModelLoadError(
            f"cannot convert TorchScript {label} to torch.export{at}: {_one_line(exc)}"
        ) from exc


def _onnx_export(
    torch: Any,
    target: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    dynamic_shapes: Any,
    opset: int | None,
    label: str,
) -> Any:
    try:
        with _quiet():
            return torch.onnx.export(
                target,
                args,
                kwargs=kwargs,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,
                report=False,
                verify=False,
            )
    except ImportError as exc:
        raise ModelLoadError(f"torch.onnx.export needs {exc.name or exc}: {_HINT}") from exc
    except Exception as exc:
        raise ModelLoadError(describe_export_failure(exc, label)) from exc


def describe_export_failure(exc: BaseException, label: str) -> str:
    """One line: which step failed, on which op (or source line), and PyTorch's own message.

    Args:
        exc: what ``torch.onnx.export`` raised.
        label: how to name the model in the message.

    Returns:
        The message for ``ModelLoadError``.
    """
    chain = _chain(exc)
    root = chain[-1]
    names = {type(e).__name__ for e in chain}
    op = _op_name(exc)
    quoted = _one_line(root)
    if names & {"ConversionError", "DispatchError", "GraphConstructionError"}:
        what = f"op {op}" if op else "an op"
        return f"cannot translate {what} of {label} to ONNX: {quoted}"
    step = "torch.export" if "TorchExportError" in names else "torch.onnx.export"
    where = f" (op {op})" if op else ""
    frame = _user_frame(root)
    if frame:
        where += f" at {frame}"
    return f"{step} cannot capture {label}{where}: {quoted}"


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = [exc]
    while True:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt is None or nxt in chain:
            return chain
        chain.append(nxt)


def _op_name(exc: BaseException) -> str | None:
    """The aten op a torch export error is about, from the messages of its whole chain."""
    patterns = (
        r"target=torch\.ops\.([\w.]+)",
        r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)",
        r"\b(aten::\w+(?:\.\w+)?)",
        r"\b(aten\.\w+\.\w+)",
    )
    for error in _chain(exc):
        text = str(error)
        for pattern in patterns:
            match = re.search(pattern, text)
            if match:
                return ".".join(g for g in match.groups() if g)
    return None


def _user_frame(exc: BaseException) -> str | None:
    """``file:line `source``` of the innermost traceback frame outside torch and ai_vmm."""
    skip = [str(Path(__file__).parent.parent), str(Path(__file__).resolve().parent.parent)]
    torch_module = sys.modules.get("torch")
    if torch_module is not None and torch_module.__file__:
        skip.append(str(Path(torch_module.__file__).parent))
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith("<") or any(frame.filename.startswith(d) for d in skip):
            continue
        found = f"{Path(frame.filename).name}:{frame.lineno}"
        if frame.line:
            found += f" `{frame.line.strip()}`"
    return found


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:  # "conflicts found:\n- the one that matters"
        text = f"{text} {lines[1].lstrip('- ')}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _output_names(program: Any) -> list[str] | None:
    """Names for the flattened outputs of an ``ExportedProgram``, from its output tree spec."""
    try:
        spec = program.call_spec.out_spec
    except AttributeError:
        return None
    if spec is None:
        return None
    names = list(_leaf_names(spec, ""))
    if len(names) == 1 and names[0] == "":
        return ["output"]
    names = [name if name else "output" for name in names]
    if all(name[0].isdigit() for name in names):
        names = [f"output_{name}" for name in names]
    return names if len(set(names)) == len(names) else None


def _leaf_names(spec: Any, prefix: str) -> Iterator[str]:
    get_children = getattr(spec, "children", None)  # torch >= 2.10; children_specs before
    children = list(get_children() if callable(get_children) else spec.children_specs)
    if not children:
        yield prefix
        return
    context = getattr(spec, "context", None)
    fields = getattr(context, "_fields", None)  # a namedtuple's class
    if isinstance(context, list | tuple) and len(context) == len(children):
        keys = [str(k) for k in context]
    elif fields is not None and len(fields) == len(children):
        keys = [str(k) for k in fields]
    else:
        keys = [str(i) for i in range(len(children))]
    for key, child in zip(keys, children, strict=True):
        yield from _leaf_names(child, f"{prefix}_{key}" if prefix else key)


def _name_values(graph: Any, values: Any, names: list[str] | None) -> None:
    """Rename the graph's inputs or outputs in place, skipping a name some other value has."""
    values = list(values)
    if not names or len(names) != len(values):
        return
    taken = {v.name or "" for v in graph.inputs} | set(graph.initializers)
    taken |= {v.name or "" for node in graph for v in node.outputs}
    for value, name in zip(values, names, strict=True):
        if value.name == name or name in taken:
            continue
        taken.discard(value.name or "")
        taken.add(name)
        value.name = name


def _static_numeric_dims(graph: Any) -> None:
    """A symbolic dim named like a number (``"8"``, from TorchScript conversion) is static."""
    values = [*graph.inputs, *graph.outputs, *(v for node in graph for v in node.outputs)]
    for value in values:
        shape = value.shape
        if shape is None or not any(_numeric(d) for d in shape):
            continue
        value.shape = ir.Shape([int(str(d.value)) if _numeric(d) else d for d in shape])


def _numeric(dim: Any) -> bool:
    return not isinstance(dim, int) and str(getattr(dim, "value", "")).isdigit()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's warnings and log lines (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()  # torch.export prints the partial graph of a failed capture
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stderr(sink),
            contextlib.redirect_stdout(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
