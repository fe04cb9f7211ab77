#!/usr/bin/env python
"""GPU benchmark for the cuda target (run on a machine with an NVIDIA GPU; docs/gpu.md).

Sections (``--sections``, default all):

- ``env``: what discovery sees (NVML, torch), and the cuda target's measured figures.
- ``parity``: the zoo's ResNet, BERT-style encoder and Llama-style decoder compiled with
  ``ai_vmm.compile(..., target="cuda:0")`` in fp32 and fp16, compared with ONNX Runtime (CPU) on
  the original model at batch 1 and 4: max abs and max relative error.
- ``speed``: ResNet-50 (transformers ResNetConfig, bottleneck [3, 4, 6, 3], random weights: speed
  only) in fp16 at batch 1 and 32: torch eager, torch.compile (default mode), a raw AOTInductor
  package of the same module, our payload loaded raw, our executor (GPU tensors in), and the
  whole runtime (NumPy in, NumPy out), CUDA graphs on and off. Interleaved rounds, medians.

Usage::

    python scripts/bench_gpu.py --sections env,parity --json out/gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "parity", "hetero", "speed")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def section_env() -> dict[str, Any]:
    from ai_vmm import hardware, registry
    from ai_vmm.targets.cuda import CudaTarget

    inventory = hardware.discover(registry.discoverers())
    text = hardware.format_inventory(inventory)
    print(text, flush=True)
    device = inventory.find("cuda")
    figures = CudaTarget().measure_figures(device) if device else None
    log(f"figures: {figures}")
    return {"inventory": text, "figures": figures}


def _zoo() -> Any:
    from ai_vmm.bench_suite import load_zoo

    return load_zoo(REPO / "models" / "zoo.py")


def section_parity(work: Path) -> list[dict[str, Any]]:
    import onnxruntime as ort

    import ai_vmm

    zoo = _zoo()
    rows = []
    for name in ("resnet", "transformer_encoder", "llama"):
        path = zoo.build(name, work)
        session = ort.InferenceSession(str(path))
        for precision in ("fp32", "fp16"):
            started = time.perf_counter()
            out = work / f"{name}-{precision}.vmm"
            result = ai_vmm.compile(
                path, "cuda:0", out, precision=precision, force_quantize=True, tune=False
            )
            compile_s = time.perf_counter() - started
            compiled = ai_vmm.runtime.load(out)
            for batch in (1, 4):
                feeds = zoo.example_inputs(name, batch, dims={"seq": 12})
                expected = session.run(None, feeds)
                got = compiled.run(feeds)
                for spec, want in zip(session.get_outputs(), expected, strict=True):
                    diff = np.abs(got[spec.name].astype(np.float64) - want)
                    row = {
                        "model": name,
                        "precision": precision,
                        "batch": batch,
                        "output": spec.name,
                        "max_abs": float(diff.max()),
                        "max_rel": float((diff / (np.abs(want) + 1e-6)).max()),
                        "ref_max": float(np.abs(want).max()),
                        "compile_s": round(compile_s, 1),
                        "cuda_graphs": result.manifest["partitions"][0]["config"].get(
                            "cuda_graphs"
                        ),
                    }
                    rows.append(row)
                    log(json.dumps(row))
    return rows


def section_hetero(work: Path, rounds: int, iters: int) -> dict[str, Any]:
    """A conv net with DepthToSpace (not in our torch mapping): GPU | OpenVINO CPU | GPU."""
    import onnx
    import onnxruntime as ort

    import ai_vmm

    sys.path.insert(0, str(REPO / "tests" / "support"))
    from hetero_model import make_depth_to_space_model

    path = work / "d2s.onnx"
    onnx.save(make_depth_to_space_model(channels=64, size=64), path)
    result = ai_vmm.compile(path, "cuda:0,openvino:CPU", work / "d2s.vmm", progress=log)
    plan = [
        {
            "id": p["id"],
            "target": p["target"],
            "device": p["device"],
            "inputs": p["inputs"],
            "outputs": p["outputs"],
        }
        for p in result.manifest["partitions"]
    ]
    log(f"plan: {json.dumps(plan)}")
    log(f"verification: {json.dumps(result.report.get('verification'))[:600]}")
    compiled = ai_vmm.runtime.load(work / "d2s.vmm")
    session = ort.InferenceSession(str(path))
    out: dict[str, Any] = {"plan": plan, "verification": result.report.get("verification")}
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        want = session.run(None, {"x": x})[0]
        got = compiled.run({"x": x})["y"]
        single = ai_vmm.runtime.load(
            ai_vmm.compile(path, "openvino:CPU", work / f"ov{batch}.vmm").path
        )
        timings = {"gpu+openvino": [], "openvino:CPU only": [], "onnxruntime:CPU (reference)": []}
        for _ in range(rounds):
            timings["gpu+openvino"].append(
                _timed(lambda x=x: compiled.run({"x": x}), _no_sync, iters)
            )
            timings["openvino:CPU only"].append(
                _timed(lambda x=x, s=single: s.run({"x": x}), _no_sync, iters)
            )
            timings["onnxruntime:CPU (reference)"].append(
                _timed(lambda x=x: session.run(None, {"x": x}), _no_sync, iters)
            )
        row = {
            "max_abs": float(np.abs(got - want).max()),
            "ref_max": float(np.abs(want).max()),
            "median_ms": {k: round(statistics.median(v), 3) for k, v in timings.items()},
        }
        out[f"batch {batch}"] = row
        log(f"hetero batch {batch}: {json.dumps(row)}")
    return out


def _no_sync() -> None:
    return None


class _Logits:
    """ResNetForImageClassification -> logits tensor (positional pixel_values)."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixel_values: Any) -> Any:
                return self.model(pixel_values=pixel_values).logits

        return Wrapped()


