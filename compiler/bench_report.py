"""Run one benchmark end to end, and render results: terminal table, JSON, Markdown, PNG."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.bench import (
    BenchSettings,
    Contender,
    artifact_contender,
    compare,
    measure_all,
    onnxruntime_contender,
    openvino_contender,
    profile_rows,
    torch_contender,
)
from ai_vmm.runtime.artifact import read_manifest, read_report
from ai_vmm.runtime.errors import InputError

Say = Callable[[str], None]


def bench(
    target: Path,
    *,
    baselines: list[str],
    settings: BenchSettings,
    source: Path | None = None,
    feed: dict[str, Any] | None = None,
    torch_module: Any = None,
    name: str | None = None,
    say: Say = lambda message: None,
) -> dict[str, Any]:
    """Benchmark an artifact (or an ONNX model, compiled with ``--target auto`` first).

    Raises:
        InputError: baselines were asked for but the original model cannot be found.
        DeviceError: the artifact was built for a device that is not present here.
    """
    result: dict[str, Any] = {"model": name or target.stem}
    with tempfile.TemporaryDirectory(prefix="ai-vmm-bench-") as tmp:
        artifact = target
        if target.suffix == ".onnx":
            import ai_vmm

            say(f"compiling {target} with --target auto")
            start = time.perf_counter()
            artifact = ai_vmm.compile(target, "auto", Path(tmp) / "model.vmm").path
            result["compile_s"] = round(time.perf_counter() - start, 3)
            source = source or target
        report = read_report(artifact) if artifact.is_dir() else {}
        recorded = report.get("source", {}).get("path")
        if source is None and recorded and Path(recorded).is_file():
            source = Path(recorded)
        if source is None and any(b in ("onnxruntime", "openvino") for b in baselines):
            raise InputError(
                f"the baselines need the original model and {artifact} does not say where it "
                f"is: pass --source MODEL.onnx (or --baselines '' for ours alone)"
            )
        if feed is None:
            specs = read_manifest(artifact).inputs if artifact.is_dir() else None
            if specs is None:
                from ai_vmm.runtime import load

                loaded = load(artifact)
                specs = loaded.inputs
                getattr(loaded, "close", lambda: None)()
            feed = representative_feed(specs, report, settings.batch, source)
            if feed is None:
                raise InputError("the model has non-tensor inputs: no synthetic inputs for it")
            result["inputs"] = "synthetic, at " + json.dumps(
                {name: list(np.shape(array)) for name, array in feed.items()}
            )
        ours, holder = artifact_contender(artifact, feed)
        contenders: list[Contender] = [ours]
        notes: list[str] = []
        for baseline in baselines:
            if baseline == "onnxruntime" and source is not None:
                contenders.append(onnxruntime_contender(source, feed))
            elif baseline == "openvino" and source is not None:
                contenders.append(openvino_contender(source, feed))
            elif baseline == "torch":
                if torch_module is None:
                    notes.append("torch eager: no torch module for this model (source is ONNX)")
                else:
                    contenders.append(torch_contender(torch_module, feed, list(feed)))
        measure_all(contenders, settings, say)
        model = holder["model"]
        result.update(
            {
                "chosen": [f"{p.target}:{p.device}" for p in model.partitions],
                "config": [p.config for p in model.partitions],
                "settings": {
                    "batch": settings.batch,
                    "streams": settings.streams,
                    "seconds": settings.seconds,
                    "rounds": settings.rounds,
                },
                "contenders": [c.summary() for c in contenders],
                "comparison": compare(contenders),
                "notes": notes,
            }
        )
        if settings.profile:
            say("profiling (per partition, per op)")
            result["profile"] = profile_rows(model, feed)
    return result


def representative_feed(
    specs: Any, report: dict[str, Any], batch: int, source: Path | None
) -> dict[str, Any] | None:
    """Synthetic inputs at the shape the compile chose as representative (its report's
    primary bucket), batch ``batch``; index inputs in their domains when the source is known."""
    from ai_vmm.shapes import dynamic_variables, first_fit, sample_at

    domains: dict[str, Any] = {}
    if source is not None and source.suffix == ".onnx":
        import onnx_ir as ir

        from ai_vmm.inputs import input_domains

        try:
            domains = input_domains(ir.load(source))
        except Exception:  # the domains are a nicety: plain synthetic values otherwise
            domains = {}
    variables = dynamic_variables(tuple(specs))
    chosen = dict(report.get("inputs", {}).get("primary") or {})
    sizes = {
        v.name: batch if v.cls == "batch" else int(chosen.get(v.name) or first_fit(v))
        for v in variables
    }
    return sample_at(tuple(specs), variables, sizes, domains)


def environment() -> dict[str, Any]:
    """Machine and library versions, for the report header."""
    import os

    import onnxruntime as ort
    import openvino as ov

    from ai_vmm import hardware

    cpu = hardware.detect_cpu()
    env = {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu": cpu.model,
        "logical_cores": cpu.logical_cores,
        "physical_cores": cpu.physical_cores,
        "isa": list(cpu.isa),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "openvino": ov.get_version().split("-")[0],
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return env


def terminal_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    comparison = result.get("comparison", {})
    title = f"{result['model']}: {', '.join(result['chosen'])}"
    if comparison:
        rounds = comparison.get("latency_ratio_rounds", {}).get("range")
        spread = f" (rounds {rounds[0]}-{rounds[1]})" if rounds else ""
        title += (
            f"  ours / best baseline time: latency {comparison['latency_ratio']}{spread}, "
            f"{comparison.get('verdict', '')}; with requests in flight "
            f"{comparison.get('throughput_time_ratio')}"
        )
    table = Table(title=title)
    for column in ("contender", "p50 ms", "p90 ms", "p99 ms", "req/s", "load s", "peak MiB"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for row in result["contenders"]:
        table.add_row(
            row["name"],
            f"{row['p50_ms']:.3f}",
            f"{row['p90_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['throughput_per_s']:.0f}",
            f"{row['load_s']:.2f}",
            f"{row['peak_rss_mb']:.0f}",
        )
    return table


def profile_table(profile: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="profile: partitions " + json.dumps(profile["partitions"]) + " (ms)")
    for column in ("partition", "target", "op", "ms / inference", "share"):
        table.add_column(column)
    for row in profile["top_ops"]:
        table.add_row(
            row["partition"], row["target"], row["op"], f"{row['ms']:.4f}", f"{row['share']:.0%}"
        )
    return table


def markdown(results: list[dict[str, Any]], env: dict[str, Any], command: str) -> str:
    lines = [
        "# Performance",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}; every number below comes "
        "from that one run.",
        "",
        f"Machine: {env['cpu']}, {env['physical_cores']} physical / {env['logical_cores']} "
        f"logical cores, ISA {' '.join(env['isa'])}. Python {env['python']}, ONNX Runtime "
        f"{env['onnxruntime']}, OpenVINO {env['openvino']}"
        + (f", torch {env['torch']} ({env['torch_threads']} threads)" if "torch" in env else "")
        + f". Load average when the report was written (1, 5, 15 min): "
        f"{', '.join(str(x) for x in env.get('load_average', []))} (other work on the "
        "machine shows up in p90/p99 more than in p50, and hits every contender alike).",
        "",
        "Method: all contenders run in one process on the same input arrays. Baselines use "
        "their libraries' default settings: ONNX Runtime's default session (intra-op threads = "
        "physical cores), OpenVINO's default `compile_model` on CPU, torch eager under "
        "`inference_mode`. Ours runs the artifact that `--target auto` built, with the thread "
        "setting its tuning chose (never more threads than the defaults). Latency: warm-up, "
        "then interleaved rounds with equal time boxes; p50/p90/p99 over all calls. Throughput: "
        "requests in flight for a fixed time (OpenVINO `AsyncInferQueue`, threads otherwise). "
        "Memory: peak RSS increase while the contender loads and warms up. Ratios are always "
        "times, ours / baseline (below 1: ours is faster; throughput as time per inference); "
        "the per-round range pairs each round's medians, and the verdict says when the rounds "
        "disagree about which side is faster.",
        "",
        "## Latency at batch 1 (ms) and ours / best baseline",
        "",
        "| model | chosen | ours p50 | ours p90 | ours p99 | ONNX Runtime p50 | "
        "OpenVINO p50 | torch eager p50 | ours / best | per-round range | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in results:
        by_name = {row["name"]: row for row in result["contenders"]}
        ours = by_name["ai-vmm"]

        def p50(key: str, table: dict[str, Any] = by_name) -> str:
            return f"{table[key]['p50_ms']:.3f}" if key in table else "n/a"

        lines.append(
            f"| {result['model']} | {', '.join(result['chosen'])} | {ours['p50_ms']:.3f} | "
            f"{ours['p90_ms']:.3f} | {ours['p99_ms']:.3f} | {p50('onnxruntime')} | "
            f"{p50('openvino')} | {p50('torch eager')} | "
            f"{result['comparison'].get('latency_ratio', 'n/a')} | "
            f"{_range(result['comparison'])} | {result['comparison'].get('verdict', '')} |"
        )
    lines += [
        "",
        "## Throughput (inferences/s) and resources",
        "",
        "| model | streams | ours | ONNX Runtime | OpenVINO | torch eager | ours / best (time) | "
        "compile s | ours peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        by_name = {row["name"]: row for row in result["contenders"]}

        def tput(key: str, table: dict[str, Any] = by_name) -> str:
            return f"{table[key]['throughput_per_s']:.0f}" if key in table else "n/a"

        lines.append(
            f"| {result['model']} | {result['settings']['streams']} | {tput('ai-vmm')} | "
            f"{tput('onnxruntime')} | {tput('openvino')} | {tput('torch eager')} | "
            f"{result['comparison'].get('throughput_time_ratio', 'n/a')} | "
            f"{result.get('compile_s', 'n/a')} | {by_name['ai-vmm']['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "![latency per model](performance.png)",
        "",
        "Related measurements, each generated by its own script: fused vs unfused per target "
        "(`docs/fusion-performance.md`, `scripts/bench_fusion.py`), the cost of a partition "
        "boundary (`docs/partition-overhead.md`, `scripts/bench_partition.py`), INT8 and "
        "weight-only compression (`docs/quantization.md`, `scripts/bench_quant.py`), real "
        "public models with dynamic axes at their real shapes, with and without sample inputs "
        "([performance-real.md](performance-real.md), `vmmc bench --suite real`).",
        "",
    ]
    return "\n".join(lines)


def _range(comparison: dict[str, Any]) -> str:
    found = comparison.get("latency_ratio_rounds", {}).get("range")
    return f"{found[0]}-{found[1]}" if found else "n/a"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: p50 latency per model and contender (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted({row["name"] for r in results for row in r["contenders"]})
    x = np.arange(len(results))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(results)), 4.2))
    for i, name in enumerate(names):
        values = [
            next((row["p50_ms"] for row in r["contenders"] if row["name"] == name), np.nan)
            for r in results
        ]
        ax.bar(x + i * width, values, width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, [r["model"] for r in results], rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("p50 latency, ms (batch 1, lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
