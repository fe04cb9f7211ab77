"""Plans and dispatch: which partitions run for a call, in which order.

An artifact holds one plan (every partition, in order) or several, one per shape bucket
(``Manifest.plans``): the compiler found that another device or config wins at, say, larger
batches. ``select_plan`` takes the first plan whose ``when`` ranges hold for the call's input
shapes; the last plan has none and takes every other call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ai_vmm.runtime.artifact import Manifest, PartitionSpec
from ai_vmm.runtime.executors import Executor

Ranges = tuple[tuple[str, int, int, int], ...]
"""(input, axis, low, high) that must all hold."""


@dataclass
class Plan:
    """One way to run the model: partitions in waves, and the ranges it is chosen for."""

    id: str
    partitions: tuple[PartitionSpec, ...]
    waves: list[list[PartitionSpec]]
    ranges: Ranges
    direct: Executor | None
    """The executor of a one-partition plan fed by every model input (no routing needed)."""

    def matches(self, inputs: Mapping[str, Any]) -> bool:
        for name, axis, low, high in self.ranges:
            shape = np.shape(inputs[name]) if name in inputs else ()
            if axis >= len(shape) or not low <= shape[axis] <= high:
                return False
        return True


def build_plans(manifest: Manifest, executors: dict[str, Executor]) -> list[Plan]:
    """The artifact's plans (one covering every partition when the manifest lists none)."""
    by_id = {part.id: part for part in manifest.partitions}
    specs = manifest.plans or ()
    if not specs:
        return [_plan("default", manifest.partitions, (), manifest, executors)]
    plans = []
    for spec in specs:
        ranges = tuple(
            (name, int(axis), int(r.get("min", 0)), int(r.get("max", 2**62)))
            for name, axes in sorted(spec.when.items())
            for axis, r in sorted(axes.items())
        )
        parts = tuple(by_id[p] for p in spec.partitions)
        plans.append(_plan(spec.id, parts, ranges, manifest, executors))
    return plans


def select_plan(plans: list[Plan], inputs: Mapping[str, Any]) -> Plan:
    """The first plan whose ranges hold for ``inputs`` (the last one when none does)."""
    if len(plans) == 1:
        return plans[0]
    for plan in plans[:-1]:
        if plan.matches(inputs):
            return plan
    return plans[-1]


def _plan(
    plan_id: str,
    partitions: tuple[PartitionSpec, ...],
    ranges: Ranges,
    manifest: Manifest,
    executors: dict[str, Executor],
) -> Plan:
    single = partitions[0] if len(partitions) == 1 else None
    model_inputs = {s.name for s in manifest.inputs}
    direct = (
        executors[single.id] if single is not None and set(single.inputs) == model_inputs else None
    )
    return Plan(plan_id, partitions, partition_waves(partitions), ranges, direct)


def partition_waves(partitions: tuple[PartitionSpec, ...]) -> list[list[PartitionSpec]]:
    """Group partitions into waves: each wave's partitions only need earlier waves' outputs.

    Partitions of one wave that share a device stay in separate waves (a device runs one
    partition at a time), so only work on different devices overlaps.
    """
    produced_in: dict[str, int] = {}
    waves: list[list[PartitionSpec]] = []
    for part in partitions:
        earliest = max((produced_in[n] + 1 for n in part.inputs if n in produced_in), default=0)
        while earliest < len(waves) and any(
            (p.target, p.device) == (part.target, part.device) for p in waves[earliest]
        ):
            earliest += 1
        if earliest == len(waves):
            waves.append([])
        waves[earliest].append(part)
        for name in part.outputs:
            produced_in[name] = earliest
    return waves