def _resnet50() -> Any:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        layer_type="bottleneck",
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        embedding_size=64,
        num_labels=1000,
    )
    return _Logits(ResNetForImageClassification(config)).eval()


def _timed(fn: Callable[[], Any], sync: Callable[[], None], iters: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters * 1000.0


def section_speed(work: Path, rounds: int, iters: int) -> list[dict[str, Any]]:
    import torch

    import ai_vmm
    from ai_vmm.runtime.executors import create_executor

    sync = torch.cuda.synchronize
    net = _resnet50()
    example = torch.randn(2, 3, 224, 224)
    log("compiling ResNet-50 with ai_vmm (torch source, cuda:0, fp16)")
    started = time.perf_counter()
    artifact = work / "resnet50-fp16.vmm"
    result = ai_vmm.compile(
        net,
        "cuda:0",
        artifact,
        precision="fp16",
        force_quantize=True,
        tune=False,
        example_inputs=(example,),
        dynamic_shapes={"pixel_values": {0: "batch"}},
    )
    ours_compile_s = time.perf_counter() - started
    part = result.manifest["partitions"][0]
    log(f"ai_vmm compile {ours_compile_s:.1f} s; config {part['config']}")
    compiled = ai_vmm.runtime.load(artifact)
    entry = artifact / part["entry"]
    outputs = tuple(part["outputs"])
    executor_graphs = create_executor(
        "cuda", entry, "0", {**part["config"], "cuda_graphs": True}, outputs
    )
    executor_plain = create_executor(
        "cuda", entry, "0", {**part["config"], "cuda_graphs": False}, outputs
    )
    raw_ours = torch._inductor.aoti_load_package(str(entry))

    half = _resnet50().half().cuda()
    log("exporting and compiling a raw AOTInductor package of the fp16 module")
    started = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(
        half,
        (torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.float16),),
        dynamic_shapes={"pixel_values": {0: batch}},
    )
    raw_path = torch._inductor.aoti_compile_and_package(program, package_path=str(work / "raw.pt2"))
    raw = torch._inductor.aoti_load_package(raw_path)
    raw_compile_s = time.perf_counter() - started
    compiled_fn = torch.compile(half)
    name = compiled.inputs[0].name
    rows = []
    for size in (1, 32):
        x32 = torch.randn(size, 3, 224, 224, device="cuda")
        x16 = x32.half()
        host = x32.cpu().numpy()
        feeds_gpu = {name: x32}
        contenders: dict[str, Callable[[], Any]] = {
            "torch eager fp16": lambda x16=x16: half(x16),
            "torch.compile fp16 (default mode)": lambda x16=x16: compiled_fn(x16),
            "raw AOTInductor package (fp16 module)": lambda x16=x16: raw(x16),
            "our payload, loaded raw": lambda x32=x32: raw_ours(x32),
            "ours: executor, GPU tensors, CUDA graphs": lambda f=feeds_gpu: executor_graphs.run(f),
            "ours: executor, GPU tensors, no graphs": lambda f=feeds_gpu: executor_plain.run(f),
            "ours: runtime, NumPy in/out": lambda h=host: compiled.run({name: h}),
        }
        with torch.inference_mode():
            started = time.perf_counter()
            for fn in contenders.values():
                for _ in range(3):
                    fn()
            sync()
            warm_s = time.perf_counter() - started
            log(f"batch {size}: warm-up (incl. torch.compile) {warm_s:.1f} s")
            samples: dict[str, list[float]] = {label: [] for label in contenders}
            for _ in range(rounds):
                for label, fn in contenders.items():
                    samples[label].append(_timed(fn, sync, iters))
        eager = statistics.median(samples["torch eager fp16"])
        comp = statistics.median(samples["torch.compile fp16 (default mode)"])
        raw_ms = statistics.median(samples["our payload, loaded raw"])
        for label, values in samples.items():
            ms = statistics.median(values)
            row = {
                "batch": size,
                "contender": label,
                "median_ms": round(ms, 4),
                "vs_eager": round(eager / ms, 2),
                "vs_torch_compile": round(comp / ms, 2),
                "vs_our_raw_payload": round(ms / raw_ms, 3),
                "rounds_ms": [round(v, 4) for v in values],
            }
            rows.append(row)
            log(json.dumps(row))
    rows.append(
        {
            "compile_s": {
                "ai_vmm (export to ONNX, fp32 + fp16 packages, checks)": round(ours_compile_s, 1),
                "raw AOTInductor": round(raw_compile_s, 1),
            },
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
        }
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, default=REPO / "out" / "gpu.json")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"unknown sections: {', '.join(unknown)}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    if args.json.is_file():
        results = json.loads(args.json.read_text())
    with tempfile.TemporaryDirectory(prefix="ai-vmm-gpu-") as tmp:
        work = Path(tmp)
        for section in sections:
            log(f"section {section}")
            if section == "env":
                results["env"] = section_env()
            elif section == "parity":
                results["parity"] = section_parity(work)
            elif section == "hetero":
                results["hetero"] = section_hetero(work, args.rounds, 20)
            else:
                results["speed"] = section_speed(work, args.rounds, args.iters)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
