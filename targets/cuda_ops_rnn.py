"""ONNX -> torch: the recurrent layers ``LSTM``, ``GRU`` and ``RNN`` as ONNX defines them.

The time loop is ``torch._higher_order_ops.scan``: it exports with a symbolic sequence length
and AOTInductor compiles it (``nn.LSTM`` under ``torch.export`` unrolls the loop and fixes the
length). The input projection of all time steps is one matmul before the loop; the loop does the
recurrent matmul and the gates. Directions run as two loops (``reverse`` flips the sequence).

Gate orders are ONNX's (LSTM ``i, o, f, c``; GRU ``z, r, h``), the activations those ONNX
defaults to (sigmoid, tanh) or names without parameters; ``clip``, peepholes, ``input_forget``,
``linear_before_reset`` and ``layout=1`` are handled. ``sequence_lens`` is not (see
:func:`rnn_support`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch._higher_order_ops.scan import scan

from ai_vmm.targets.cuda_convert_base import ConversionError, Node, bind_sizes, onnx_op

__all__ = ["rnn_support", "scan_into_buffers"]

_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "softsign": F.softsign,
    "softplus": F.softplus,
}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {
    "LSTM": ["Sigmoid", "Tanh", "Tanh"],
    "GRU": ["Sigmoid", "Tanh"],
    "RNN": ["Tanh"],
}


def rnn_support(node: ir.Node) -> str | None:
    """Why this LSTM/GRU/RNN node does not convert, ``None`` when it does."""
    op = node.op_type
    if len(node.inputs) > 4 and node.inputs[4] is not None:
        return f"{op} with sequence_lens (sequences of different lengths in one batch)"
    attr = node.attributes.get("activations")
    for name in list(attr.value) if attr is not None else []:
        if name.lower() not in _ACTIVATIONS:
            return f"{op} activation {name} (only parameterless activations are converted)"
    return None


def _activations(node: Node, directions: int) -> list[list[Callable[[Any], Any]]]:
    names = node.attr("activations") or _DEFAULT_ACTIVATIONS[node.op_type] * directions
    per = len(_DEFAULT_ACTIVATIONS[node.op_type])
    if len(names) != per * directions:
        raise ConversionError(f"{node.op_type} needs {per * directions} activations")
    fns = [_ACTIVATIONS[n.lower()] for n in names]
    return [fns[d * per : (d + 1) * per] for d in range(directions)]


def _lstm_step(
    r: torch.Tensor,
    rb: torch.Tensor | None,
    peep: torch.Tensor | None,
    fns: list[Callable[[Any], Any]],
    clip: float | None,
    couple: bool,
) -> Callable[[Any, Any], Any]:
    f, g, h = fns
    hidden = r.shape[-1]

    def step(carry: tuple[torch.Tensor, torch.Tensor], xt: torch.Tensor) -> Any:
        h_prev, c_prev = carry
        gates = xt + h_prev @ r.t()
        if rb is not None:
            gates = gates + rb
        gi, go, gf, gc = gates.split(hidden, dim=-1)
        if peep is not None:
            pi, po, pf = peep.split(hidden, dim=-1)
            gi, gf = gi + pi * c_prev, gf + pf * c_prev
        if clip is not None:
            gi, gf, gc = gi.clamp(-clip, clip), gf.clamp(-clip, clip), gc.clamp(-clip, clip)
        i = f(gi)
        forget = 1 - i if couple else f(gf)
        c = forget * c_prev + i * g(gc)
        if peep is not None:
            go = go + po * c
        if clip is not None:
            go = go.clamp(-clip, clip)
        h_new = f(go) * h(c)
        return (h_new, c), h_new.clone()

    return step


def _gru_step(
    r: torch.Tensor,
    rb: torch.Tensor | None,
    fns: list[Callable[[Any], Any]],
    clip: float | None,
    linear_before_reset: bool,
) -> Callable[[Any, Any], Any]:
    f, g = fns
    hidden = r.shape[-1]

    def step(carry: tuple[torch.Tensor], xt: torch.Tensor) -> Any:
        # Sliced here, not outside: scan refuses closed-over tensors that alias each other.
        (h_prev,) = carry
        r_zr, r_h = r[: 2 * hidden], r[2 * hidden :]
        rb_zr = rb[: 2 * hidden] if rb is not None else None
        rb_h = rb[2 * hidden :] if rb is not None else None
        x_zr, x_h = xt[..., : 2 * hidden], xt[..., 2 * hidden :]
        zr = x_zr + h_prev @ r_zr.t()
        if rb_zr is not None:
            zr = zr + rb_zr
        if clip is not None:
            zr = zr.clamp(-clip, clip)
        z, reset = f(zr).split(hidden, dim=-1)
        if linear_before_reset:
            rec = h_prev @ r_h.t()
            if rb_h is not None:
                rec = rec + rb_h
            pre = x_h + reset * rec
        else:
            pre = x_h + (reset * h_prev) @ r_h.t()
            if rb_h is not None:
                pre = pre + rb_h
        if clip is not None:
            pre = pre.clamp(-clip, clip)
        h_new = (1 - z) * g(pre) + z * h_prev
        return (h_new,), h_new.clone()

    return step


def _rnn_step(
    r: torch.Tensor, rb: torch.Tensor | None, fns: list[Callable[[Any], Any]], clip: float | None
) -> Callable[[Any, Any], Any]:
    (f,) = fns

    def step(carry: tuple[torch.Tensor], xt: torch.Tensor) -> Any:
        (h_prev,) = carry
        pre = xt + h_prev @ r.t()
        if rb is not None:
            pre = pre + rb
        if clip is not None:
            pre = pre.clamp(-clip, clip)
        h_new = f(pre)
        return (h_new,), h_new.clone()

    return step


@onnx_op("LSTM", "GRU", "RNN")
def _recurrent(
    node: Node,
    device: torch.device,
    x: Any,
    w: Any,
    r: Any,
    b: Any = None,
    seq_lens: Any = None,
    h0: Any = None,
    c0: Any = None,
    peep: Any = None,
) -> Any:
    op = node.op_type
    if seq_lens is not None:
        raise ConversionError(f"{op} with sequence_lens")
    if op != "LSTM" and c0 is not None:
        raise ConversionError(f"{op} has no cell state input")
    direction = node.attr("direction", "forward")
    directions = 2 if direction == "bidirectional" else 1
    batch_first = bool(node.attr("layout", 0))
    if batch_first:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    hidden = r.shape[-1]
    gates = _GATES[op] * hidden
    clip_attr = node.attr("clip")
    clip = float(clip_attr) if clip_attr is not None else None
    fns = _activations(node, directions)
    batch = x.shape[1]
    ys, last_h, last_c = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        xw = torch.matmul(x, w[d].t())  # every time step's input projection at once
        rb = None
        if b is not None:
            xw = xw + b[d, :gates]
            rb = b[d, gates:]
        h_init = h0[d] if h0 is not None else x.new_zeros((batch, hidden))
        if op == "LSTM":
            c_init = c0[d] if c0 is not None else x.new_zeros((batch, hidden))
            step = _lstm_step(
                r[d],
                rb,
                peep[d] if peep is not None else None,
                fns[d],
                clip,
                bool(node.attr("input_forget", 0)),
            )
            init: tuple[torch.Tensor, ...] = (h_init, c_init)
        elif op == "GRU":
            step = _gru_step(r[d], rb, fns[d], clip, bool(node.attr("linear_before_reset", 0)))
            init = (h_init,)
        else:
            step = _rnn_step(r[d], rb, fns[d], clip)
            init = (h_init,)
        # The carry must keep the init's layout: states sliced from a transposed input are not.
        init = tuple(t.contiguous() for t in init)
        length = xw.shape[0]
        if isinstance(length, torch.SymInt) and not length.node.expr.is_Symbol:
            single = _rows(step)
            final, (y,) = scan_into_buffers(single, init, (xw,), init[:1], reverse)
        else:
            final, y = scan(_sized(step, tuple(init[0].shape)), init, xw, reverse=reverse)
        ys.append(y)
        last_h.append(final[0])
        if op == "LSTM":
            last_c.append(final[1])
    y_all = torch.stack(ys, dim=1)  # [seq, dirs, batch, H]
    y_h = torch.stack(last_h, dim=0)
    if batch_first:
        y_all, y_h = y_all.permute(2, 0, 1, 3), y_h.transpose(0, 1)
    if op != "LSTM":
        return y_all, y_h
    y_c = torch.stack(last_c, dim=0)
    return y_all, y_h, (y_c.transpose(0, 1) if batch_first else y_c)


def scan_into_buffers(
    step: Callable[[Any, Any], Any],
    init: tuple[Any, ...],
    xs: tuple[Any, ...],
    rows_like: Sequence[Any],
    reverse: bool = False,
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``scan(step, init, xs)`` with the per-step outputs written into carried buffers instead
    of stacked. ``step(carry, x) -> (new carry, rows)``, one row per buffer, each shaped like
    the matching ``rows_like``.

    For a length that is an expression of an input size (ddddocr's LSTM: ``(W - 1) // 8 + 1``
    from the image width; a ``Loop`` whose trip count is one): Inductor sizes a scan's stacked
    outputs from the scan's symbolic-int operands, and resolves an expression only from bare
    symbols among them (``KeyError: s90``, PyTorch 2.13). The buffers are allocated outside
    the loop, where the expression is known, so nothing is stacked. Each step writes its row
    into a new buffer (``index_copy``), which Inductor may copy whole: O(length^2) bytes moved,
    small for the lengths such models have.

    Returns: the final carry, the buffers.
    """
    length = xs[0].shape[0]
    count = len(init)
    buffers = tuple(r.new_zeros((length, *r.shape)) for r in rows_like)
    steps = torch.arange(length, device=xs[0].device)

    def wrapped(carry: tuple[Any, ...], inputs: tuple[Any, ...]) -> Any:
        *x, t = inputs
        new, rows = step(tuple(carry[:count]), x[0] if len(x) == 1 else tuple(x))
        outs = tuple(
            buffer.index_copy(0, t.reshape(1), row.unsqueeze(0))
            for buffer, row in zip(carry[count:], rows, strict=True)
        )
        return (*new, *outs), ()

    final, _ = scan(wrapped, (*init, *buffers), (*xs, steps), reverse=reverse)
    return tuple(final[:count]), tuple(final[count:])


def _rows(step: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``step`` with its one output as a tuple of rows (``scan_into_buffers``)."""

    def wrapped(carry: Any, xt: Any) -> Any:
        new, y = step(carry, xt)
        return new, (y,)

    return wrapped


def _sized(step: Callable[[Any, Any], Any], sizes: tuple[Any, ...]) -> Callable[[Any, Any], Any]:
    """``step`` with its per-step output in the outer symbolic sizes (``bind_sizes``)."""

    def wrapped(carry: Any, xt: Any) -> Any:
        new, y = step(carry, xt)
        return new, bind_sizes(y, sizes)

    return wrapped
