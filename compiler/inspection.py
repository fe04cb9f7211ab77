"""``vmmc inspect ARTIFACT``: what an artifact holds and why each choice was made.

Sections, each printed only when the artifact has something for it: signature; partitions
(and shape-bucketed plans from the manifest's ``plans``, with the partitions each one runs);
architecture and recipe (from the report's profile); node counts per stage; every candidate
with every timed variant (its configuration, threads included, its median and spread), the
chosen one marked, and the reason of each choice (device, variant, partitions); quantization;
verification, with NaN / infinity behaviour when the report has it.

Reports of older versions lack some keys (``primary_label``, variants, spreads): every read is
``.get`` with a fallback, so an older artifact still prints what it has.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Statistics of a timing entry shown as its spread, in this order, when present.
_SPREAD_KEYS = ("ci_ms", "ci95_ms", "spread_ms", "spread", "iqr_ms", "p90_ms", "stdev_ms")


def _t(value: Any) -> Text:
    """A table cell as plain text: shapes like ``[batch, 3]`` are not rich markup."""
    return Text("" if value is None else str(value))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"[{_number(value[0])}, {_number(value[1])}]"
    return str(value)


def _config(config: dict[str, Any] | None) -> str:
    """A variant's settings over the partition's own; empty: the runtime's default threads."""
    if not config:
        return "default threads"
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()))


def _spread(entry: dict[str, Any]) -> str:
    parts = [f"{key} {_number(entry[key])}" for key in _SPREAD_KEYS if key in entry]
    return "; ".join(parts)


