"""The cuda target's checks of an exported program and its package against the module it came
from: the smallest sizes of each dynamic dimension, batch padding where rows do not mix, the
package's self-check (torch route) and CUDA-graph capture.

Split from ``cuda_build`` (which orchestrates the build and acts on these results).
"""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir

from ai_vmm.targets.base import axis_symbol
from ai_vmm.targets.cuda_export import one_line

SELF_CHECK = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 4e-2}
"""Largest relative error norm ``|pkg - eager| / |eager|`` a torch-route package may show."""

_log = logging.getLogger(__name__)


class RouteError(Exception):
    """The torch route cannot give this model's package (the message says why)."""


def smallest_sizes_check(
    exported: Any,
    module: Any,
    example: list[Any],
    specs: list[dict[str, Any]],
    precision: str,
    candidates: dict[tuple[int, int], list[int]] | None = None,
) -> str:
    """Run the exported program at the smallest size of each dynamic dimension, against the
    module.

    Export traces at sizes >= 2 and may take size 1 obliviously: a branch on ``batch == 1``
    is then traced the other way with nothing to say so (torch 2.13 exports such a branch with
    the range 1..N). Where the two disagree, that dimension's lower bound goes up to the
    smallest size the user's samples take below the example's (``candidates``, per input
    index and axis) at which the two agree, else to the example's size, then down by halves
    while the module runs and the two agree (the executor refuses the rest); the returned text
    names the axes; '' when they agree everywhere. (A PP-OCR detector's hinted export, refused
    below its first sample's width of 1472, failed its own second sample, 1088 wide: H200,
    2026-12-05. Now its width starts at 544, its height at 736.)
    """

    by_symbol: dict[str, list[tuple[int, dict[str, Any], int, int, int]]] = {}
    for index, (tensor, spec) in enumerate(zip(example, specs, strict=True)):
        for axis_key, (low, _high) in spec["ranges"].items():
            axis = int(axis_key)
            if 1 <= low < tensor.shape[axis]:
                symbol = spec.get("symbols", {}).get(axis_key, f"{index}:{axis}")
                entry = (index, spec, axis, int(low), int(tensor.shape[axis]))
                by_symbol.setdefault(symbol, []).append(entry)
    raised: list[str] = []
    for entries in by_symbol.values():
        smallest = list(example)
        for index, _spec, axis, low, _size in entries:
            smallest[index] = smallest[index].narrow(axis, 0, low)
        if agree(exported, module, smallest, precision):
            continue
        index, _spec, axis, low, size = entries[0]
        tried = [n for n in (candidates or {}).get((index, axis), []) if low < n < size]
        for least in [*tried, size]:
            if least == size or agree(
                exported, module, _narrowed(example, entries, least), precision
            ):
                break
        # Below that, halve while the model runs there and the two agree: the sizes that fail
        # are usually few and small (the size-1 branch), and a range that starts at the first
        # sample's size refuses every smaller input a user sends.
        trial = least // 2
        while trial > low and agree(
            exported, module, _narrowed(example, entries, trial), precision, vacuous=False
        ):
            least, trial = trial, trial // 2
        for _index, spec, axis, _low, _size in entries:
            spec["ranges"][str(axis)][0] = least
            raised.append(f"{spec['name']} axis {axis} below {least}")
    return ", ".join(raised[:4])


def _narrowed(
    example: list[Any], entries: list[tuple[int, dict[str, Any], int, int, int]], size: int
) -> list[Any]:
    """``example`` with every (input, axis) of ``entries`` cut to ``size``."""
    out = list(example)
    for index, _spec, axis, _low, _size in entries:
        out[index] = out[index].narrow(axis, 0, size)
    return out


