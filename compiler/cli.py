"""``vmmc``: the command line.

Every error is one line on stderr and a non-zero exit code (the error class's ``exit_code``);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ai_vmm.cli_deploy import deploy_cmd
from ai_vmm.cli_errors import (
    UsageError,
    check_target_spec,
    exit_code_for,
    need_path,
    show_warnings_in_one_line,
)
from ai_vmm.cli_generate import generate_cmd
from ai_vmm.cli_serve import serve_cmd
from ai_vmm.runtime.errors import CompileError, InputError

app = typer.Typer(
    add_completion=False,
    # A bare `vmmc` is a usage mistake like any other: one line, exit 2 (typer's no-args help
    # would print the whole help panel first).
    no_args_is_help=False,
    help="ai-vmm: compile a model for the hardware you have, verify it, run it.",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
out_console = out
_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What this machine has for inference: CPU features, devices per target, libraries."""
    from ai_vmm import hardware, registry

    inventory = hardware.discover(registry.discoverers())
    if as_json:
        out.print_json(json.dumps(inventory.to_dict()))
    else:
        out.print(hardware.format_inventory(inventory), markup=False)


@app.command("compile")
def compile_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            help="The model: .onnx, .pt2, TorchScript .pt, a SavedModel dir, .keras/.h5 or .tflite."
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Artifact path (.vmm or .vmm.zip).")
    ] = None,
    target: Annotated[
        str, typer.Option(help="auto, a device (openvino:CPU) or a priority list.")
    ] = "auto",
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input", help="NAME[SHAPE], e.g. input_ids[1,?] or x[1,3,224,224]."),
    ] = None,
    no_tune: Annotated[
        bool, typer.Option("--no-tune", help="Choose by the static rule; reproducible bytes.")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the comparison with the reference.")
    ] = False,
    rtol: Annotated[float, typer.Option(help="Relative tolerance against the reference.")] = 1e-3,
    atol: Annotated[float, typer.Option(help="Absolute tolerance against the reference.")] = 1e-4,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16.")] = "fp32",
    disable_pass: Annotated[
        list[str] | None, typer.Option("--disable-pass", help="Skip a canonicalization step.")
    ] = None,
    tune_seconds: Annotated[
        float, typer.Option(help="Timing budget per candidate when tuning.")
    ] = 1.0,
    hardware: Annotated[
        str | None,
        typer.Option(help="Plan for a described machine: a shipped profile name or a JSON path."),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help="Fusion recipe (default: from the architecture profile).")
    ] = None,
    trace_rules: Annotated[
        bool, typer.Option("--trace-rules", help="Record fusion near misses and why.")
    ] = False,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="Show where every node went and why; draw the plan."),
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Compile cache directory (default: $AI_VMM_CACHE_DIR if set)."),
    ] = None,
    quantize: Annotated[
        str | None, typer.Option(help="int8 (static, needs --calib) or int8-dynamic.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Weight-only compression: int8 or int4.")
    ] = None,
    group_size: Annotated[int | None, typer.Option(help="INT4 group size.")] = None,
    ratio: Annotated[
        float | None, typer.Option(help="Share of weight layers in INT4, the rest INT8.")
    ] = None,
    sample: Annotated[
        Path | None,
        typer.Option(
            "--sample",
            help="Real inputs: FILE.npz (one call) or a directory of them; verify and time "
            "at their shapes.",
        ),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(help="A partitioned plan minimizes latency or throughput (pipelined)."),
    ] = "latency",
    calib: Annotated[
        str | None,
        typer.Option(
            help="Calibration data: FILE.npz, a directory of .npz/.npy, or 'random'; for a "
            "causal LM, text that calibrates INT4 weights: FILE.txt or FILE.jsonl."
        ),
    ] = None,
    calib_samples: Annotated[int, typer.Option(help="At most this many samples calibrate.")] = 300,
    max_accuracy_drop: Annotated[
        list[str] | None,
        typer.Option(help="METRIC=VALUE (cosine, top1, max_abs, mean_abs); repeatable."),
    ] = None,
    force_quantize: Annotated[
        bool, typer.Option("--force-quantize", help="Keep INT8 even when not faster.")
    ] = False,
    fail_on_accuracy_drop: Annotated[
        bool,
        typer.Option(
            "--fail-on-accuracy-drop", help="Exit non-zero when the accuracy gate refused (CI)."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace -o even when it is not an ai-vmm artifact."),
    ] = False,
) -> None:
    """Compile MODEL into an artifact, verified against ONNX Runtime on the original model."""
    from ai_vmm import registry
    from ai_vmm.api import compile as compile_model

    need_path(model, "model")
    check_target_spec(target, list(registry.TARGETS))
    start = time.perf_counter()

    def progress(message: str) -> None:
        err.print(f"[dim]{time.perf_counter() - start:6.2f}s[/dim] {escape(message)}", markup=True)

    with err.status("compiling", spinner="dots") if err.is_terminal else _nullcontext():
        result = compile_model(
            model,
            target,
            output,
            input_shapes=input_shape or (),
            tune=not no_tune,
            verify=not no_verify,
            rtol=rtol,
            atol=atol,
            precision=precision,
            disable_passes=disable_pass or (),
            tune_seconds=tune_seconds,
            hardware=hardware,
            recipe=recipe,
            trace_rules=trace_rules,
            cache_dir=cache_dir,
            progress=progress,
            quantize=quantize,
            weights=weights,
            group_size=group_size,
            ratio=ratio,
            calibration=calib,
            samples=sample,
            objective=objective,
            calib_samples=calib_samples,
            max_accuracy_drop=max_accuracy_drop or (),
            force_quantize=force_quantize,
            force=force,
        )
    for warning in result.report.get("tuning", {}).get("warnings", []):
        err.print(f"warning: {warning}", markup=False, soft_wrap=True)
    quantization = result.report.get("quantization")
    if quantization:
        decision = quantization.get("decision", "?")
        why = quantization.get("reason") or quantization.get("method", "")
        err.print(f"quantization: {decision} ({why})", markup=False, soft_wrap=True)
    chosen = result.report.get("chosen", {})
    verdict = result.report.get("verification", {})
    check = "verified" if verdict.get("passed") else f"not verified ({verdict.get('reason', '')})"
    suffix = " (cache hit)" if result.cache_hit else ""
    out.print(
        f"{result.path}: {chosen.get('device', '?')}, {check}, "
        f"{time.perf_counter() - start:.2f} s{suffix}",
        markup=False,
    )
    if explain:
        from ai_vmm.explain import node_table, plot_plan

        out.print(node_table(result.report))
        picture = result.path.with_name(result.path.name.split(".")[0] + ".plan.png")
        if plot_plan(result.report, picture):
            out.print(f"plan picture: {picture}", markup=False)
    if fail_on_accuracy_drop and quantization and quantization.get("accuracy_limit_exceeded"):
        raise CompileError(
            f"accuracy drop over the limit: {quantization.get('reason', '')} "
            f"(--fail-on-accuracy-drop; the float artifact is at {result.path})"
        )


