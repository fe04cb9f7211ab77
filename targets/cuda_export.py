"""The cuda target's ``torch.export`` step: example inputs from the graph's inputs, the export
with named dynamic dimensions (and its fallbacks), and the ranges the exported program keeps.

Split from ``cuda_build`` (which orchestrates the build); docs/gpu.md tells why each fallback
exists.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from typing import Any

import onnx_ir as ir

from ai_vmm.runtime.errors import CompileError
from ai_vmm.targets.base import axis_symbol

DEFAULT_MAX_DIM = 4096
"""Upper bound of a dynamic axis without an ``--input`` range (torch.export needs none, but a
bound keeps Inductor's guards and kernel choices sane)."""


def example_inputs(
    inputs: list[ir.Value],
    bounds: dict[str, list[Any]],
    sample_dims: dict[str, int],
    torch_device: str,
    sample_sizes: dict[str, list[int]] | None = None,
) -> tuple[list[Any], dict[str, tuple[int, int]]]:
    """Example tensors for ``torch.export`` and the (min, max) of every symbolic dimension.

    A dynamic axis gets size >= 2 in the example (torch.export specialises sizes 0 and 1).
    Without a bound from the user an axis ranges over 1..``DEFAULT_MAX_DIM``, or up to the
    largest size the samples show (``sample_sizes``) where that is larger: openWakeWord's
    mel-spectrogram takes 32,000 audio samples, and a package compiled for at most 4,096 was
    refused on its own sample (H100, 2026-12-06).
    """
    import torch

    from ai_vmm.targets.cuda_convert import torch_dtype

    dims: dict[str, tuple[int, int]] = {}
    tensors = []
    generator = torch.Generator().manual_seed(0)
    for value in inputs:
        shape: list[int] = []
        limits = bounds.get(value.name or "") or []
        for axis, dim in enumerate(value.shape or []):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            symbol = axis_symbol(value, axis, dim)
            seen = (sample_sizes or {}).get(symbol) or [0]
            low, high = 1, max(DEFAULT_MAX_DIM, *(int(n) for n in seen))
            bound = limits[axis] if axis < len(limits) else None
            if isinstance(bound, list | tuple) and len(bound) == 2:
                low, high = int(bound[0] or 1), int(bound[1] or high)
            elif isinstance(bound, int):
                low = high = bound
            if symbol in dims:
                low, high = max(low, dims[symbol][0]), min(high, dims[symbol][1])
            dims[symbol] = (low, high)
            size = sample_dims.get(symbol, 2)
            shape.append(min(max(size, low, 2), high))
        dtype = torch_dtype(value.dtype)
        if dtype.is_floating_point:
            data = torch.randn(shape, dtype=torch.float32, generator=generator).to(dtype)
        else:
            data = torch.zeros(shape, dtype=dtype)
        tensors.append(data.to(torch_device))
    return tensors, dims


def wanted(
    inputs: list[ir.Value], dims: dict[str, tuple[int, int]]
) -> list[dict[int, tuple[int, int]]]:
    """Per input, the (min, max) asked for each dynamic axis."""
    out = []
    for value in inputs:
        axes = {}
        for axis, dim in enumerate(value.shape or []):
            if not isinstance(dim, int):
                low, high = dims[axis_symbol(value, axis, dim)]
                if low != high:
                    axes[axis] = (low, high)
        out.append(axes)
    return out


def export(
    module: Any,
    example: list[Any],
    arg_names: list[str],
    dims: dict[str, tuple[int, int]],
    inputs: list[ir.Value],
) -> tuple[Any, str]:
    """``torch.export`` with named dims, keeping the lower bounds asked for.

    When the named export fails, DYNAMIC hints find the ranges the model really allows (a
    position table caps a sequence axis at 128, say), but hints also raise every lower bound
    of 1 to 2 (export's 0/1 specialization): a package that then refuses batch 1. So the named
    export is retried with the hints' upper bounds and the asked-for lower bounds, then the same
    under ``backed_size_oblivious`` (size 1 not special: torch 2.11 guarded ``batch != 1`` where
    2.13 proves it away), and only then are the hints' ranges kept; AUTO last (the model pins
    an axis: export decides). The compile verifies the package at the sample sizes either way.
    """
    import torch
    from torch.export import Dim

    if getattr(module, "runs_loops", False):
        # A scan body is compiled by dynamo, which caches it by code object across modules: a
        # body traced before at a fixed batch (an eager run of another model) left a guard
        # `3 != B` in this export (tests, 2026-12-05). A fresh compiler state per loop export
        # (other torch.compile'd code in the process recompiles on its next call).
        torch.compiler.reset()

    def named(bounds: dict[str, tuple[int, int]]) -> dict[str, Any]:
        return {s: Dim(_dim_name(s), min=lo, max=hi) for s, (lo, hi) in bounds.items() if lo != hi}

    def hint(symbol: str) -> Any:
        low, high = dims[symbol]
        try:
            return Dim.DYNAMIC(min=low, max=high)
        except TypeError:  # a torch whose hints take no bounds
            return Dim.DYNAMIC

    def shapes(mode: str, bounds: dict[str, tuple[int, int]]) -> Any:
        dynamic = named(bounds)
        spec = []
        for value in inputs:
            axes: dict[int, Any] = {}
            for axis, dim in enumerate(value.shape or []):
                if isinstance(dim, int):
                    continue
                symbol = axis_symbol(value, axis, dim)
                if symbol in dynamic:
                    axes[axis] = {"named": dynamic[symbol], "auto": Dim.AUTO}.get(mode) or hint(
                        symbol
                    )
            spec.append(axes or None)
        return dict(zip(arg_names, spec, strict=True))

    def attempt(mode: str, bounds: dict[str, tuple[int, int]], oblivious: bool = False) -> Any:
        from torch.fx.experimental import _config as fx_config

        patch: Any = (
            fx_config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]
            if oblivious and hasattr(fx_config, "backed_size_oblivious")
            else contextlib.nullcontext()
        )
        with patch:
            return torch.export.export(
                module, tuple(example), dynamic_shapes=shapes(mode, bounds), strict=False
            )

    errors: list[str] = []
    with quiet():
        try:
            return attempt("named", dims), ""
        except Exception as exc:
            errors.append(one_line(exc))
        try:
            hinted = attempt("hints", dims)
        except Exception as exc:
            errors.append(one_line(exc))
            hinted = None
        if hinted is not None:
            found = program_ranges(hinted, inputs)
            narrowed = {s: (lo, min(hi, found.get(s, (lo, hi))[1])) for s, (lo, hi) in dims.items()}
            for oblivious in (False, True):
                try:
                    program = attempt("named", narrowed, oblivious)
                except Exception as exc:
                    errors.append(one_line(exc))
                    continue
                how = "size 1 taken obliviously, " if oblivious else ""
                return program, f"exported with {how}the ranges the model allows: {errors[0][:300]}"
            return hinted, f"exported with hints: {errors[0][:300]}"
        try:
            program = attempt("auto", dims)
        except Exception as exc:
            errors.append(one_line(exc))
            raise CompileError(f"cuda target: torch.export failed: {errors[-1]}") from None
        return program, f"some axes were pinned by the model: {errors[0][:300]}"