def batch_padding(
    program: Any,
    exported: Any,
    module: Any,
    example: list[Any],
    specs: list[dict[str, Any]],
    dims: dict[str, tuple[int, int]],
    inputs: list[ir.Value],
    precision: str,
    outputs: list[str],
) -> dict[str, Any] | str:
    """Where the package's batch range starts above the one asked for, whether a smaller batch
    can run padded up to the package's least batch (rows repeated, outputs cut back).

    Torch 2.11 exported the zoo Llama with batch 2..N whatever we asked (H200, 2026-12-04),
    and the executor refused batch 1; torch 2.13 exports Silero VAD's streaming model with its
    batch from 2, and there the batch is axis 1 of the state input and output. The batch is a
    dynamic dimension whose least size went up and that leads at least one input; it may be
    another axis of other inputs (inputs without it pass as they are), and every output must
    have it on one axis. Padding is right only where rows do not mix: the program at the padded
    size must give the model's own result at the small one (checked on the example's rows). Returns
    ``{"from": small, "to": least, "inputs": {name: axis}, "outputs": {name: axis}}``, or why
    not (recorded in the payload's note). Other raised dimensions stay refused.
    """
    raised: dict[str, int] = {}  # export symbol -> the least axis it is on
    asked: dict[str, set[int]] = {}
    for spec, value in zip(specs, inputs, strict=True):
        for axis, dim in enumerate(value.shape or []):
            expr = spec.get("symbols", {}).get(str(axis))
            if isinstance(dim, int) or expr is None:
                continue
            want = dims[axis_symbol(value, axis, dim)][0]
            asked.setdefault(expr, set()).add(int(want))
            if spec["ranges"].get(str(axis), [0, 0])[0] > want:
                raised[expr] = min(axis, raised.get(expr, axis))
    reasons: list[str] = []
    for expr in [e for e, axis in raised.items() if axis == 0]:  # a batch leads some input
        found = _padding_for(program, specs, expr)
        if isinstance(found, str):
            reasons.append(found)
            continue
        small = next(iter(asked[expr])) if len(asked[expr]) == 1 else 0
        if not 1 <= small < found["to"]:
            reasons.append(f"no padding: no single size below {found['to']} asked for {expr}")
            continue
        if len(outputs) != len(found["outputs"]):
            return f"no padding: {len(outputs)} outputs, the program gives {len(found['outputs'])}"
        checked = _rows_do_not_mix(
            exported,
            module,
            example,
            found["axes"],
            found["outputs"],
            small,
            found["to"],
            precision,
        )
        if checked:
            reasons.append(checked)
            continue
        return {
            "from": int(small),
            "to": int(found["to"]),
            "inputs": {inputs[i].name: axis for i, axis in found["axes"].items()},
            "outputs": dict(zip(outputs, found["outputs"], strict=True)),
        }
    return reasons[0] if reasons else ""


def _padding_for(program: Any, specs: list[dict[str, Any]], expr: str) -> dict[str, Any] | str:
    """Where the dimension ``expr`` is: at most one axis of each input, exactly one of each
    output; the least size the package takes. Or why it cannot be the padded batch."""
    pairs = [
        (index, int(axis_key))
        for index, spec in enumerate(specs)
        for axis_key, symbol in spec.get("symbols", {}).items()
        if symbol == expr
    ]
    axes = dict(pairs)
    if len(axes) != len(pairs):
        return f"no padding: an input has {expr} on two axes"
    first = next(iter(axes))
    least = int(specs[first]["ranges"][str(axes[first])][0])
    out_nodes = next(n for n in program.graph.nodes if n.op == "output").args[0]
    out_axes: list[int] = []
    for node in out_nodes:
        shape = getattr(getattr(node, "meta", {}).get("val"), "shape", ())
        found = [
            axis
            for axis, size in enumerate(shape)
            if is_size(getattr(getattr(size, "node", None), "expr", None), expr)
        ]
        if len(found) != 1:
            return f"no padding: an output does not have the batch ({expr}) on one axis"
        out_axes.append(found[0])
    return {"axes": axes, "outputs": out_axes, "to": least}


def _rows_do_not_mix(
    exported: Any,
    module: Any,
    example: list[Any],
    axes: dict[int, int],
    out_axes: list[int],
    small: int,
    least: int,
    precision: str,
) -> str:
    """The program at ``least`` rows, cut back to ``small``, gives the module's result at
    ``small``; '' if so, else why not."""
    import torch

    if any(example[i].shape[a] < small for i, a in axes.items()):
        return "no padding: the example has fewer rows than the batch asked for"
    # Checked with other rows than the executor's padding (it repeats the last row): a copy of
    # a row hides mixing that averages rows. Where the example (the user's samples: often one
    # image) has too few rows, the extra ones are its rows mirrored along the last axis.
    rows = [t.narrow(axes[i], 0, small) if i in axes else t for i, t in enumerate(example)]
    padded = [
        rows_up_to(t, least, torch, axes[i]) if i in axes else t for i, t in enumerate(example)
    ]
    try:
        with torch.inference_mode():
            want = torch.utils._pytree.tree_leaves(module(*rows))
            got = torch.utils._pytree.tree_leaves(exported(*padded))
    except Exception as exc:
        return f"no padding: the check at batch {least} failed: {one_line(exc)[:200]}"
    if len(got) != len(out_axes):
        return f"no padding: {len(got)} outputs, the program's graph has {len(out_axes)}"
    cut = [g.narrow(axis, 0, small) for g, axis in zip(got, out_axes, strict=True)]
    differs = difference(cut, want, precision)
    if differs:
        return f"no padding: rows mix (batch {least} cut to {small} differs: {differs})"
    return ""