@app.command()
def inspect(
    artifact: Annotated[Path, typer.Argument(help="A .vmm artifact, or a model to analyse.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print manifest and report.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Draw an artifact's partition plan (PNG/SVG).")
    ] = None,
) -> None:
    """What an artifact holds and why; for a model file: its architecture profile."""
    from ai_vmm.runtime.artifact import read_manifest, read_report
    from ai_vmm.runtime.artifact_zip import read_zip_artifact

    need_path(artifact, "artifact or model")
    if artifact.is_file() and artifact.suffix != ".zip":
        from ai_vmm.api import analyze
        from ai_vmm.passes.analyze import format_profile

        profile = analyze(artifact)
        if as_json:
            out.print_json(json.dumps(profile.to_json()))
        else:
            out.print(format_profile(profile), markup=False)
        return
    if artifact.is_file():
        # Read straight from the zip: nothing is unpacked, nothing is left behind.
        manifest, report = read_zip_artifact(artifact)
    else:
        manifest, report = read_manifest(artifact), read_report(artifact)
    if as_json:
        out.print_json(json.dumps({"manifest": manifest.to_json(), "report": report}))
        return
    from ai_vmm.inspection import print_inspection

    print_inspection(out, artifact, manifest.to_json(), report)
    if plot is not None:
        from ai_vmm.explain import plot_plan

        if not plot_plan(report, plot):
            raise InputError(f"{artifact} has one partition: no plan to draw")
        out.print(f"plan picture: {plot}", markup=False)


