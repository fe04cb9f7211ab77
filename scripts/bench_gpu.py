#!/usr/bin/env python
"""GPU benchmark of the cuda target; regenerates the measured part of docs/gpu.md.

Sections (``--sections``):

- ``env``: what discovery sees and the cuda target's measured figures.
- ``crash``: issue 18's crash scenario (``scripts/gpu_crash_check.py``): CUDA graphs at several
  shapes, two executors, other code's cuBLAS work, threads; each executor variant in its own
  process.
- ``speed``: per model (``--models``: ResNet-50, BERT-base at sequence 128, ViT-B/16; random
  weights, speed only) and batch (``--batches``), fp16, all in one process, interleaved rounds:
  torch eager; ``torch.compile`` default and ``mode="reduce-overhead"`` (static shapes, one
  compile per batch); a raw AOTInductor package of the same fp16 module (defaults, dynamic
  batch, no CUDA graphs); ours (the cuda target's package from the torch program, our executor,
  GPU tensors in and out) and ours through the whole runtime (NumPy in and out). Each round
  times every contender ``pipelined`` (calls back to back, one synchronization at the end) and
  ``latency`` (synchronized after every call). Median of the round means, and the spread
  (lowest and highest round).
- ``compile``: ``ai_vmm.compile`` end to end for ResNet-50 fp16 (the user's path: ONNX export
  for the reference, float and fp16 packages, gates), with the stage timings.

``--docs FILE`` renders the JSON into FILE between the ``bench_gpu`` markers (``--render-only``
renders without measuring). Usage::

    python scripts/bench_gpu.py --sections env,crash,speed --json docs/gpu.json --docs docs/gpu.md
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_gpu_report import render  # noqa: E402

SECTIONS = ("env", "crash", "speed", "compile")
MODELS = ("resnet50", "bert", "vit")
SEQ = 128
BLOCK_S = 0.05
"""Each contender runs about this long per round and mode."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Models: random weights, fixed seeds (speed only)
# --------------------------------------------------------------------------------------------


