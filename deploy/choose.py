"""Judging measured candidates against the constraints, and choosing one.

Every measured candidate gets one check per constraint (its figure, the limit, pass or fail).
Among the candidates that pass every check:

1. the most preferred hardware class wins (``preferred_hardware`` order; ``CPU`` matches the
   host CPU; classes not listed come after the listed ones);
2. within it, the best value of the objective: ``cost`` = energy per inference (measured or
   estimated power x time), ``latency`` = the constrained latency percentile, ``throughput``;
3. candidates within ``TIE`` of that best value count as equal (a shared machine's noise is
   larger than that): the higher precision wins, then fewer threads, then the smaller batch.

When no candidate passes, ``ConstraintError`` names, for every constraint some candidate
failed, the best figure any candidate reached while meeting the other constraints (or
overall, when none meets the others either). With ``strict=False`` the candidate with the
smallest total relative violation is returned instead, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_vmm.deploy.builds import Build, precision_rank
from ai_vmm.deploy.constraints import Constraints
from ai_vmm.deploy.hardware import CPU_ALIAS
from ai_vmm.deploy.measure import Figures
from ai_vmm.runtime.errors import ConstraintError

TIE = 0.05
UNITS = {
    "max_latency_ms": "ms",
    "min_throughput": "/s",
    "power_budget_watts": "W",
    "max_memory_mb": "MB",
}


@dataclass
class Check:
    """One constraint on one candidate."""

    name: str
    figure: float | None
    limit: float
    ok: bool
    text: str
    violation: float = 0.0
    """How far over the limit, relative (0 when met; ``inf`` when not measurable)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "constraint": self.name,
            "figure": None if self.figure is None else round(self.figure, 6),
            "limit": self.limit,
            "ok": self.ok,
            "text": self.text,
        }


@dataclass
class Variant:
    """A build at one thread count and batch: what is measured and judged."""

    build: Build
    threads: int | None
    batch: int
    path: Path | None
    figures: Figures | None = None
    error: str = ""
    checks: list[Check] = field(default_factory=list)
    status: str = "pending"
    """``chosen``, ``meets``, ``fails`` or ``error``."""

    @property
    def key(self) -> str:
        parts = [self.build.spec.id]
        if self.threads is not None:
            parts.append(f"{self.threads} thread{'s' if self.threads > 1 else ''}")
        parts.append(f"batch {self.batch}")
        return ", ".join(parts)

    @property
    def hardware(self) -> str:
        return self.build.spec.hardware

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def meets(self) -> bool:
        return self.figures is not None and not self.error and not self.failed


def judge(variant: Variant, constraints: Constraints) -> list[Check]:
    """One check per constraint that is set."""
    figures = variant.figures
    assert figures is not None
    checks: list[Check] = []
    pct = constraints.latency_percentile
    if constraints.max_latency_ms is not None:
        value = figures.latency(pct)
        checks.append(
            _upper("max_latency_ms", value, constraints.max_latency_ms, f"p{pct:g} latency")
        )
    if constraints.min_throughput is not None:
        value = figures.throughput
        limit = constraints.min_throughput
        ok = value >= limit
        checks.append(
            Check(
                "min_throughput",
                value,
                limit,
                ok,
                f"throughput {value:.1f}/s {'>=' if ok else '<'} {limit:g}/s",
                0.0 if ok else (limit / value - 1.0 if value > 0 else math.inf),
            )
        )
    if constraints.power_budget_watts is not None:
        power = figures.power
        if power is None:
            checks.append(
                Check(
                    "power_budget_watts",
                    None,
                    constraints.power_budget_watts,
                    False,
                    "power not known",
                    math.inf,
                )
            )
        else:
            label = "power" if power.measured else "power (estimated)"
            checks.append(
                _upper("power_budget_watts", power.watts, constraints.power_budget_watts, label)
            )
    if constraints.max_memory_mb is not None:
        memory = figures.memory_mb
        if memory is None:
            checks.append(
                Check(
                    "max_memory_mb",
                    None,
                    constraints.max_memory_mb,
                    True,
                    "memory not measurable here (no /proc): not enforced",
                )
            )
        else:
            checks.append(_upper("max_memory_mb", memory, constraints.max_memory_mb, "memory"))
    accuracy = variant.build.accuracy
    for metric, limit in sorted(constraints.max_accuracy_drop.items()):
        drops = (accuracy or {}).get("drops", {})
        name = f"max_accuracy_drop.{metric}"
        if metric not in drops:
            why = "no reference" if accuracy is None else "not applicable to these outputs"
            checks.append(Check(name, None, limit, True, f"{metric} drop {why}: not enforced"))
            continue
        checks.append(_upper(name, float(drops[metric]), limit, f"{metric} drop", unit=""))
    return checks


def _upper(name: str, value: float, limit: float, label: str, unit: str | None = None) -> Check:
    unit = UNITS.get(name, "") if unit is None else unit
    ok = value <= limit
    sep = " " if unit and unit != "/s" else ""
    violation = 0.0 if ok else (value / limit - 1.0 if limit > 0 else math.inf)
    return Check(
        name,
        value,
        limit,
        ok,
        f"{label} {_fmt(value)}{sep}{unit} {'<=' if ok else '>'} {limit:g}{sep}{unit}",
        violation,
    )


