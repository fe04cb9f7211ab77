"""``vmmc deploy MODEL --constraint max_latency_ms=20 ... -o DIR``: the deployment search as a
command. DIR receives the chosen artifact (``model.vmm``) and why it was chosen
(``explanation.txt``, ``explanation.json``); with ``-c replicas=...`` also the kept replicas'
artifacts (``replicas/``; ``model.vmm`` is the first); nothing is written when the search
fails."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer


def deploy_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="A model path (.onnx, HF folder, .gguf, OpenVINO .xml, .vmm, .tflite ...) or an "
            "ID found in the local Hugging Face cache or the artifact store."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Directory for model.vmm and explanation.txt/.json."),
    ],
    constraint: Annotated[
        list[str] | None,
        typer.Option(
            "--constraint",
            "-c",
            help="KEY=VALUE, repeatable: max_latency_ms=20, min_throughput=200, "
            "power_budget_watts=150, max_memory_mb=2048, preferred_hardware=NVIDIA_GPU,CPU, "
            "max_accuracy_drop=cosine=0.01, latency_percentile=99, max_batch=8, optimize=cost.",
        ),
    ] = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            "--samples",
            help="Inputs to measure on: an .npz file or a directory of them; for a causal LM "
            "a .txt file of prompts, one a line.",
        ),
    ] = None,
    no_strict: Annotated[
        bool,
        typer.Option("--no-strict", help="When nothing meets the constraints, keep the closest."),
    ] = False,
    store: Annotated[
        Path | None,
        typer.Option(help="Deployment store (default ~/.cache/ai-vmm/deployments)."),
    ] = None,
    seconds: Annotated[float, typer.Option(help="Measuring time per candidate, in seconds.")] = 1.0,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Search again even if the store has a decision.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty directory that is not ours.")
    ] = False,
) -> None:
    """Deploy MODEL here under constraints; write the chosen artifact and its explanation."""
    from rich.console import Console

    from ai_vmm.cli_errors import UsageError, need_path
    from ai_vmm.deploy.constraints import Constraints
    from ai_vmm.deploy.vmm import VMM
    from ai_vmm.runtime.artifact import dumps_json, staged_directory

    need_path(samples, "samples")
    limits = Constraints.parse(constraint or None)  # a bad constraint fails before any work
    if seconds <= 0:
        raise UsageError("--seconds must be positive")
    _check_output(output, force)
    err = Console(stderr=True, highlight=False)
    started = time.perf_counter()

    def say(message: str) -> None:
        err.print(f"{time.perf_counter() - started:7.1f}s {message}", markup=False)

    vmm = VMM(store=store, measure_seconds=seconds, progress=say)
    deployment = vmm.deploy(model, limits, samples=samples, strict=not no_strict, refresh=refresh)
    try:
        text = deployment.explain()
        with staged_directory(output) as tree:
            shutil.copytree(deployment.artifact_path, tree / "model.vmm")
            if deployment.explanation.get("replicas") is not None:
                # The kept replicas, where explanation.json's replicas rows name them.
                shutil.copytree(deployment.artifact_path.parent, tree / "replicas")
            (tree / "explanation.txt").write_text(text + "\n")
            (tree / "explanation.json").write_bytes(dumps_json(deployment.explanation))
    finally:
        deployment.close()
    out = Console(highlight=False)
    out.print(text, markup=False, soft_wrap=True)
    out.print(f"wrote {output / 'model.vmm'} and {output / 'explanation.txt'}", markup=False)
    if not deployment.explanation.get("meets_constraints", True):
        err.print("warning: the deployment does not meet its constraints (--no-strict)")


def _check_output(output: Path, force: bool) -> None:
    from ai_vmm.cli_errors import UsageError

    if output.is_file() or output.is_symlink():
        raise UsageError(f"-o {output} is a file: give a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        ours = (output / "explanation.json").is_file()
        try:
            json.loads((output / "explanation.json").read_text()) if ours else None
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise UsageError(
                f"-o {output} is a non-empty directory that vmmc deploy did not write "
                "(--force replaces it)"
            )