def _bound(value: Any, unbounded: int) -> int:
    """A range end as an int (torch's ``int_oo`` says ``is_finite`` yet has no int value)."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return unbounded


def program_ranges(program: Any, inputs: list[ir.Value]) -> dict[str, tuple[int, int]]:
    """The range of each ONNX dimension symbol as the exported program bounds it."""
    found: dict[str, tuple[int, int]] = {}
    for value, spec in zip(inputs, input_specs(program, inputs, {}), strict=True):
        for axis_key, (low, high) in spec["ranges"].items():
            dim = (value.shape or [])[int(axis_key)]
            if isinstance(dim, int):
                continue
            symbol = axis_symbol(value, int(axis_key), dim)
            old = found.get(symbol, (low, high))
            found[symbol] = (max(low, old[0]), min(high, old[1]))
    return found


def _dim_name(symbol: str) -> str:
    import re

    name = re.sub(r"\W", "_", symbol)
    return name if name and not name[0].isdigit() else f"d_{name}"


def input_specs(
    program: Any, inputs: list[ir.Value], dims: dict[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """Each input as the package takes it: fixed sizes (``None`` where dynamic), the range
    of each dynamic axis (the executor enforces it: AOTInductor does not) and its symbol
    (axes sharing one must be equal)."""
    user = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    ranges = program.range_constraints
    specs = []
    for index, value in enumerate(inputs):
        spec: dict[str, Any] = {"name": value.name or "", "shape": [], "ranges": {}}
        symbols: dict[str, str] = {}
        fake = placeholders[index].meta.get("val") if index < len(placeholders) else None
        shape = list(getattr(fake, "shape", ())) or [None] * len(value.shape or [])
        for axis, size in enumerate(shape):
            if isinstance(size, int):
                spec["shape"].append(int(size))
                continue
            spec["shape"].append(None)
            expr = getattr(getattr(size, "node", None), "expr", None)
            bound = ranges.get(expr) if expr is not None else None
            if bound is not None:
                low, high = _bound(bound.lower, 0), _bound(bound.upper, 2**31 - 1)
                spec["ranges"][str(axis)] = [low, high]
                symbols[str(axis)] = str(expr)
        if symbols:
            spec["symbols"] = symbols
        specs.append(spec)
    return specs


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep torch's export/compile chatter off the user's terminal."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


__all__ = [
    "DEFAULT_MAX_DIM",
    "example_inputs",
    "export",
    "input_specs",
    "one_line",
    "program_ranges",
    "quiet",
    "wanted",
]
