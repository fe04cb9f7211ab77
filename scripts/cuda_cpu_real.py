"""The cuda target's path for the real models, run on the CPU (docs/gpu.md's AOTInductor table and
its float16 findings). Nothing here needs a GPU.

* ``aoti``: each model canonicalized, converted (``targets/cuda_convert.to_torch``), exported
  the way the target exports it (``cuda_export.export``, dynamic axes) and compiled by
  AOTInductor's CPU backend with the target's Inductor settings; the package against the eager
  module on the model's real inputs (made contiguous, as the cuda executor does).
* ``fp16``: the converted module in float16 against float32, eagerly, on the first real input:
  the largest difference and whether every output stayed finite.
* ``padding``: what torch 2.11 did on the H200 (2026-12-05), simulated: the export with
  dynamic-dimension hints only (every dynamic lower bound becomes 2), then the target's build
  checks (eager payload); prints whether the package pads batch 1 up to 2 (``pad_batch``) or
  why not.
* ``static``: the target's build (AOTInductor's CPU backend) with a static-batch package at the
  largest batch of the model's real samples (``targets/cuda_static.py``), run with
  ``static_dispatch`` on every real sample against ONNX Runtime on the original model: the
  largest difference, and which samples ran on the static package.

* ``eager``: the build's fallback where AOTInductor refuses (made to refuse here), the
  exported program run eagerly, on every real sample against ONNX Runtime.

Usage: ``python scripts/cuda_cpu_real.py aoti|fp16|padding|static|eager [MODEL ...]``
(default: every real model). A model whose build fails prints its one-line error;
``--timeout`` bounds each AOTInductor build (a child process per model).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _module(rm: Any, name: str, compute: Any = None) -> tuple[Any, Any]:
    import onnx_ir as ir
    import torch

    from ai_vmm.driver import normalize_dims
    from ai_vmm.passes.canonicalize import canonicalize
    from ai_vmm.targets.cuda_convert import to_torch

    model = ir.load(rm.model_path(name))
    normalize_dims(model)
    canonicalize(model, frozenset())
    return model, to_torch(model, compute or torch.float32).eval()


def _args(module: Any, feed: dict[str, Any]) -> list[Any]:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in module.input_names]


def aoti(rm: Any, name: str) -> dict[str, Any]:
    import torch
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    from ai_vmm.partition import sample_dims
    from ai_vmm.targets import cuda_build, cuda_export
    from ai_vmm.targets.base import TargetOptions

    model, module = _module(rm, name)
    inputs = list(model.graph.inputs)
    samples = rm.samples(name)
    example, dims = cuda_export.example_inputs(inputs, {}, sample_dims(model, samples[0]), "cpu")
    program, _ = cuda_export.export(module, example, module.arg_names, dims, inputs)
    settings = cuda_build.inductor_settings(torch, program, "cpu", TargetOptions())
    started = time.perf_counter()
    path = f"/tmp/cuda_cpu_real_{name}.pt2"
    package = aoti_load_package(
        aoti_compile_and_package(program, package_path=path, inductor_configs=settings)
    )
    row: dict[str, Any] = {"build_s": round(time.perf_counter() - started, 1), "samples": []}
    for feed in samples[:3]:
        args = _args(module, feed)
        with torch.no_grad():
            want = module(*args)
        errors = [
            float((g - w).abs().max()) if g.is_floating_point() else int((g != w).sum())
            for g, w in zip(package(*args), want, strict=True)
        ]
        row["samples"].append({"shapes": [list(a.shape) for a in args], "max_abs": errors})
    return row


def fp16(rm: Any, name: str) -> dict[str, Any]:
    import torch

    _, full = _module(rm, name)
    _, half = _module(rm, name, torch.float16)
    args = _args(full, rm.samples(name)[0])
    with torch.no_grad():
        pairs = list(zip(half(*args), full(*args), strict=True))
    floats = [(h.double(), f.double()) for h, f in pairs if f.is_floating_point()]
    return {
        "finite": all(bool(torch.isfinite(h).all()) for h, _ in floats),
        "max_abs": max((float((h - f).abs().max()) for h, f in floats), default=0.0),
        "output_scale": max((float(f.abs().max()) for _, f in floats), default=0.0),
    }


def padding(rm: Any, name: str) -> dict[str, Any]:
    import tempfile
    from unittest import mock

    import torch
    from torch.export import Dim

    from ai_vmm.partition import sample_dims, sample_sizes
    from ai_vmm.targets import cuda_build
    from ai_vmm.targets.base import TargetOptions

    def hints_only(module: Any, example: Any, names: list[str], dims: Any, inputs: Any) -> Any:
        shapes = {
            n: {a: Dim.DYNAMIC for a, d in enumerate(v.shape or []) if not isinstance(d, int)}
            for n, v in zip(names, inputs, strict=True)
        }
        program = torch.export.export(module, tuple(example), dynamic_shapes=shapes, strict=False)
        return program, "exported with hints only (torch 2.11, simulated)"

    model, module = _module(rm, name)
    samples = rm.samples(name)
    sizes = sample_sizes(model, samples)  # what the compile pipeline hands the target
    options = TargetOptions(
        extra={
            "input_bounds": {},
            "sample_dims": sample_dims(model, samples[0]),
            "sample_sizes": sizes,
        }
    )
    # The eager payload's file is not needed (and a program with float sizes does not save).
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(cuda_build, "export", hints_only),
        mock.patch("torch.export.save"),
    ):
        payload = cuda_build._build(module, "onnx", model, options, Path(tmp), "fp32", True, "cpu")
    config = payload.config
    return {
        "pad_batch": config.get("pad_batch"),
        "ranges": [spec["ranges"] for spec in config["inputs"]],
        "sample_sizes": sizes,
        "note": str(config.get("shape_note", ""))[:300],
    }


def static(rm: Any, name: str) -> dict[str, Any]:
    import tempfile

    import onnxruntime as ort

    from ai_vmm.partition import sample_dims, sample_sizes
    from ai_vmm.runtime.executors import create_executor
    from ai_vmm.targets import cuda_build, cuda_static
    from ai_vmm.targets.base import TargetOptions

    model, module = _module(rm, name)
    samples = rm.samples(name)
    sizes = sample_sizes(model, samples)
    symbol = cuda_static.batch_symbol(list(model.graph.inputs))
    largest = max(sizes.get(symbol or "", [0]))
    options = TargetOptions(
        extra={
            "input_bounds": {},
            "sample_dims": sample_dims(model, samples[0]),
            "sample_sizes": sizes,
            "cuda_static_batches": [largest],
        }
    )
    session = ort.InferenceSession(str(rm.model_path(name)), providers=["CPUExecutionProvider"])
    outputs = tuple(v.name or "" for v in model.graph.outputs)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        payload = cuda_build._build(module, "onnx", model, options, Path(tmp), "fp32", False, "cpu")
        build_s = time.perf_counter() - started
        config = {**payload.config, "static_dispatch": True}
        executor = create_executor("cuda", Path(tmp) / payload.entry, "cpu", config, outputs)
        worst = 0.0
        shapes = []
        for feed in samples:
            got = executor.run(feed)
            want = session.run(list(outputs), feed)
            worst = max(
                worst,
                *(float(np.max(np.abs(got[n] - w))) for n, w in zip(outputs, want, strict=True)),
            )
            shapes.append({k: list(v.shape) for k, v in feed.items()})
        return {
            "static_batch": largest,
            "static_note": config.get("static_note"),
            "build_s": round(build_s, 1),
            "samples": shapes,
            "static_calls": executor.static_calls,
            "max_abs_vs_onnxruntime": worst,
        }


def eager(rm: Any, name: str) -> dict[str, Any]:
    """The build's fallback where AOTInductor refuses (refused here as torch 2.11's Inductor
    refused chars2vec and Silero VAD's sequence model on the H200): the exported program, run
    eagerly, on every real sample against ONNX Runtime on the original model."""
    import tempfile

    import onnxruntime as ort

    from ai_vmm.partition import sample_dims, sample_sizes
    from ai_vmm.runtime.executors import create_executor
    from ai_vmm.targets import cuda_build
    from ai_vmm.targets.base import TargetOptions

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("InductorError: AssertionError: (refused for this check)")

    cuda_build.package_program = refuse  # this child process only
    model, module = _module(rm, name)
    samples = rm.samples(name)
    options = TargetOptions(
        extra={
            "input_bounds": {},
            "sample_dims": sample_dims(model, samples[0]),
            "sample_sizes": sample_sizes(model, samples),
        }
    )
    session = ort.InferenceSession(str(rm.model_path(name)), providers=["CPUExecutionProvider"])
    outputs = tuple(v.name or "" for v in model.graph.outputs)
    with tempfile.TemporaryDirectory() as tmp:
        payload = cuda_build._build(module, "onnx", model, options, Path(tmp), "fp32", False, "cpu")
        executor = create_executor(
            "cuda", Path(tmp) / payload.entry, "cpu", payload.config, outputs
        )
        worst = 0.0
        for feed in samples:
            got, want = executor.run(feed), session.run(list(outputs), feed)
            worst = max(
                worst,
                *(float(np.max(np.abs(got[n] - w))) for n, w in zip(outputs, want, strict=True)),
            )
        return {
            "entry": payload.entry,
            "runner": payload.config.get("runner"),
            "samples": [{k: list(v.shape) for k, v in feed.items()} for feed in samples],
            "max_abs_vs_onnxruntime": worst,
        }


def _child(part: str, name: str, queue: Any) -> None:
    from ai_vmm.bench_real import load_realmodels

    rm = load_realmodels(REPO / "models" / "realmodels.py")
    try:
        parts = {"aoti": aoti, "fp16": fp16, "padding": padding, "static": static, "eager": eager}
        queue.put({"model": name, **parts[part](rm, name)})
    except Exception as exc:  # the failure is the finding
        queue.put({"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["aoti", "fp16", "padding", "static", "eager"])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--timeout", type=float, default=900.0, help="s per model")
    args = parser.parse_args(argv)
    from ai_vmm.bench_real import load_realmodels

    rm = load_realmodels(REPO / "models" / "realmodels.py")
    names = args.models or list(rm.MODELS)
    context = multiprocessing.get_context("spawn")
    for name in names:
        queue = context.Queue()
        child = context.Process(target=_child, args=(args.part, name, queue))
        child.start()
        child.join(args.timeout)
        if child.is_alive():
            child.kill()
            print(json.dumps({"model": name, "error": f"no result in {args.timeout:.0f} s"}))
            continue
        print(json.dumps(queue.get() if not queue.empty() else {"model": name, "error": "died"}))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