def build_model(name: str) -> tuple[Any, Callable[[int], dict[str, Any]], dict[str, Any]]:
    """(module in eval mode, inputs(batch) -> kwargs of CPU tensors, dynamic_shapes)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if name == "resnet50":
        config = tf.ResNetConfig(
            layer_type="bottleneck",
            depths=[3, 4, 6, 3],
            hidden_sizes=[256, 512, 1024, 2048],
            embedding_size=64,
            num_labels=1000,
        )
        inner = tf.ResNetForImageClassification(config)
        module = _Pick(inner, ("pixel_values",), "logits")
        return module.eval(), _images, {"pixel_values": {0: "batch"}}
    if name == "vit":
        inner = tf.ViTForImageClassification(tf.ViTConfig(num_labels=1000))
        module = _Pick(inner, ("pixel_values",), "logits")
        return module.eval(), _images, {"pixel_values": {0: "batch"}}
    if name == "bert":
        inner = tf.BertModel(tf.BertConfig(), add_pooling_layer=False)
        module = _Pick(inner, ("input_ids", "attention_mask"), "last_hidden_state")

        def tokens(batch: int) -> dict[str, Any]:
            generator = torch.Generator().manual_seed(batch)
            ids = torch.randint(1000, 20000, (batch, SEQ), generator=generator)
            return {"input_ids": ids, "attention_mask": torch.ones(batch, SEQ, dtype=torch.long)}

        dynamic = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
        return module.eval(), tokens, dynamic
    raise SystemExit(f"unknown model {name} ({', '.join(MODELS)})")


def _images(batch: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(batch)
    return {"pixel_values": torch.randn(batch, 3, 224, 224, generator=generator)}


class _Pick:
    """A transformers model as ``forward(<named tensors>) -> one output tensor``."""

    def __new__(cls, model: Any, names: tuple[str, ...], output: str) -> Any:
        import torch

        params = ", ".join(names)
        source = (
            f"def forward(self, {params}):\n"
            f"    return self.model({', '.join(f'{n}={n}' for n in names)}).{output}\n"
        )
        scope: dict[str, Any] = {}
        exec(source, scope)

        class Picked(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

        Picked.forward = scope["forward"]  # type: ignore[method-assign]
        return Picked()


# --------------------------------------------------------------------------------------------
# Ours: the cuda target's package from the torch program
# --------------------------------------------------------------------------------------------


def signature(program: Any, names: list[str], outputs: list[str]) -> Any:
    """An ONNX model with the program's signature and no nodes: what the cuda target reads
    of the graph when it compiles the torch program (names, element types, dynamic axes)."""
    import onnx_ir as ir

    dtypes = {"torch.float32": ir.DataType.FLOAT, "torch.int64": ir.DataType.INT64}
    user = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    values = []
    for name, node in zip(names, placeholders, strict=True):
        fake = node.meta["val"]
        shape = [d if isinstance(d, int) else ir.SymbolicDim("batch") for d in fake.shape]
        values.append(
            ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtypes[str(fake.dtype)]))
        )
    outs = [ir.Value(name=n, type=ir.TensorType(ir.DataType.FLOAT)) for n in outputs]
    graph = ir.Graph(values, outs, nodes=[], opset_imports={"": 18})
    return ir.Model(graph, ir_version=10)


def build_ours(
    module: Any,
    inputs: Callable[[int], dict[str, Any]],
    dynamic: dict[str, Any],
    work: Path,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any], list[str], float]:
    import torch
    from torch.export import Dim

    from ai_vmm import hardware
    from ai_vmm.targets.base import TargetOptions
    from ai_vmm.targets.cuda import CudaTarget

    example = inputs(2)
    names = list(example)
    batch = Dim("batch", min=1, max=4096)
    shapes = {n: {0: batch} for n in dynamic}
    started = time.perf_counter()
    program = torch.export.export(
        module, tuple(example.values()), dynamic_shapes=shapes, strict=False
    )
    model = signature(program, names, ["output"])
    device = CudaTarget().discover(hardware.detect_cpu())[0][0]
    options = TargetOptions(
        precision="fp16",
        extra={
            "input_bounds": {},
            "sample_dims": {},
            "torch_program": program,
            "torch_program_io": (names, ["output"]),
            "cuda_source": "torch",
            **(extra or {}),
        },
    )
    out = work / f"ours-{time.time_ns()}"
    out.mkdir()
    payload = CudaTarget().codegen(model, device, options, out)
    return out / payload.entry, payload.config, names, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _block(fn: Callable[[], Any], sync: Callable[[], None], iters: int, each: bool) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
        if each:
            sync()
    sync()
    return (time.perf_counter() - start) / iters * 1e3


def time_contenders(
    contenders: dict[str, Callable[[], Any]], rounds: int, modes: tuple[str, ...]
) -> dict[str, dict[str, list[float]]]:
    """Interleaved rounds: every contender once per round and mode; ms per call per round."""
    import torch

    sync = torch.cuda.synchronize
    iters = {}
    for label, fn in contenders.items():
        ms = _block(fn, sync, 3, True)
        iters[label] = max(5, min(400, int(BLOCK_S * 1e3 / max(ms, 1e-3))))
    samples: dict[str, dict[str, list[float]]] = {
        label: {mode: [] for mode in modes} for label in contenders
    }
    for _ in range(rounds):
        for label, fn in contenders.items():
            for mode in modes:
                samples[label][mode].append(_block(fn, sync, iters[label], mode == "latency"))
    return samples


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median_ms": round(statistics.median(values), 4),
        "min_ms": round(min(values), 4),
        "max_ms": round(max(values), 4),
        "rounds_ms": [round(v, 4) for v in values],
    }


def bench_model(
    name: str, batches: list[int], rounds: int, work: Path, variants: list[str]
) -> dict[str, Any]:
    import numpy as np
    import torch

    from ai_vmm.runtime.executors import create_executor
    from ai_vmm.runtime.executors.cuda_load import load_package

    module, inputs, dynamic = build_model(name)
    result: dict[str, Any] = {"model": name, "compile_s": {}, "batches": {}, "errors": {}}
    log(f"[{name}] building ours (cuda target, torch route, fp16)")
    entry, config, _, seconds = build_ours(module, inputs, dynamic, work)
    result["compile_s"]["ours (cuda target: export, package, checks)"] = round(seconds, 1)
    result["config"] = {k: v for k, v in config.items() if k != "inputs"}
    log(f"[{name}] ours built in {seconds:.1f} s: {result['config']}")
    ours = create_executor(
        "cuda", entry, "0", {**config, "device_outputs": ["output"]}, ("output",)
    )
    ours_host = create_executor("cuda", entry, "0", config, ("output",))
    built: dict[str, Any] = {}
    for variant in variants:
        label = f"ours + {variant}"
        extra = {k: v for k, v in VARIANTS[variant].items() if not k.startswith("_")}
        if extra.get("cuda_static_batches") == "timed":
            extra["cuda_static_batches"] = [b for b in batches if b >= 8]
        entry2, config2, _, seconds2 = build_ours(module, inputs, dynamic, work, extra)
        config2 = {**config2, **VARIANTS[variant].get("_executor", {})}
        result["compile_s"][label] = round(seconds2, 1)
        result.setdefault("variant_config", {})[variant] = {
            k: v for k, v in config2.items() if k != "inputs"
        }
        log(
            f"[{name}] {label} built in {seconds2:.1f} s: {config2.get('inductor')} "
            f"{config2.get('static_note', '')}"
        )
        built[label] = create_executor(
            "cuda", entry2, "0", {**config2, "device_outputs": ["output"]}, ("output",)
        )
    half = copy.deepcopy(module).half().cuda().eval()
    log(f"[{name}] raw AOTInductor package (defaults) of the fp16 module")
    started = time.perf_counter()
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    example16 = _cast({k: v.cuda() for k, v in inputs(2).items()}, torch.float16)
    raw_program = torch.export.export(
        half,
        tuple(example16.values()),
        dynamic_shapes={n: {0: batch_dim} for n in dynamic},
        strict=False,
    )
    raw_path = torch._inductor.aoti_compile_and_package(
        raw_program, package_path=str(work / f"raw-{name}.pt2")
    )
    # Loaded with its model runner (runtime/executors/cuda_load.py): PyTorch's package loader
    # crashed on the GPU machine with torch 2.11 (docs/gpu.md).
    raw = load_package(torch, Path(raw_path), torch.device("cuda:0"))
    result["compile_s"]["raw AOTInductor"] = round(time.perf_counter() - started, 1)
    # The raw package run by our executor (CUDA graphs per shape): what graphs alone give,
    # without our Inductor settings.
    raw_config = {
        "inputs": [
            {
                "name": n,
                "dtype": str(v.dtype).replace("torch.", ""),
                "shape": [None, *v.shape[1:]],
            }
            for n, v in example16.items()
        ],
        "precision": "fp16",
        "torch": torch.__version__,
        "cuda_graphs": True,
        "device_outputs": ["output"],
    }
    raw_graphs = create_executor("cuda", Path(raw_path), "0", raw_config, ("output",))
    default = torch.compile(half, dynamic=False)
    overhead = torch.compile(half, mode="reduce-overhead", dynamic=False)
    for batch in batches:
        cpu = inputs(batch)
        gpu32 = {k: v.cuda() for k, v in cpu.items()}
        gpu16 = _cast(gpu32, torch.float16)
        host = {k: v.numpy() for k, v in cpu.items()}
        with torch.inference_mode():
            contenders: dict[str, Callable[[], Any]] = {
                "torch eager": lambda g=gpu16: half(**g),
                "torch.compile default": lambda g=gpu16: default(**g),
                "torch.compile reduce-overhead": lambda g=gpu16: overhead(**g),
                "raw AOTInductor": lambda g=gpu16: raw(*g.values()),
                "raw AOTInductor + our executor (CUDA graphs)": lambda g=gpu16: raw_graphs.run(g),
                "ours (GPU tensors)": lambda g=gpu32: ours.run(g),
                "ours (runtime, NumPy in/out)": lambda h=host: ours_host.run(h),
            }
            for label, executor in built.items():
                contenders[label] = lambda g=gpu32, e=executor: e.run(g)
            for label in ("torch.compile default", "torch.compile reduce-overhead"):
                started = time.perf_counter()
                for _ in range(3):
                    contenders[label]()
                torch.cuda.synchronize()
                result["compile_s"][f"{label} (batch {batch})"] = round(
                    time.perf_counter() - started, 1
                )
            for fn in contenders.values():
                fn()
            torch.cuda.synchronize()
            samples = time_contenders(contenders, rounds, ("pipelined", "latency"))
            with torch.no_grad():
                want = module.cuda().float()(**gpu32).float()
            got = torch.from_numpy(np.asarray(ours_host.run(host)["output"])).cuda()
            result["errors"][str(batch)] = round(float((got - want).norm() / want.norm()), 6)
            for label, executor in built.items():
                out = executor.run(gpu32)["output"].float()
                result.setdefault("variant_errors", {}).setdefault(label, {})[str(batch)] = round(
                    float((out - want).norm() / want.norm()), 6
                )
            module.cpu()
        result["batches"][str(batch)] = {
            label: {mode: _summary(v) for mode, v in modes.items()}
            for label, modes in samples.items()
        }
        brief = {k: v["pipelined"]["median_ms"] for k, v in result["batches"][str(batch)].items()}
        log(f"[{name}] batch {batch}: {json.dumps(brief)}")
        log(f"[{name}] batch {batch}: ours rel. error {result['errors'][str(batch)]}")
    return result


VARIANTS: dict[str, dict[str, Any]] = {
    "cl": {"cuda_channels_last": True},
    "freezing": {"cuda_freezing": True},
    # Inductor's coordinate descent over each Triton kernel's configuration (compile time).
    "cd": {"cuda_coordinate_descent": True},
    "cl+freezing": {"cuda_channels_last": True, "cuda_freezing": True},
    # cuDNN's autotuner during the executor's warm-up and capture (an executor setting).
    "cl+cudnn": {"cuda_channels_last": True, "_executor": {"cudnn_benchmark": True}},
    # A static-batch package beside the dynamic one for every timed batch >= 8, run where it
    # fits (targets/cuda_static.py; a compile turns static_dispatch on where its timing says).
    "static": {"cuda_static_batches": "timed", "_executor": {"static_dispatch": True}},
    "static+cudnn": {
        "cuda_static_batches": "timed",
        "_executor": {"static_dispatch": True, "cudnn_benchmark": True},
    },
}


def parse_variants(text: str) -> dict[str, list[str]]:
    """``"resnet50:cl,cl+freezing bert:freezing"`` -> {model: [variant, ...]}."""
    out: dict[str, list[str]] = {}
    for item in text.split():
        model, _, names = item.partition(":")
        chosen = [n for n in names.split(",") if n] or ["cl+freezing"]
        unknown = [n for n in chosen if n not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
        out[model] = chosen
    return out


def _cast(feeds: dict[str, Any], dtype: Any) -> dict[str, Any]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in feeds.items()}


# --------------------------------------------------------------------------------------------
# Other sections
# --------------------------------------------------------------------------------------------


def section_env() -> dict[str, Any]:
    import torch

    from ai_vmm import hardware, registry
    from ai_vmm.targets.cuda import CudaTarget

    inventory = hardware.discover(registry.discoverers())
    text = hardware.format_inventory(inventory)
    print(text, flush=True)
    device = inventory.find("cuda")
    figures = CudaTarget().measure_figures(device) if device else None
    log(f"figures: {figures}")
    return {
        "inventory": text,
        "figures": figures,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def section_compile(work: Path) -> dict[str, Any]:
    import torch

    import ai_vmm

    module, inputs, dynamic = build_model("resnet50")
    example = inputs(2)
    started = time.perf_counter()
    result = ai_vmm.compile(
        module,
        "cuda:0",
        work / "resnet50.vmm",
        precision="fp16",
        force_quantize=True,
        tune=False,
        example_inputs=(example["pixel_values"],),
        dynamic_shapes=dynamic,
        progress=log,
    )
    total = time.perf_counter() - started
    part = result.manifest["partitions"][0]
    out = {
        "model": "resnet50",
        "precision": "fp16",
        "total_s": round(total, 1),
        "timings": result.report.get("timings"),
        "config": {k: v for k, v in part["config"].items() if k != "inputs"},
        "torch": torch.__version__,
    }
    log(f"ai_vmm.compile ResNet-50 fp16: {json.dumps(out)[:800]}")
    return out


def section_speed(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    """Each model in turn; the JSON is written after each, so a failure keeps the others."""
    import torch

    speed = results.setdefault("speed", {})
    variants = parse_variants(args.variants)
    batches = [int(b) for b in args.batches.split(",")]
    for name in args.models.split(","):
        try:
            speed[name] = bench_model(name, batches, args.rounds, work, variants.get(name, []))
        except Exception as exc:
            log(f"[{name}] failed: {type(exc).__name__}: {exc}")
            speed[name] = {"model": name, "failed": f"{type(exc).__name__}: {exc}"[:800]}
        args.json.write_text(json.dumps(results, indent=2))
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="env,crash,speed")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--variants",
        default="",
        help="extra builds of ours with Inductor settings, e.g. 'resnet50:cl,cl+freezing "
        "bert:freezing' (cl: forced channels-last; freezing: weights as constants)",
    )
    parser.add_argument("--old-executor", type=Path, help="for the crash section")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "gpu.json")
    parser.add_argument("--docs", type=Path)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.json.is_file():
        results = json.loads(args.json.read_text())
    if not args.render_only:
        sections = [s for s in args.sections.split(",") if s]
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            print(f"unknown sections: {', '.join(unknown)}", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="ai-vmm-gpu-") as tmp:
            work = Path(tmp)
            for section in sections:
                log(f"section {section}")
                try:
                    if section == "env":
                        results["env"] = section_env()
                    elif section == "crash":
                        from gpu_crash_check import check_all

                        results["crash"] = check_all(work, args.old_executor, log)
                    elif section == "compile":
                        results["compile"] = section_compile(work)
                    else:
                        section_speed(args, results, work)
                except Exception as exc:
                    log(f"section {section} failed: {type(exc).__name__}: {exc}")
                    results[f"{section}_failed"] = f"{type(exc).__name__}: {exc}"[:800]
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2))
    if args.docs:
        render(results, args.docs)
        log(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