def _fmt(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"


def preference_rank(hardware: str, preferred: Sequence[str], host_cpu: str) -> int:
    """Position of ``hardware`` in ``preferred`` (``CPU`` matches the host CPU class)."""
    for index, name in enumerate(preferred):
        if name == hardware or (name == CPU_ALIAS and hardware == host_cpu):
            return index
    return len(preferred)


def objective_value(variant: Variant, constraints: Constraints) -> float:
    """Smaller is better."""
    figures = variant.figures
    if figures is None:
        return math.inf
    objective = constraints.objective
    if objective == "latency":
        return figures.latency(constraints.latency_percentile)
    if objective == "throughput":
        return -figures.throughput
    energy = figures.energy_j
    return energy if energy is not None else math.inf


def choose(
    variants: Sequence[Variant],
    constraints: Constraints,
    host_cpu: str,
    *,
    strict: bool,
) -> tuple[Variant, str, bool]:
    """The chosen variant, the rule that chose it, and whether it meets every constraint.

    Raises:
        ConstraintError: no variant meets every constraint and ``strict`` is set, or nothing
            could be measured at all.
    """
    measured = [v for v in variants if v.figures is not None and not v.error]
    if not measured:
        reasons = "; ".join(f"{v.key}: {v.error}" for v in variants if v.error)[:600]
        raise ConstraintError(
            f"no deployment candidate could be measured ({reasons or 'none built'})"
        )
    for variant in measured:
        variant.checks = judge(variant, constraints)
    meeting = [v for v in measured if v.meets]
    if meeting:
        best_rank = min(
            preference_rank(v.hardware, constraints.preferred_hardware, host_cpu) for v in meeting
        )
        group = [
            v
            for v in meeting
            if preference_rank(v.hardware, constraints.preferred_hardware, host_cpu) == best_rank
        ]
        chosen, rule = best_of(group, constraints)
        _mark(variants, chosen)
        return chosen, rule, True
    message = best_achievable(measured, constraints)
    if strict:
        _mark(variants, None)
        raise ConstraintError(message)
    closest = min(
        measured,
        key=lambda v: (
            sum(c.violation for c in v.failed),
            preference_rank(v.hardware, constraints.preferred_hardware, host_cpu),
            objective_value(v, constraints),
        ),
    )
    _mark(variants, closest)
    return closest, f"closest to the constraints (strict=False): {message}", False


def best_of(group: Sequence[Variant], constraints: Constraints) -> tuple[Variant, str]:
    """The best of ``group`` by the objective (within ``TIE``: higher precision, fewer threads,
    smaller batch), and the rule that says so."""
    values = {id(v): objective_value(v, constraints) for v in group}
    best = min(values.values())
    if math.isfinite(best):
        margin = abs(best) * TIE
        equal = [v for v in group if values[id(v)] <= best + margin]
    else:
        equal = list(group)
    equal.sort(
        key=lambda v: (
            precision_rank(v.build.spec.precision),
            v.threads or 0,
            v.batch,
            values[id(v)],
            v.key,
        )
    )
    chosen = equal[0]
    objective = constraints.objective
    what = {
        "cost": "the least energy per inference",
        "latency": f"the lowest p{constraints.latency_percentile:g} latency",
        "throughput": "the highest throughput",
    }[objective]
    rule = f"{what} among the {len(group)} candidates that meet every constraint"
    if constraints.preferred_hardware:
        rule += f" on {chosen.hardware}"
    if len(equal) > 1:
        rule += (
            f"; {len(equal)} were within {TIE:.0%} of the best, so the higher precision, fewer "
            "threads and the smaller batch decided"
        )
    return chosen, rule


def _mark(variants: Sequence[Variant], chosen: Variant | None) -> None:
    for variant in variants:
        if variant.error or variant.figures is None:
            variant.status = "error"
        elif variant is chosen:
            variant.status = "chosen"
        else:
            variant.status = "meets" if variant.meets else "fails"


def best_achievable(measured: Sequence[Variant], constraints: Constraints) -> str:
    """One line: for each constraint that some candidate failed, the best figure reached."""
    names = sorted({c.name for v in measured for c in v.failed}, key=_order)
    parts = []
    for name in names:
        others_ok = [v for v in measured if all(c.ok for c in v.checks if c.name != name)]
        pool, scope = (
            (others_ok, "")
            if others_ok
            else (list(measured), " (no candidate meets the other constraints either)")
        )
        best = _best_for(name, pool)
        if best is None:
            continue
        check = next(c for c in best.checks if c.name == name)
        parts.append(f"best {check.text} ({best.key}){scope}")
    count = len(measured)
    return (
        f"no deployment candidate meets the constraints ({constraints.describe()}): "
        + "; ".join(parts)
        + f" ({count} candidates measured; see explain())"
    )


def _order(name: str) -> int:
    order = ["max_latency_ms", "min_throughput", "power_budget_watts", "max_memory_mb"]
    return order.index(name) if name in order else len(order)


def _best_for(name: str, pool: Sequence[Variant]) -> Variant | None:
    scored = []
    for variant in pool:
        check = next((c for c in variant.checks if c.name == name), None)
        if check is None or check.figure is None:
            continue
        better = -check.figure if name == "min_throughput" else check.figure
        scored.append((better, variant.key, variant))
    if not scored:
        return None
    return min(scored, key=lambda item: (item[0], item[1]))[2]
