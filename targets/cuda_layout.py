"""Channels-last for GPU packages with a dynamic batch: Inductor's static-batch decision.

Inductor chooses the channels-last layout for convolution models itself
(``torch/_inductor/graph.py: GraphLowering.decide_layout_opt``) but turns it off whenever a
convolution's input has a symbolic size (pytorch/pytorch#102670), i.e. for every package with a
dynamic batch. On the H200 that cost ResNet-50 fp16 0.458 -> 0.630 ms at batch 1 and
1.53 -> 2.26 ms at batch 32 (docs/gpu.md). ``channels_last_pays`` applies the rest of Inductor's
heuristic, which does not depend on the batch, so ``cuda_build.inductor_settings`` can force the
layout where a static batch would have had it.
"""

from __future__ import annotations

import contextlib
from typing import Any


def conv2d_nodes(program: Any) -> list[Any]:
    """The program's 2-D convolutions (4-D weights)."""
    import torch

    found = []
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target in (
            torch.ops.aten.convolution.default,
            torch.ops.aten.conv2d.default,
        ):
            weight = node.args[1].meta.get("val") if len(node.args) > 1 else None
            if weight is not None and weight.dim() == 4:
                found.append(node)
    return found


# Inductor's own estimate of channels-last against contiguous, per convolution kind, for
# inference (torch/_inductor/graph.py, decide_layout_opt: < 1 is a speed-up).
_LAYOUT_MULTIPLIER = {"grouped": 1.358, "small": 0.783, "in_out": 0.725, "default": 0.823}


def channels_last_pays(program: Any, convs: list[Any]) -> bool:
    """Inductor's decision for a static batch, made for a dynamic one.

    Inductor turns channels-last off whenever a convolution's input has a symbolic size
    (pytorch/pytorch#102670); with the batch as the only symbolic size the rest of its
    heuristic still applies: not for a few convolutions in a large graph (ViT's patch
    embedding), and only where its flop-weighted estimate per convolution kind is a speed-up
    (grouped convolutions with more than one input channel per group are slower). Flops are
    counted per sample (the batch is common to all) from the output's spatial size when it is
    static, else from the weight alone.
    """
    if len(list(program.graph.nodes)) >= 300 * len(convs):
        return False
    flops: dict[str, float] = {}
    for node in convs:
        weight = node.args[1].meta["val"]
        out, inp = int(weight.shape[0]), int(weight.shape[1])
        at = 8 if node.target.__name__.startswith("convolution") else 6
        groups = node.args[at] if len(node.args) > at else node.kwargs.get("groups", 1)
        groups = groups if isinstance(groups, int) else 1
        if groups > 1 and inp > 1:
            kind = "grouped"
        elif out <= 64 and inp <= 64:
            kind = "small"
        elif out * 2 <= inp and int(weight.shape[2]) > 1:
            kind = "in_out"
        else:
            kind = "default"
        count = float(weight.numel())
        value = node.meta.get("val")
        # A spatial size torch cannot give as a number: the weight alone.
        with contextlib.suppress(AttributeError, IndexError, TypeError, ValueError):
            count *= int(value.shape[2]) * int(value.shape[3])
        flops[kind] = flops.get(kind, 0.0) + count
    total = sum(flops.values())
    return sum(v * _LAYOUT_MULTIPLIER[k] for k, v in flops.items()) <= total