def is_size(size: Any, symbol: str) -> bool:
    """Whether the symbolic ``size`` is the size ``symbol`` itself: the same expression, or one
    of that symbol alone that gives it back at every size tried (``floor(1.0 * s)`` from a
    resize by 1.0 is ``s``, though torch.export writes it otherwise)."""
    if size is None:
        return False
    if str(size) == symbol:
        return True
    free: set[Any] = set(getattr(size, "free_symbols", ()) or ())
    if len(free) != 1 or str(next(iter(free))) != symbol:
        return False
    (name,) = free
    try:
        return all(int(size.xreplace({name: value})) == value for value in (1, 2, 3, 17, 640, 4097))
    except (TypeError, ValueError):
        return False


def rows_up_to(tensor: Any, rows: int, torch: Any, axis: int = 0) -> Any:
    """``tensor``'s first ``rows`` rows along ``axis``, completed with its own rows mirrored
    along the last axis (other values of the same kind and range) where it has fewer."""
    if axis:
        moved = rows_up_to(tensor.movedim(axis, 0), rows, torch)
        return moved.movedim(0, axis).contiguous()
    if tensor.shape[0] >= rows:
        return tensor.narrow(0, 0, rows)
    extra = tensor.flip(-1) if tensor.dim() > 1 else tensor
    while tensor.shape[0] + extra.shape[0] < rows:
        extra = torch.cat([extra, extra])
    return torch.cat([tensor, extra.narrow(0, 0, rows - tensor.shape[0])])


def agree(
    exported: Any, module: Any, feeds: list[Any], precision: str, *, vacuous: bool = True
) -> bool:
    """The exported program computes what the module computes on these inputs (or, with
    ``vacuous``, the module itself cannot take them: not a valid combination of sizes,
    nothing to say)."""
    import torch

    try:
        with torch.inference_mode():
            want = torch.utils._pytree.tree_leaves(module(*feeds))
    except Exception:
        return vacuous
    try:
        with torch.inference_mode():
            got = torch.utils._pytree.tree_leaves(exported(*feeds))
    except Exception:  # the model runs there and the program does not
        return False
    return not difference(got, want, precision)


def difference(got: Any, want: Any, precision: str) -> str:
    """How ``got`` differs from ``want`` (output by output: shape, exact for integers, relative
    error norm within ``SELF_CHECK`` for floats); '' when it does not."""
    import torch

    got, want = list(got), list(want)
    if len(got) != len(want):
        return f"{len(got)} outputs, the program gives {len(want)}"
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        if a.shape != b.shape:
            return f"output {index}: shape {tuple(a.shape)}, the program gives {tuple(b.shape)}"
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return f"output {index} differs from the program's"
            continue
        ref = b.double()
        err = float((a.double() - ref).norm() / ref.norm().clamp_min(1e-12))
        if not err <= SELF_CHECK[precision]:
            return f"output {index} differs from the program's by {err:.2e} (relative norm)"
    return ""


def self_check(runner: Any, module: Any, example: list[Any], precision: str) -> None:
    """The package computes what the program it was built from computes (torch route)."""
    import torch

    with torch.inference_mode():
        want = module(*example)
        got = runner(*example)
    differs = difference(got, want, precision)
    if differs:
        raise RouteError(differs)


def graphs_work(runner: Any, example: list[Any], torch_device: str) -> bool:
    """Whether the package runs under CUDA-graph capture and replays the same outputs."""
    import torch

    from ai_vmm.runtime.executors.cuda import capture

    try:
        with torch.inference_mode():
            expected = [o.clone() for o in runner(*example)]
            graph = capture(runner, example, torch.device(torch_device))
            graph.graph.replay()
            torch.cuda.synchronize(torch.device(torch_device))
            got = [o.clone() for o in graph.outputs]
        return all(
            torch.equal(a, b) or torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-3)
            for a, b in zip(expected, got, strict=True)
        )
    except Exception as exc:
        _log.debug("CUDA graph capture failed: %s", exc)
        return False


__all__ = [
    "SELF_CHECK",
    "RouteError",
    "agree",
    "batch_padding",
    "difference",
    "graphs_work",
    "is_size",
    "rows_up_to",
    "self_check",
    "smallest_sizes_check",
]
