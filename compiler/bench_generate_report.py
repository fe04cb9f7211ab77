"""The ``vmmc bench --generate`` command: build the engines, run them, write the tables.

The Markdown goes between ``<!-- bench-generate:start -->`` and ``<!-- bench-generate:end -->``
in ``--out`` (default ``docs/generate.md``), so the other sections of that page (parity, GPU)
stay; a PNG of decode speed and TTFT goes beside it; ``--json`` keeps the raw figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ai_vmm.bench_generate import (
    BASELINES,
    CACHE,
    Engine,
    GenAIEngine,
    Row,
    TransformersEngine,
    VmmEngine,
    genai_exports,
    hf_folder,
    prompts,
    run_bench,
)
from ai_vmm.runtime.errors import InputError

NEW_TOKENS = 128
ROUNDS = 3
MARK = "bench-generate"


def bench_generate_cmd(
    model: Path,
    baselines: list[str],
    out: Path,
    json_out: Path | None,
    plot_out: Path | None,
    command: str,
    say: Callable[[str], None],
    *,
    new_tokens: int = NEW_TOKENS,
    rounds: int = ROUNDS,
    weights: tuple[str | None, ...] = (None, "int8", "int4"),
    targets: tuple[str, ...] = ("openvino:CPU", "onnxruntime:CPU"),
) -> list[Row]:
    """Benchmark generation of ``model`` (a .gguf or HF folder); write ``out`` (see module doc)."""
    import ai_vmm
    from ai_vmm.frontends.causal_lm import is_causal_lm, load_causal_lm, source_digest

    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise InputError(
            f"unknown --generate baseline(s) {unknown} (known: {', '.join(BASELINES)})"
        )
    if not is_causal_lm(model):
        raise InputError(f"{model}: --generate needs a causal LM (.gguf or Hugging Face folder)")
    load_before = os.getloadavg()
    root = CACHE / source_digest(model)[:16]
    artifacts: list[tuple[Path, str, str]] = []
    from ai_vmm.targets.openvino_lm import capabilities

    bf16 = "BF16" in capabilities("CPU")
    builds = [
        (target, mode, "fp32")
        for target in targets
        for mode in (weights if target.startswith("openvino") else (None,))
    ]
    if bf16:  # this CPU computes in bf16 (AMX): the float model in bf16 too
        builds += [(t, None, "bf16") for t in targets if t.startswith("openvino")]
    for target, mode, precision in builds:
        name = f"{target.replace(':', '-')}-{mode or precision}.vmm"
        say(f"ai-vmm compile {target} {mode or precision}")
        result = ai_vmm.compile(
            model, target=target, output=root / name, weights=mode, precision=precision,
            cache_dir=CACHE / "compile", force=True, progress=say,
        )  # fmt: skip
        label = _describe(result.report, mode) if precision == "fp32" else precision
        engine = f"ai-vmm {target.split(':')[0]}"
        if attention := (result.report.get("attention") or {}).get("chosen"):
            engine += f", {attention} attention"  # OpenVINO: the compile's timed choice
        artifacts.append((root / name, engine, label))
    factories: list[Callable[[], Engine]] = []
    for path, label, precision in artifacts:
        factories.append(_vmm_factory(path, label, precision))
    source = None
    if "transformers" in baselines or "genai" in baselines:
        say("loading the model in transformers")
        source = load_causal_lm(model)
    if "transformers" in baselines:
        factories.append(lambda: TransformersEngine(source.model))  # type: ignore[union-attr]
    if "genai" in baselines:
        folders = genai_exports(hf_folder(source, root), root / "genai", say)
        f32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        default = "default (bf16 on this CPU, u8 KV cache)" if bf16 else "default (u8 KV cache)"
        factories += [
            lambda: GenAIEngine(folders["fp32"], "bf16" if bf16 else "fp32", default, {}),
            lambda: GenAIEngine(folders["fp32"], "fp32", "f32 activations and KV cache", f32),
            lambda: GenAIEngine(folders["int8"], "int8", "int8 weights, f32 activations", f32),
            lambda: GenAIEngine(folders["int4"], "int4", "int4 group 64, f32 activations", f32),
        ]
        if bf16:
            factories.append(
                lambda: GenAIEngine(
                    folders["fp32"],
                    "bf16",
                    "bf16 activations and KV cache",
                    {"INFERENCE_PRECISION_HINT": "bf16", "KV_CACHE_PRECISION": "bf16"},
                )
            )
    with ai_vmm.load(artifacts[0][0]) as lm:
        cases = prompts(lm.tokenizer)
    rows = run_bench(factories, cases, new_tokens, rounds, say)
    environment = {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "versions": _versions(),
    }
    lengths = {name: len(ids) for name, ids in cases.items()}
    table = markdown(rows, lengths, new_tokens, rounds, environment, command)
    _write_section(out, table)
    if plot_out is not None:
        plot(rows, lengths, plot_out)
    if json_out is not None:
        payload = {
            "environment": environment,
            "prompts": lengths,
            "rows": [r.to_json() for r in rows],
        }
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
    return rows


def _vmm_factory(path: Path, label: str, precision: str) -> Callable[[], Engine]:
    return lambda: VmmEngine(path, label, precision.split(" ")[0], precision)


def _describe(report: dict[str, Any], mode: str | None) -> str:
    kept = None
    for candidate in report.get("candidates", []):
        quality = candidate.get("quality") or {}
        kept = quality.get("kept")
    if mode is None:
        return "fp32"
    if kept is None:
        return f"fp32 ({mode} refused by the quality gate)"
    gate = f"gate: ppl +{100 * kept['increase']:.1f} %, agreement {kept['agreement']:.2f}"
    if mode == "int4" and kept.get("ratio", 1.0) < 1.0:
        return f"int4 (ratio {kept['ratio']:g}, the rest int8; {gate})"
    return f"{mode} ({gate})"


def markdown(
    rows: list[Row],
    lengths: dict[str, int],
    new_tokens: int,
    rounds: int,
    environment: dict[str, Any],
    command: str,
) -> str:
    short, long = lengths["short"], lengths["long"]
    lines = [
        f"Greedy, {new_tokens} new tokens, EOS blocked, median of {rounds} interleaved rounds "
        f"(decode min-max in brackets), one process. CPU: {environment['cpu']} "
        f"({environment['cores']} cores); load average {environment['load_before'][0]} before, "
        f"{environment['load_after'][0]} after; {environment['date']}.",
        "",
        f"Command: `{command}`",
        "",
        f"| engine | precision | TTFT {short}-token prompt | TTFT {long}-token prompt | "
        f"prefill tok/s ({long}) | decode tok/s ({long}) | memory | greedy = transformers | "
        f'answer to "What is the capital of France?" |',
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        decode = row.decode_tok_s.get(long)
        spread = row.decode_spread.get(long)
        ttft_long = row.ttft_ms.get(long)
        prefill = f"{long / (ttft_long / 1000):.0f}" if ttft_long else "-"
        speed = f"{decode:.1f} [{spread[0]:.1f}-{spread[1]:.1f}]" if decode and spread else "-"
        if row.notes == "reference":
            agreement = "reference"
        else:
            agreement = "-" if row.agreement is None else f"{row.agreement}/{new_tokens}"
        cells = [
            row.engine,
            row.notes or row.precision,
            _ms(row.ttft_ms.get(short)),
            _ms(ttft_long),
            prefill,
            speed,
            f"{row.memory_mb:.0f} MB",
            agreement,
            row.answer or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    versions = ", ".join(f"{k} {v}" for k, v in environment["versions"].items())
    lines += ["", f"Versions: {versions}."]
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def plot(rows: list[Row], lengths: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long = lengths["long"]
    labels = [f"{r.engine}\n{r.notes or r.precision}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 2))
    axes[0].barh(labels, [r.decode_tok_s.get(long, 0) for r in rows], color="tab:blue")
    axes[0].set_xlabel(f"decode tokens/s ({long}-token prompt)")
    axes[1].barh(labels, [r.ttft_ms.get(long, 0) for r in rows], color="tab:orange")
    axes[1].set_xlabel(f"time to first token, ms ({long}-token prompt)")
    axes[1].set_yticklabels([])
    for ax in axes:
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_section(out: Path, table: str) -> None:
    start, end = f"<!-- {MARK}:start -->", f"<!-- {MARK}:end -->"
    text = out.read_text() if out.is_file() else "# Generation\n\n"
    block = f"{start}\n{table}{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    import importlib.metadata

    found = {}
    for name in ("openvino", "openvino-genai", "onnxruntime", "torch", "transformers", "nncf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def bench_generate_cli(
    model: Path | None,
    baselines: str,
    out: Path,
    json_out: Path | None,
    plot_out: Path | None,
    markdown_out: Path | None,
    err: Any,
) -> None:
    """``vmmc bench MODEL --generate``: the options of ``vmmc bench`` read for generation
    (``--out`` defaults to docs/generate.md, the PNG goes beside it)."""
    import sys

    from rich.markup import escape

    from ai_vmm.cli_errors import UsageError, need_path

    if model is None:
        raise UsageError("vmmc bench --generate needs MODEL (a .gguf file or Hugging Face folder)")
    need_path(model, "model")
    if baselines == "onnxruntime,openvino":  # bench's default for tensor models
        baselines = ",".join(BASELINES)
    names = [b.strip() for b in baselines.split(",") if b.strip()]
    target = markdown_out or (
        out if out != Path("docs/performance.md") else Path("docs/generate.md")
    )
    start = time.perf_counter()

    def say(message: str) -> None:
        err.print(f"[dim]{time.perf_counter() - start:7.1f}s[/dim] {escape(message)}")

    command = "vmmc bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    rows = bench_generate_cmd(
        model,
        names,
        target,
        json_out,
        plot_out or target.with_suffix(".png"),
        command.strip(),
        say,
    )
    for row in rows:
        speeds = ", ".join(f"{n}: {v:.1f} tok/s" for n, v in sorted(row.decode_tok_s.items()))
        err.print(f"{row.engine:20} {row.notes or row.precision:40} {speeds}")
    err.print(f"wrote {target}")
