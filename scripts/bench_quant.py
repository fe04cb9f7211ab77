#!/usr/bin/env python
"""Quantization benchmark: accuracy on real data and speed against float, per target.

Needs plain openvino, nncf, onnxruntime, numpy, torch, transformers, tokenizers, safetensors and
scikit-learn (no openvino-dev tools). Every accuracy number comes from real weights and real
data (see models/quant_models.py); every speed number is a ratio against float measured in the
same process, in interleaved rounds (the median of the round medians), so a noisy neighbour
hits both sides alike.

Sections (``--sections``, default all):

- ``minilm``: real all-MiniLM-L6-v2, INT8 (ai_vmm.compile, force_quantize) vs float on each
  target: sentence-embedding cosine on held-out real sentences, speed ratio.
- ``nncf-onnx``: NNCF's ONNX backend vs onnxruntime.quantization on the same model and data,
  both run by ONNX Runtime (why the onnxruntime target uses the latter).
- ``digits``: a CNN trained here on scikit-learn's digits; top-1 on the test split.
- ``decoder``: MiniLM's weights as a causal decoder; weight-only INT8 / INT4: file size ratio,
  logits cosine, next-token agreement, speed ratio.
- ``minilm-speed`` (not in the default run): SPEED ONLY, for machines without the real weights.
  A model with all-MiniLM-L6-v2's exact shape (``BertConfig``: 6 layers, hidden 384, 12 heads,
  intermediate 1536, vocab 30522) and random weights, calibrated on random token ids of
  realistic lengths; openvino:CPU float32 vs INT8 (the ``minilm`` section's options) vs BF16,
  interleaved, at the ``minilm`` section's sentence lengths (batch 1) and at sequence 128,
  batch 1 and 8; with the kernels OpenVINO picked for the FullyConnected layers. Latency does
  not depend on weight values, so the ratios carry over to the real model; the accuracy gate
  is relaxed here (random weights say nothing about accuracy: see ``minilm``).

Results merge into ``--json`` (sections run separately keep the others) and the table between
the ``bench_quant`` markers of ``--out`` is regenerated from it.

Usage::

    python scripts/bench_quant.py                       # everything (~20 min on 2 busy cores)
    python scripts/bench_quant.py --sections digits --rounds 5
    python scripts/bench_quant.py --sections minilm-speed --host "Xeon SPR"  # no real weights
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
SECTIONS = ("minilm", "nncf-onnx", "digits", "decoder")
EXTRA_SECTIONS = ("minilm-speed",)  # run only when named
# Token counts of the 16 held-out sentences the ``minilm`` section times (real tokenizer).
MINILM_TIMED_LENGTHS = (14, 11, 11, 24, 16, 12, 10, 26, 9, 9, 12, 13, 14, 16, 9, 20)
BEGIN, END = "<!-- bench_quant:begin -->", "<!-- bench_quant:end -->"
OV, ORT = "openvino:CPU", "onnxruntime:CPU"


def _quant_models() -> Any:
    from ai_vmm.bench_suite import load_module

    return load_module(REPO / "models" / "quant_models.py", "quant_models")


def _executor(artifact: Path, threads: int = 0) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The artifact's payload as a callable, optionally pinned to ``threads`` threads."""
    from ai_vmm.runtime.executors import create_executor

    manifest = json.loads((artifact / "manifest.json").read_text())
    part = manifest["partitions"][0]
    config = dict(part["config"])
    if threads:
        key = "inference_num_threads" if part["target"] == "openvino" else "intra_op_num_threads"
        config[key] = threads
    outputs = tuple(o["name"] for o in manifest["outputs"])
    executor = create_executor(
        part["target"], artifact / part["entry"], part["device"], config, outputs
    )
    return executor.run