@app.command()
def run(
    artifact: Annotated[Path, typer.Argument(help="A .vmm artifact.")],
    inputs: Annotated[
        Path | None, typer.Option("--inputs", help=".npz file with one array per input.")
    ] = None,
    random_inputs: Annotated[
        bool, typer.Option("--random-inputs", help="Synthesize inputs from the signature.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write outputs (.npz).")
    ] = None,
) -> None:
    """Run an artifact on inputs from an .npz file (or random ones) and print or save outputs."""
    from ai_vmm.runtime import load

    need_path(artifact, "artifact")
    need_path(inputs, "inputs file")
    if output is not None:
        _check_npz_output(output)
    with load(artifact) as model:
        _run_loaded(model, artifact, inputs, random_inputs, output)


def _run_loaded(
    model: Any, artifact: Path, inputs: Path | None, random_inputs: bool, output: Path | None
) -> None:
    if inputs is not None:
        feed = _read_npz(inputs)
    elif random_inputs:
        from ai_vmm.inputs import synthetic_inputs

        synthetic = synthetic_inputs(model.inputs, {})
        if synthetic is None:
            raise InputError("this model has non-tensor inputs: give --inputs")
        feed = synthetic
    else:
        raise UsageError("give --inputs FILE.npz or --random-inputs")
    start = time.perf_counter()
    result = model.run(feed)
    elapsed = (time.perf_counter() - start) * 1000
    if output is not None:
        _write_npz(output, result)
    table = Table(title=f"{artifact} ({elapsed:.2f} ms)")
    for column in ("output", "dtype", "shape", "summary"):
        table.add_column(column)
    for name, value in result.items():
        array = np.asarray(value)
        summary = (
            f"min {array.min():.4g} max {array.max():.4g} mean {array.mean():.4g}"
            if array.size and array.dtype.kind in "fiu"
            else ""
        )
        table.add_row(name, str(array.dtype), str(list(array.shape)), summary)
    out.print(table)


