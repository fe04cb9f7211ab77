"""The explanation of a deployment: what was searched, measured, failed and chosen, and why.

``explanation(...)`` turns a search result into a JSON-ready dict (stored beside the chosen
artifact, so a later deploy from the store explains itself too); ``format_explanation``
renders it as text: the hardware (present, absent and why), how the preferences played out,
the constraints, the samples, where power figures come from, every build, and one row per
measured candidate with its figures and the constraints it failed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ai_vmm.deploy.choose import Variant, preference_rank
from ai_vmm.deploy.constraints import Constraints
from ai_vmm.deploy.hardware import CPU_ALIAS, Hardware
from ai_vmm.deploy.replicas import format_replicas

OBJECTIVES = {
    "cost": "cost = energy per inference",
    "latency": "latency",
    "throughput": "throughput",
}


def preference_notes(
    hardware: Sequence[Hardware],
    constraints: Constraints,
    chosen: Variant,
    variants: Sequence[Variant],
    host_cpu: str,
) -> list[str]:
    """How ``preferred_hardware`` played out: absent classes (why), failures, the fallback."""
    preferred = constraints.preferred_hardware
    if not preferred:
        return []
    by_name = {h.name: h for h in hardware}
    notes = []
    rank = preference_rank(chosen.hardware, preferred, host_cpu)
    for index, name in enumerate(preferred[: rank + 1] if rank < len(preferred) else preferred):
        resolved = host_cpu if name == CPU_ALIAS else name
        entry = by_name.get(resolved)
        if entry is None or not entry.present:
            why = entry.why if entry is not None else "unknown"
            notes.append(f"preference {index + 1} {name}: absent ({why})")
            continue
        if resolved == chosen.hardware:
            what = name if resolved == name else f"{name} ({resolved})"
            notes.append(f"preference {index + 1} {what}: chosen")
            break
        mine = [v for v in variants if v.hardware == resolved]
        if not mine:
            notes.append(f"preference {index + 1} {name}: present, but no candidate built on it")
            continue
        failures = sorted({c.text for v in mine for c in v.failed})
        errors = [v.error for v in mine if v.error]
        reason = "; ".join(failures[:3]) or "; ".join(errors[:2]) or "not the closest"
        notes.append(
            f"preference {index + 1} {name}: no candidate on it met the constraints ({reason})"
        )
    if rank >= len(preferred):
        notes.append(
            f"chose {chosen.hardware}, which is not in preferred_hardware: no preferred class "
            "is present or meets the constraints"
        )
    elif rank > 0:
        notes.append(f"fell back to preference {rank + 1} ({chosen.hardware})")
    return notes


def explanation(
    *,
    model: dict[str, Any],
    hardware: Sequence[Hardware],
    constraints: Constraints,
    result: Any,
    telemetry: list[str],
    preferences: list[str],
    extra_notes: list[str],
) -> dict[str, Any]:
    """The JSON-ready record of a search (``result``: a ``SearchResult``)."""
    pct = constraints.latency_percentile
    chosen: Variant = result.chosen
    power_estimated = any(
        v.figures is not None and v.figures.power is not None and not v.figures.power.measured
        for v in result.variants
    )
    return {
        "model": model,
        "hardware": [h.to_json() for h in hardware],
        "preferences": preferences,
        "constraints": constraints.to_json(),
        "constraints_text": constraints.describe(),
        "objective": constraints.objective,
        "samples": result.samples.to_json(),
        "reference": result.reference,
        "telemetry": telemetry,
        "power_estimated": power_estimated,
        "builds": [b.to_json() for b in result.builds],
        "candidates": [_variant(v, pct) for v in result.variants],
        "chosen": _variant(chosen, pct),
        "meets_constraints": result.meets,
        "rule": result.rule,
        "notes": [*result.notes, *extra_notes],
        "search_seconds": round(result.seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _variant(variant: Variant, percentile: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": variant.key,
        "build": variant.build.spec.id,
        "device": variant.build.spec.device.key,
        "hardware": variant.hardware,
        "precision": variant.build.spec.precision,
        "threads": variant.threads,
        "batch": variant.batch,
        "status": variant.status,
    }
    if variant.figures is not None:
        data["figures"] = variant.figures.to_json(percentile)
    if variant.build.accuracy is not None:
        data["accuracy_drops"] = variant.build.accuracy.get("drops", {})
    if variant.checks:
        data["checks"] = [c.to_json() for c in variant.checks]
        data["failed"] = [c.text for c in variant.failed]
    if variant.error:
        data["error"] = variant.error
    return data


def format_explanation(data: dict[str, Any]) -> str:
    """The explanation as text (what ``Deployment.explain()`` returns)."""
    lines: list[str] = []
    model = data.get("model", {})
    label, kind, found = model.get("label", "?"), model.get("kind", "?"), model.get("found", "")
    lines.append(f"model        {label} ({kind}; {found})")
    for note in model.get("notes", []):
        lines.append(f"             {note}")
    lines.append("hardware")
    for entry in data.get("hardware", []):
        if entry["present"]:
            devices = ", ".join(entry["devices"])
            lines.append(f"  {entry['name']:<13} present  {devices}  ({entry['detail']})")
        else:
            lines.append(f"  {entry['name']:<13} absent   {entry['why']}")
    if data.get("preferences"):
        lines.append("preferences")
        lines += [f"  {note}" for note in data["preferences"]]
    objective = OBJECTIVES.get(data.get("objective", ""), data.get("objective", ""))
    lines.append(f"constraints  {data.get('constraints_text', 'none')}  (objective: {objective})")
    samples = data.get("samples", {})
    shapes = ", ".join(samples.get("shapes", []))
    lines.append(f"samples      {samples.get('description', '?')}; shapes {shapes}")
    lines.append(f"accuracy     {data.get('reference', '?')}")
    telemetry = data.get("telemetry", [])
    power_note = "estimated where marked *" if data.get("power_estimated") else "measured"
    lines.append(f"power        {power_note}: {'; '.join(telemetry) or 'no telemetry'}")
    lines.append("builds")
    for build in data.get("builds", []):
        quality = build.get("accuracy", {})
        accuracy = _drops(quality.get("drops", {})) or _metrics(quality.get("metrics", {}))
        reason = f"  {build['reason']}" if build.get("reason") else ""
        seconds = build.get("compile_s", 0)
        lines.append(
            f"  {build['id']:<30} {build['status']:<8} {seconds:>6.1f} s  {accuracy}{reason}"
        )
    pct = f"p{data.get('constraints', {}).get('latency_percentile', 95):g}"
    lines.append("candidates")
    lines.append(
        f"  {'status':<7} {'candidate':<46} {pct + ' ms':>9} {'/s':>8} {'MB':>7} {'W':>8} "
        f"{'mJ/inf':>9}  verdict"
    )
    for row in data.get("candidates", []):
        lines.append(_row(row, pct))
    chosen = data.get("chosen", {})
    lines.append(f"chosen       {chosen.get('key', '?')}")
    lines.append(f"rule         {data.get('rule', '')}")
    if data.get("artifact"):
        lines.append(f"artifact     {data['artifact']}")
    for note in data.get("notes", []):
        lines.append(f"note         {note}")
    if data.get("replicas") is not None:
        lines += format_replicas(data["replicas"])
    return "\n".join(lines)


def _row(row: dict[str, Any], pct: str) -> str:
    figures = row.get("figures")
    if figures is None:
        blank = f"{'':>9} {'':>8} {'':>7} {'':>8} {'':>9}"
        return f"  {row['status']:<7} {row['key']:<46} {blank}  {row.get('error', '')}"
    latency = figures["latency_ms"].get(pct, figures["latency_ms"].get("p95"))
    memory = figures.get("memory_mb")
    power = figures.get("power", {})
    watts = power.get("watts")
    star = "" if power.get("measured", True) else "*"
    energy = figures.get("energy_mj_per_inference")
    verdict = "; ".join(row.get("failed", [])) or "meets every constraint"
    throughput = figures["throughput_per_s"]
    return (
        f"  {row['status']:<7} {row['key']:<46} {latency:>9.3f} {throughput:>8.1f} "
        f"{'-' if memory is None else f'{memory:.0f}':>7} "
        f"{'-' if watts is None else f'{watts:.1f}{star}':>8} "
        f"{'-' if energy is None else f'{energy:.3f}':>9}  {verdict}"
    )


def _metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, float))


def _drops(drops: dict[str, Any]) -> str:
    return ", ".join(f"{k} drop {v:.4g}" for k, v in sorted(drops.items()))