def interleaved(
    contenders: dict[str, Callable[[], Any]], rounds: int, per_round_s: float = 0.6
) -> dict[str, float]:
    """Median ms per call of each contender: every round times each one in turn."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for run in contenders.values():
        run()  # warm-up (first-call compilation, allocations)
    for _ in range(rounds):
        for name, run in contenders.items():
            times = []
            deadline = time.perf_counter() + per_round_s
            while len(times) < 3 or time.perf_counter() < deadline:
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1000)
            samples[name].append(statistics.median(times))
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def _speed(
    float_art: Path, quant_art: Path, feeds: list[dict[str, Any]], rounds: int
) -> dict[str, Any]:
    """float / quantized latency ratio, with the payload's own threads and with one thread."""
    out: dict[str, Any] = {}
    for threads in (0, 1):
        f, q = _executor(float_art, threads), _executor(quant_art, threads)

        def over(run: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
            return lambda: [run(feed) for feed in feeds] and None

        ms = interleaved({"float": over(f), "quantized": over(q)}, rounds)
        label = "default threads" if threads == 0 else "1 thread"
        out[label] = {
            "float_ms": round(ms["float"] / len(feeds), 3),
            "quantized_ms": round(ms["quantized"] / len(feeds), 3),
            "speedup": round(ms["float"] / ms["quantized"], 3),
        }
    return out


def _compile(model: Path, target: str, out: Path, **options: Any) -> Any:
    import ai_vmm

    return ai_vmm.compile(str(model), target, out, tune=False, **options)


def _quant_summary(report: dict[str, Any]) -> dict[str, Any]:
    section = report.get("quantization", {})
    return {
        "decision": section.get("decision"),
        "method": section.get("method"),
        "quantized_layers": section.get("quantized_layers", {}).get("count"),
        "float_layers": len(section.get("float_layers", {})),
        "size_ratio": section.get("size", {}).get("ratio"),
        "gate": section.get("accuracy", {}).get("metrics"),
    }


def bench_minilm(qm: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    qm.fetch_realmodels()
    model = qm.export_minilm(work / "minilm.onnx")
    feeds = qm.minilm_feeds(qm.docstring_sentences(400))
    held = feeds[-100:]  # the compile holds out the last quarter of the 400
    timed = held[:: max(1, len(held) // 16)][:16]
    results: dict[str, Any] = {"sentences": len(feeds), "held_out": len(held)}
    modes = {OV: [{"quantize": "int8"}], ORT: [{"quantize": "int8"}, {"quantize": "int8-dynamic"}]}
    for target, variants in modes.items():
        float_art = work / f"minilm-{target.split(':')[0]}-fp32.vmm"
        _compile(model, target, float_art)
        float_run = _executor(float_art)
        for options in variants:
            name = f"{target} {options['quantize']}"
            print(f"minilm: {name}", flush=True)
            art = work / f"minilm-{target.split(':')[0]}-{options['quantize']}.vmm"
            started = time.perf_counter()
            calibration = feeds if options["quantize"] == "int8" else None
            result = _compile(
                model,
                target,
                art,
                calibration=calibration,
                calib_samples=args.calib_samples,
                force_quantize=True,
                **options,
            )
            compile_s = time.perf_counter() - started
            quant_run = _executor(art)
            cosines = []
            for feed in held:
                mask = feed["attention_mask"]
                a = qm.sentence_embedding(float_run(feed)["last_hidden_state"], mask)
                b = qm.sentence_embedding(quant_run(feed)["last_hidden_state"], mask)
                cosines.append(float(np.sum(a * b)))
            results[name] = {
                **_quant_summary(result.report),
                "compile_s": round(compile_s, 1),
                "embedding_cosine_mean": round(float(np.mean(cosines)), 5),
                "embedding_cosine_min": round(float(np.min(cosines)), 5),
                "speed": _speed(float_art, art, timed, args.rounds),
            }
            print(json.dumps(results[name], indent=1), flush=True)
    return results


def bench_nncf_onnx(qm: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """NNCF's ONNX backend against onnxruntime.quantization, both run by ONNX Runtime."""
    import nncf
    import onnx
    import onnxruntime as ort

    qm.fetch_realmodels()
    model = qm.export_minilm(work / "minilm-nncf.onnx")
    feeds = qm.minilm_feeds(qm.docstring_sentences(400))
    calib, held = feeds[: args.calib_samples], feeds[-100:]
    timed = held[:: max(1, len(held) // 16)][:16]
    started = time.perf_counter()
    quantized = nncf.quantize(
        onnx.load(str(model)),
        nncf.Dataset(calib),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calib),
    )
    nncf_s = time.perf_counter() - started
    nncf_path = work / "minilm-nncf-int8.onnx"
    onnx.save(quantized, str(nncf_path))
    ort_art = work / "minilm-ort-int8-for-nncf.vmm"
    started = time.perf_counter()
    _compile(
        model,
        ORT,
        ort_art,
        quantize="int8",
        calibration=feeds,
        calib_samples=args.calib_samples,
        force_quantize=True,
    )
    ort_s = time.perf_counter() - started
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {
        "float": ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]),
        "nncf-onnx": ort.InferenceSession(
            str(nncf_path), options, providers=["CPUExecutionProvider"]
        ),
    }
    runs: dict[str, Callable[[dict[str, Any]], np.ndarray]] = {
        name: (lambda s: lambda feed: s.run(None, feed)[0])(session)
        for name, session in sessions.items()
    }
    ort_run = _executor(ort_art)
    runs["onnxruntime.quantization"] = lambda feed: ort_run(feed)["last_hidden_state"]
    results: dict[str, Any] = {
        "compile_s": {"nncf-onnx": round(nncf_s, 1), "onnxruntime.quantization": round(ort_s, 1)}
    }
    for name in ("nncf-onnx", "onnxruntime.quantization"):
        cosines = []
        for feed in held:
            mask = feed["attention_mask"]
            a = qm.sentence_embedding(runs["float"](feed), mask)
            b = qm.sentence_embedding(runs[name](feed), mask)
            cosines.append(float(np.sum(a * b)))
        results[name] = {
            "embedding_cosine_mean": round(float(np.mean(cosines)), 5),
            "embedding_cosine_min": round(float(np.min(cosines)), 5),
        }
    ms = interleaved(
        {
            name: (lambda r: lambda: [r(f) for f in timed] and None)(run)
            for name, run in runs.items()
        },
        args.rounds,
    )
    for name in ("nncf-onnx", "onnxruntime.quantization"):
        results[name]["speedup"] = round(ms["float"] / ms[name], 3)
    results["float_ms"] = round(ms["float"] / len(timed), 3)
    print(json.dumps(results, indent=1), flush=True)
    return results


def bench_digits(qm: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    path, splits = qm.train_digits_cnn(work / "digits.onnx")
    calib = work / "digits-calib.npz"
    np.savez(calib, pixels=splits.x_calib)
    results: dict[str, Any] = {"test_samples": len(splits.y_test)}

    def top1(run: Callable[[dict[str, Any]], dict[str, Any]]) -> float:
        x = splits.x_test
        logits = np.concatenate(
            [run({"pixels": x[i : i + 64]})["logits"] for i in range(0, len(x), 64)]
        )
        return round(100.0 * float(np.mean(logits.argmax(axis=1) == splits.y_test)), 2)

    for target in (OV, ORT):
        print(f"digits: {target}", flush=True)
        float_art = work / f"digits-{target.split(':')[0]}-fp32.vmm"
        art = work / f"digits-{target.split(':')[0]}-int8.vmm"
        _compile(path, target, float_art)
        result = _compile(
            path, target, art, quantize="int8", calibration=calib, force_quantize=True
        )
        batch1 = [{"pixels": splits.x_test[i : i + 1]} for i in range(16)]
        batch64 = [{"pixels": splits.x_test[:64]}]
        results[target] = {
            **_quant_summary(result.report),
            "top1_float": top1(_executor(float_art)),
            "top1_int8": top1(_executor(art)),
            "speed_batch1": _speed(float_art, art, batch1, args.rounds),
            "speed_batch64": _speed(float_art, art, batch64, args.rounds),
        }
        print(json.dumps(results[target], indent=1), flush=True)
    return results


def bench_decoder(qm: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    qm.fetch_realmodels()
    model = qm.export_minilm_decoder(work / "decoder.onnx")
    ids = [f["input_ids"] for f in qm.minilm_feeds(qm.docstring_sentences(400))[-100:]]
    feeds = [{"input_ids": x} for x in ids]
    timed = feeds[:: max(1, len(feeds) // 8)][:8]
    variants = [
        (OV, {"weights": "int8"}),
        (OV, {"weights": "int4"}),
        (OV, {"weights": "int4", "ratio": 0.8}),
        (ORT, {"weights": "int8"}),
        (ORT, {"weights": "int4"}),
    ]
    results: dict[str, Any] = {"sequences": len(feeds)}
    floats: dict[str, Path] = {}
    for target, options in variants:
        short = target.split(":")[0]
        if target not in floats:
            floats[target] = work / f"decoder-{short}-fp32.vmm"
            _compile(model, target, floats[target])
        label = f"{target} weights {options['weights']}" + (
            f" ratio {options['ratio']}" if "ratio" in options else ""
        )
        print(f"decoder: {label}", flush=True)
        art = work / f"decoder-{short}-{len(results)}.vmm"
        result = _compile(model, target, art, force_quantize=True, **options)
        float_run, quant_run = _executor(floats[target]), _executor(art)
        cosines, agree, total = [], 0, 0
        for feed in feeds:
            a = float_run(feed)["logits"][0].astype(np.float64)
            b = quant_run(feed)["logits"][0].astype(np.float64)
            cosines += list(
                np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            )
            agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
            total += a.shape[0]
        results[label] = {
            **_quant_summary(result.report),
            "logits_cosine_mean": round(float(np.mean(cosines)), 5),
            "logits_cosine_min": round(float(np.min(cosines)), 5),
            "next_token_agreement": round(100.0 * agree / total, 2),
            "speed": _speed(floats[target], art, timed, args.rounds),
        }
        print(json.dumps(results[label], indent=1), flush=True)
    return results


def export_shaped_minilm(out: Path, seed: int = 0) -> Path:
    """A model shaped exactly like all-MiniLM-L6-v2 with random weights, exported to ONNX.

    Same graph as ``quant_models.export_minilm`` (``BertModel`` without pooler, eager
    attention, three int64 inputs, dynamic batch x sequence, opset 17); for speed only.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        hidden_act="gelu",
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
    )
    config._attn_implementation = "eager"
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    return _quant_models().export_bert_last_hidden(model, out)


def random_token_feed(batch: int, length: int, rng: np.random.Generator) -> dict[str, Any]:
    """[CLS] random word-piece ids [SEP], all attended, segment 0."""
    ids = rng.integers(1996, 30522, size=(batch, length), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


def _fc_kernels(run: Callable[[dict[str, Any]], Any], feed: dict[str, Any]) -> dict[str, int]:
    """``primitiveType (runtimePrecision)`` counts of OpenVINO's FullyConnected / MatMul nodes."""
    run(feed)  # dynamic shapes: primitives are picked at the first inference
    compiled = getattr(run, "__self__", None)
    compiled = getattr(compiled, "compiled_model", None)
    if compiled is None:
        return {}
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind not in ("FullyConnected", "MatMul"):
            continue
        prim = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        key = f"{kind}: {prim} ({prec})"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def cpu_details() -> dict[str, Any]:
    """CPU model and the int8/bf16-relevant flags (/proc/cpuinfo), and what OpenVINO sees."""
    flags: list[str] = []
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    from ai_vmm.hardware import ISA_FEATURES

    wanted = tuple(f for f in ISA_FEATURES if f.startswith(("avx2", "avx512", "avx_", "amx")))
    details: dict[str, Any] = {"model": model, "flags": [f for f in wanted if f in flags]}
    try:
        import openvino as ov

        core = ov.Core()
        details["openvino_device"] = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        details["openvino_capabilities"] = [
            str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        ]
    except Exception as exc:  # the numbers still count without it
        details["openvino_error"] = str(exc)
    return details


def bench_minilm_speed(qm: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """SPEED ONLY: MiniLM-shaped random-weight model, openvino:CPU float32 vs INT8 vs BF16."""
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    model = export_shaped_minilm(work / "minilm-shaped.onnx")
    export_s = time.perf_counter() - started
    # Calibration / gate samples: random ids, sentence-like lengths (6-64 tokens, as the real
    # sentences), one in four at 128 so the ranges also cover the long shapes timed below.
    count = max(8, int(args.calib_samples * 4 / 3))
    lengths = [128 if i % 4 == 3 else int(rng.integers(6, 65)) for i in range(count)]
    feeds = [random_token_feed(1, n, rng) for n in lengths]
    results: dict[str, Any] = {
        "model": "BertModel(all-MiniLM-L6-v2 config), random weights (seed 0), for speed only",
        "cpu": cpu_details(),
        "calibration": f"{len(feeds)} random-id samples (last quarter held out)",
        "export_s": round(export_s, 1),
    }
    print(json.dumps(results["cpu"], indent=1), flush=True)
    arts = {name: work / f"minilm-shaped-{name}.vmm" for name in ("float", "int8", "bf16")}
    variants: dict[str, dict[str, Any]] = {
        "float": {},
        "int8": {
            "quantize": "int8",
            "calibration": feeds,
            "calib_samples": args.calib_samples,
            "force_quantize": True,
            # Random weights: accuracy means nothing here, and accuracy control would leave
            # layers float and change what is timed. The real-weight gate is the minilm section.
            "max_accuracy_drop": {"cosine": 1.0},
        },
        "bf16": {"precision": "bf16", "force_quantize": True},
    }
    compiles: dict[str, Any] = {}
    for name, options in variants.items():
        print(f"minilm-speed: compile {name}", flush=True)
        started = time.perf_counter()
        result = _compile(model, OV, arts[name], **options)
        compiles[name] = {
            "compile_s": round(time.perf_counter() - started, 1),
            **(_quant_summary(result.report) if name != "float" else {}),
        }
    results["compiles"] = compiles
    print(json.dumps(compiles, indent=1), flush=True)
    shapes: dict[str, list[dict[str, Any]]] = {
        "sentences, batch 1": [random_token_feed(1, n, rng) for n in MINILM_TIMED_LENGTHS],
        "batch 1, seq 128": [random_token_feed(1, 128, rng)],
        "batch 8, seq 128": [random_token_feed(8, 128, rng)],
    }
    kernels: dict[str, dict[str, int]] = {}
    speed: dict[str, Any] = {}
    for threads in (0, 1):
        runs = {name: _executor(art, threads) for name, art in arts.items()}
        if threads == 0:
            for name, run in runs.items():
                kernels[name] = _fc_kernels(run, shapes["batch 1, seq 128"][0])
            print(json.dumps(kernels, indent=1), flush=True)
        label = "default threads" if threads == 0 else "1 thread"
        for shape, timed in shapes.items():
            ms = interleaved(
                {
                    name: (lambda r, t: lambda: [r(f) for f in t] and None)(run, timed)
                    for name, run in runs.items()
                },
                args.rounds,
            )
            row = {f"{name}_ms": round(ms[name] / len(timed), 3) for name in runs}
            row["int8_speedup"] = round(ms["float"] / ms["int8"], 3)
            row["bf16_speedup"] = round(ms["float"] / ms["bf16"], 3)
            row["int8_vs_bf16"] = round(ms["bf16"] / ms["int8"], 3)
            speed.setdefault(shape, {})[label] = row
            print(f"minilm-speed: {shape}, {label}: {json.dumps(row)}", flush=True)
    results["kernels"] = kernels
    results["speed"] = speed
    results["rounds"] = args.rounds
    return results


def environment() -> dict[str, Any]:
    import importlib.metadata

    from ai_vmm import hardware

    cpu = hardware.detect_cpu()
    versions = {}
    for name in ("openvino", "nncf", "onnxruntime", "torch", "transformers", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {
        "cpu": cpu.model,
        "cores": cpu.logical_cores,
        "isa": list(cpu.isa),
        "versions": versions,
    }


def markdown(data: dict[str, Any]) -> str:
    """The results table for docs/quantization.md."""
    lines = []
    for host, sections in data.items():
        env = sections.get("environment", {})
        lines += [
            f"#### {host}",
            "",
            f"{env.get('cpu', '?')}, {env.get('cores', '?')} logical cores, ISA "
            f"{' '.join(env.get('isa', [])) or '?'}; "
            + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
            "",
        ]
        minilm = sections.get("minilm")
        if minilm:
            lines += [
                f"all-MiniLM-L6-v2 (real weights), {minilm['held_out']} held-out real sentences:",
                "",
                "| target, mode | embedding cosine mean / min | speed-up (default threads) "
                "| speed-up (1 thread) | float ms/sentence | layers int8 / float |",
                "|---|---|---|---|---|---|",
            ]
            for name, row in minilm.items():
                if not isinstance(row, dict):
                    continue
                sp = row["speed"]
                lines.append(
                    f"| {name} | {row['embedding_cosine_mean']:.4f} / "
                    f"{row['embedding_cosine_min']:.4f} | {sp['default threads']['speedup']}x "
                    f"| {sp['1 thread']['speedup']}x | {sp['default threads']['float_ms']} "
                    f"| {row['quantized_layers']} / {row['float_layers']} |"
                )
            lines.append("")
        choice = sections.get("nncf-onnx")
        if choice:
            lines += [
                "NNCF's ONNX backend against onnxruntime.quantization (MiniLM, both run by ONNX "
                "Runtime):",
                "",
                "| quantizer | embedding cosine mean / min | speed-up | quantize time (s) |",
                "|---|---|---|---|",
            ]
            for name in ("nncf-onnx", "onnxruntime.quantization"):
                row = choice[name]
                lines.append(
                    f"| {name} | {row['embedding_cosine_mean']:.4f} / "
                    f"{row['embedding_cosine_min']:.4f} | {row['speedup']}x "
                    f"| {choice['compile_s'][name]} |"
                )
            lines.append("")
        digits = sections.get("digits")
        if digits:
            lines += [
                f"Digits CNN trained here, top-1 on {digits['test_samples']} test images:",
                "",
                "| target | top-1 float | top-1 INT8 | speed-up batch 1 (default / 1 thread) "
                "| speed-up batch 64 (default / 1 thread) |",
                "|---|---|---|---|---|",
            ]
            for target in (OV, ORT):
                row = digits.get(target)
                if row:
                    b1, b64 = row["speed_batch1"], row["speed_batch64"]
                    lines.append(
                        f"| {target} | {row['top1_float']} | {row['top1_int8']} "
                        f"| {b1['default threads']['speedup']}x / {b1['1 thread']['speedup']}x "
                        f"| {b64['default threads']['speedup']}x / {b64['1 thread']['speedup']}x |"
                    )
            lines.append("")
        speed = sections.get("minilm-speed")
        if speed:
            cpu = speed.get("cpu", {})
            int8 = speed.get("compiles", {}).get("int8", {})
            lines += [
                "MiniLM-shaped model (all-MiniLM-L6-v2's config, random weights: speed only), "
                f"openvino:CPU; CPU flags {' '.join(cpu.get('flags', [])) or '?'}; INT8 layers "
                f"{int8.get('quantized_layers')} / float {int8.get('float_layers')}; "
                f"median of {speed.get('rounds')} interleaved rounds:",
                "",
                "| shape | threads | float32 ms | INT8 ms | BF16 ms | INT8 speed-up "
                "| BF16 speed-up | INT8 vs BF16 |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for shape, by_threads in speed.get("speed", {}).items():
                for label, row in by_threads.items():
                    lines.append(
                        f"| {shape} | {label} | {row['float_ms']} | {row['int8_ms']} "
                        f"| {row['bf16_ms']} | **{row['int8_speedup']}x** "
                        f"| {row['bf16_speedup']}x | {row['int8_vs_bf16']}x |"
                    )
            lines.append("")
            kernels = speed.get("kernels", {})
            if kernels:
                lines += ["OpenVINO's kernels for the FullyConnected / MatMul nodes:", ""]
                for name, counts in kernels.items():
                    listed = ", ".join(f"{k} x{v}" for k, v in counts.items()) or "?"
                    lines.append(f"- {name}: {listed}")
                lines.append("")
        decoder = sections.get("decoder")
        if decoder:
            lines += [
                f"Weight-only compression, MiniLM weights as a causal decoder, "
                f"{decoder['sequences']} real sentences:",
                "",
                "| target, mode | file size vs float | logits cosine mean / min "
                "| next-token agreement | speed-up (default / 1 thread) |",
                "|---|---|---|---|---|",
            ]
            for name, row in decoder.items():
                if not isinstance(row, dict):
                    continue
                sp = row["speed"]
                lines.append(
                    f"| {name} | {row['size_ratio']} | {row['logits_cosine_mean']:.4f} / "
                    f"{row['logits_cosine_min']:.4f} | {row['next_token_agreement']}% "
                    f"| {sp['default threads']['speedup']}x / {sp['1 thread']['speedup']}x |"
                )
            lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calib-samples", type=int, default=100)
    parser.add_argument("--host", default="", help="Label of this machine in the results.")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "quantization.json")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "quantization.md")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS) - set(EXTRA_SECTIONS))
    if unknown:
        known = ", ".join(SECTIONS + EXTRA_SECTIONS)
        parser.error(f"unknown sections {unknown} (sections: {known})")
    qm = _quant_models()
    env = environment()
    host = args.host or env["cpu"]
    data = json.loads(args.json.read_text()) if args.json.is_file() else {}
    entry = data.setdefault(host, {})
    entry["environment"] = env
    runners = {
        "minilm": bench_minilm,
        "nncf-onnx": bench_nncf_onnx,
        "digits": bench_digits,
        "decoder": bench_decoder,
        "minilm-speed": bench_minilm_speed,
    }
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for name in chosen:
            started = time.perf_counter()
            entry[name] = runners[name](qm, Path(tmp), args)
            entry[name]["_seconds"] = round(time.perf_counter() - started, 1)
            args.json.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    if args.out.is_file():
        text = args.out.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            args.out.write_text(f"{head}{BEGIN}\n{markdown(data)}\n{END}{tail}")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