def _human(count: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {suffix}{unit}"
    return f"{count:.0f} {unit}".rstrip()


def print_inspection(
    console: Console, path: Path, manifest: dict[str, Any], report: dict[str, Any]
) -> None:
    """Print what ``path`` (an artifact) holds and why: see the module docstring."""
    source = manifest.get("source", {}) or {}
    console.print(
        Text.assemble(
            (str(path), "bold"),
            f"  format v{manifest.get('format_version', '?')}  "
            f"source sha256 {str(source.get('sha256', '?'))[:16]}",
        )
    )
    _signature(console, manifest)
    _partitions(console, manifest, report)
    _plans(console, manifest, report)
    _architecture(console, manifest, report)
    _node_counts(console, report)
    _candidates(console, report)
    _quantization(console, report)
    _verification(console, report)


def _signature(console: Console, manifest: dict[str, Any]) -> None:
    table = Table(title="signature")
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for role in ("inputs", "outputs"):
        for spec in manifest.get(role, []):
            table.add_row(
                role[:-1],
                _t(spec.get("name")),
                _t(spec.get("dtype") or spec.get("kind", "")),
                _t(spec.get("shape")),
            )
    console.print(table)


def _partitions(console: Console, manifest: dict[str, Any], report: dict[str, Any]) -> None:
    """The partitions, and for a planned build why each holds its nodes."""
    reasons: dict[str, Counter[str]] = {}
    for row in (report.get("plan") or {}).get("nodes", []):
        reasons.setdefault(str(row.get("partition", "")), Counter())[str(row.get("why", ""))] += 1
    planned = bool(reasons)
    table = Table(title="partitions")
    for column in ("id", "target", "device", "entry", "config", *(("why",) if planned else ())):
        table.add_column(column)
    for part in manifest.get("partitions", []):
        why = reasons.get(str(part.get("id")), Counter())
        nodes = sum(why.values())
        summary = f"{nodes} nodes: {why.most_common(1)[0][0]}" if nodes else ""
        table.add_row(
            _t(part.get("id")),
            _t(part.get("target")),
            _t(part.get("device")),
            _t(part.get("entry")),
            _t(json.dumps(part.get("config", {}), sort_keys=True)),
            *((_t(summary),) if planned else ()),
        )
    console.print(table)
    plan = report.get("plan") or {}
    if plan.get("rule"):
        estimate = plan.get("estimate") or {}
        cost = estimate.get("cost_ms") or estimate.get("cost")
        console.print(
            Text(f"plan: {plan['rule']}" + (f", estimated {_number(cost)}" if cost else ""))
        )
    for replan in report.get("replanned", []) or plan.get("replanned", []) or []:
        console.print(Text(f"re-planned: {replan}"))


def _plans(console: Console, manifest: dict[str, Any], report: dict[str, Any]) -> None:
    """Shape buckets: which partitions run for which input sizes (and why, when recorded)."""
    plans = manifest.get("plans") or []
    if not plans:
        return
    why = {
        str(entry.get("id")): entry
        for entry in (report.get("plans") or report.get("buckets") or [])
        if isinstance(entry, dict)
    }
    table = Table(title="shape-bucketed plans (first match runs)")
    for column in ("plan", "when", "partitions", "why"):
        table.add_column(column)
    for plan in plans:
        when = plan.get("when") or {}
        ranges = "; ".join(
            f"{name}[{axis}] in {rng.get('min', '?')}..{rng.get('max', '?')}"
            for name, axes in sorted(when.items())
            for axis, rng in sorted(axes.items())
        )
        record = why.get(str(plan.get("id")), {})
        reason = record.get("reason") or record.get("rule") or ""
        table.add_row(
            _t(plan.get("id")),
            _t(ranges or "any other shape"),
            _t(", ".join(plan.get("partitions", []))),
            _t(reason),
        )
    console.print(table)


def _architecture(console: Console, manifest: dict[str, Any], report: dict[str, Any]) -> None:
    profile = report.get("profile") or {}
    labels = profile.get("labels") or []
    label = profile.get("primary_label") or (labels[0].get("label") if labels else None)
    confidence = f" ({labels[0].get('confidence')})" if labels else ""
    options = (manifest.get("compile_options") or {}).get("recipe")
    recipe = report.get("recipe")
    recipe_why = "given by --recipe" if options else "chosen for the architecture"
    console.print(
        Text(
            f"architecture: {label or 'unclassified'}{confidence}  "
            f"recipe: {recipe or 'none'}" + (f" ({recipe_why})" if recipe else "")
        )
    )
    flops = (profile.get("flops") or {}).get("total")
    if flops:
        line = f"FLOPs: {_human(flops, 'FLOP')}"
        if profile.get("shape_note"):
            line += f" ({profile['shape_note']})"
        if profile.get("params"):
            line += f"; parameters: {_human(profile['params'])}"
        console.print(Text(line))


def _node_counts(console: Console, report: dict[str, Any]) -> None:
    counts = list((report.get("stages") or {}).get("canonicalize", {}).get("node_counts", []))
    chosen = (report.get("chosen") or {}).get("device", "")
    for cand in report.get("candidates", []):
        if cand.get("device") == chosen and cand.get("recipe"):
            recipe = cand["recipe"]
            counts += [
                [f"{recipe.get('recipe')}: {s.get('name')}", s["nodes_after"]]
                for s in recipe.get("steps", [])
                if "nodes_after" in s
            ]
    if not counts:
        return
    table = Table(title="node counts per stage", caption="(stages that changed nothing left out)")
    table.add_column("stage")
    table.add_column("nodes", justify="right")
    previous = None
    for index, (stage, count) in enumerate(counts):
        if count != previous or index in (0, len(counts) - 1):
            table.add_row(_t(stage), _t(count))
        previous = count
    console.print(table)


def _chosen_variant(latency: dict[str, Any]) -> int | None:
    """Index of the variant the candidate kept: marked, or the one at its median."""
    variants = latency.get("variants") or []
    for index, variant in enumerate(variants):
        if variant.get("chosen"):
            return index
    for index, variant in enumerate(variants):
        if variant.get("median_ms") == latency.get("median_ms"):
            return index
    return None


def _variant_reason(latency: dict[str, Any], kept: int | None) -> str:
    """Why this variant: the report's own words, else its time against the default's."""
    for key in ("variant_reason", "decision", "reason"):
        if latency.get(key):
            return str(latency[key])
    variants = latency.get("variants") or []
    if kept is None or not variants:
        return ""
    default = next((v for v in variants if not v.get("config")), None)
    chosen = variants[kept]
    if default is None or chosen is default:
        return "kept the default threads: no variant was faster" if len(variants) > 1 else ""
    if default.get("median_ms") and chosen.get("median_ms"):
        ratio = chosen["median_ms"] / default["median_ms"]
        return f"kept {_config(chosen.get('config'))}: {ratio:.2f}x the default's time"
    return ""


def _candidates(console: Console, report: dict[str, Any]) -> None:
    candidates = report.get("candidates") or []
    chosen = report.get("chosen") or {}
    console.print(
        Text(
            f"chosen: {chosen.get('device', '?')}"
            + (f" ({chosen['rule']})" if chosen.get("rule") else "")
        )
    )
    if not candidates:
        return
    spreads = any(
        _spread(entry)
        for cand in candidates
        for entry in [
            cand.get("latency") or {},
            *((cand.get("latency") or {}).get("variants") or []),
        ]
    )
    table = Table(title="candidates and timed variants (* chosen / kept)")
    table.add_column("candidate")
    table.add_column("status")
    table.add_column("variant", min_width=26)
    table.add_column("median ms", justify="right")
    if spreads:
        table.add_column("spread")
    reasons: list[str] = []
    for cand in candidates:
        device = str(cand.get("device", "?"))
        latency = cand.get("latency") or {}
        verification = cand.get("verification") or {}
        status = str(cand.get("status", ""))
        if verification:
            status += ", verified" if verification.get("passed") else ", NOT verified"
        variants = latency.get("variants") or []
        kept = _chosen_variant(latency)
        why = cand.get("reason") or _variant_reason(latency, kept)
        if why:
            reasons.append(f"  {device}: {why}")
        marker = "* " if device == chosen.get("device") else "  "
        rows = variants or [latency]
        for index, entry in enumerate(rows):
            first = index == 0
            variant = ("* " if index == kept else "  ") + _config(entry.get("config"))
            table.add_row(
                _t(marker + device if first else ""),
                _t(status if first else ""),
                _t(variant if latency else ""),
                _t(_number(entry["median_ms"]) if "median_ms" in entry else ""),
                *((_t(_spread(entry)),) if spreads else ()),
            )
    console.print(table)
    if reasons:
        console.print(Text("why:\n" + "\n".join(reasons)))
    extra = {
        k: v for k, v in (report.get("tuning") or {}).items() if isinstance(v, str | int | float)
    }
    if extra:
        console.print(Text("timing: " + ", ".join(f"{k}={_number(v)}" for k, v in extra.items())))
    for warning in (report.get("tuning") or {}).get("warnings", []) or []:
        console.print(Text(f"warning: {warning}"))


def _quantization(console: Console, report: dict[str, Any]) -> None:
    quantization = report.get("quantization")
    if not quantization:
        return
    accuracy = quantization.get("accuracy", {}) or {}
    speed = quantization.get("speed", {}) or {}
    console.print(
        Text(
            f"quantization: {quantization.get('decision')} "
            f"({quantization.get('reason') or quantization.get('method', '')}); "
            f"{(quantization.get('quantized_layers') or {}).get('count', 0)} layers low "
            f"precision, {len(quantization.get('float_layers') or {})} float; accuracy "
            f"{accuracy.get('metrics', {})}; speed ratio {speed.get('ratio', 'not measured')}"
        ),
        soft_wrap=True,
    )


def _verification(console: Console, report: dict[str, Any]) -> None:
    verification = report.get("verification") or {}
    if not verification:
        return
    if "passed" in verification:
        status = "passed" if verification["passed"] else "FAILED"
    else:
        status = str(verification.get("status", "?"))
    line = f"verification: {status}"
    if verification.get("reason"):
        line += f" ({verification['reason']})"
    if verification.get("inputs"):
        line += f"; inputs: {verification['inputs']}"
    tolerance = verification.get("tolerance")
    if tolerance:
        line += "; tolerance " + ", ".join(f"{k}={v}" for k, v in sorted(tolerance.items()))
    console.print(Text(line))
    for name, result in sorted((verification.get("outputs") or {}).items()):
        if not isinstance(result, dict):
            continue
        measures = ", ".join(
            f"{k} {_number(v)}" for k, v in sorted(result.items()) if k not in ("passed",)
        )
        console.print(Text(f"  {name}: {'ok' if result.get('passed') else 'MISMATCH'}  {measures}"))
    special = verification.get("special_values") or report.get("special_values")
    if isinstance(special, dict):
        summary = special.get("summary") or ""
        console.print(
            Text(
                f"NaN/inf behaviour: {special.get('status', '?')}"
                + (f" ({summary})" if summary else "")
            )
        )