@app.command("bench")
def bench_cmd(
    model: Annotated[
        Path | None, typer.Argument(help="A .vmm artifact or an ONNX model (compiled first).")
    ] = None,
    baselines: Annotated[
        str, typer.Option(help="Comma-separated: onnxruntime, openvino, torch.")
    ] = "onnxruntime,openvino",
    batch: Annotated[int, typer.Option(help="Batch size of the synthetic inputs.")] = 1,
    streams: Annotated[int, typer.Option(help="Requests in flight for throughput.")] = 2,
    seconds: Annotated[float, typer.Option(help="Latency time box per contender.")] = 3.0,
    source: Annotated[
        Path | None, typer.Option(help="The original ONNX model, for an artifact's baselines.")
    ] = None,
    inputs: Annotated[
        Path | None, typer.Option("--inputs", help=".npz inputs instead of synthetic ones.")
    ] = None,
    profile: Annotated[
        bool, typer.Option("--profile", help="Per-partition times and per-op counters.")
    ] = False,
    suite: Annotated[
        str | None,
        typer.Option(help="'zoo' (docs/performance.md) or 'real' (docs/performance-real.md)."),
    ] = None,
    models: Annotated[str | None, typer.Option(help="With --suite: these zoo models.")] = None,
    zoo: Annotated[Path, typer.Option(help="With --suite zoo: the zoo file.")] = Path(
        "models/zoo.py"
    ),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write a Markdown report.")
    ] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG chart.")] = None,
    out: Annotated[
        Path, typer.Option(help="With --suite: the Markdown report (.png/.json beside it).")
    ] = Path("docs/performance.md"),
    generate: Annotated[
        bool, typer.Option("--generate", help="A causal LM: generation vs genai,transformers.")
    ] = False,
) -> None:
    """Benchmark an artifact against plain ONNX Runtime / OpenVINO / torch, in one process."""
    if generate:  # docs/generate.md
        from ai_vmm.bench_generate_report import bench_generate_cli

        return bench_generate_cli(model, baselines, out, json_out, plot_out, markdown_out, err)
    from ai_vmm.bench import BenchSettings, check_baselines
    from ai_vmm.bench_report import bench, environment, markdown, plot, profile_table
    from ai_vmm.bench_report import terminal_table as table_of

    names = check_baselines([b for b in baselines.split(",") if b.strip()])
    if batch < 1 or streams < 1 or seconds <= 0:
        raise InputError("--batch and --streams must be >= 1 and --seconds > 0")
    settings = BenchSettings(batch=batch, streams=streams, seconds=seconds, profile=profile)
    start = time.perf_counter()

    def say(message: str) -> None:
        err.print(f"[dim]{time.perf_counter() - start:7.1f}s[/dim] {escape(message)}")

    command = "vmmc bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    if suite == "real":
        from ai_vmm.bench_real import suite_real

        suite_real(zoo.parent, out, models, seconds, command.strip(), say)
        return
    if suite is not None:
        if suite != "zoo":
            raise InputError(f"unknown suite '{suite}' (suites: zoo, real)")
        from ai_vmm.bench_suite import run_zoo

        chosen = [m for m in (models or "").split(",") if m] or None
        run_zoo(
            zoo,
            out,
            settings,
            names,
            chosen,
            command.strip(),
            say,
            on_result=lambda result: out_console.print(table_of(result)),
        )
        out_console.print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.json')}")
        return
    if model is None:
        raise InputError("give an artifact or a model to benchmark, or --suite zoo")
    need_path(model, "artifact or model")
    need_path(source, "source model")
    need_path(inputs, "inputs file")
    feed = _read_npz(inputs) if inputs is not None else None
    result = bench(model, baselines=names, settings=settings, source=source, feed=feed, say=say)
    out_console.print(table_of(result))
    if "profile" in result:
        out_console.print(profile_table(result["profile"]))
    for note in result["notes"]:
        out_console.print(f"note: {note}")
    warning = result.get("comparison", {}).get("warning")
    if warning:
        err.print(f"warning: {warning}", markup=False, soft_wrap=True)
    if json_out is not None:
        json_out.write_text(
            json.dumps({"environment": environment(), "result": result}, indent=2) + "\n"
        )
    if markdown_out is not None:
        markdown_out.write_text(markdown([result], environment(), command.strip()))
    if plot_out is not None:
        plot([result], plot_out)


app.command("serve")(serve_cmd)
app.command("deploy")(deploy_cmd)
app.command("generate")(generate_cmd)


def _read_npz(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"inputs file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable .npz file: {exc}") from exc


def _check_npz_output(path: Path) -> None:
    """``-o`` of ``run`` may replace an earlier .npz output, never anything else."""
    import zipfile

    if path.is_dir() or (path.exists() and not zipfile.is_zipfile(path)):
        raise InputError(
            f"-o {path}: not replacing a {'directory' if path.is_dir() else 'file'} that is not "
            f"an .npz file; choose another path"
        )


def _write_npz(path: Path, values: dict[str, Any]) -> None:
    from ai_vmm.runtime.staging import fsync_tree, replace_path, staging_directory

    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in values.items()}
    with staging_directory(path.parent) as stage:
        with open(stage / "outputs.npz", "wb") as handle:
            np.savez(handle, **arrays)
        fsync_tree(stage / "outputs.npz")
        replace_path(stage / "outputs.npz", path)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vmmc`` console script: every failure is one line and an exit code.

    The codes: docs/cli.md (``ai_vmm.cli_errors``).
    """
    show_warnings_in_one_line(err)
    try:
        app(args=argv, prog_name="vmmc", standalone_mode=False)
    except BaseException as exc:  # SystemExit included: typer may raise it on --help paths
        if isinstance(exc, SystemExit):
            return int(exc.code or 0) if not isinstance(exc.code, str) else 2
        return exit_code_for(exc, err, _state["debug"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
