"""How INT4 was chosen for causal LMs on OpenVINO (docs/generate.md, "Weights"): SmolLM2's
quality gate and decode speed under INT4 variants, on this CPU.

* ``gate sym|asym [--group G] [--ratio R] [--gptq] [--all-layers]``: ``ai_vmm.compile(SmolLM2,
  weights="int4")`` with NNCF's INT4 mode forced to symmetric or asymmetric
  (``nncf.compress_weights`` wrapped in this process; the compile itself is unchanged; ``--gptq``
  adds NNCF's GPTQ, ``--all-layers`` lets the tied embedding / LM head go INT4), then every
  attempt of the quality gate: ratio, activation groups, perplexity increase, agreement,
  looping replies, passed. The artifact is written to ``--out``
  for ``speed``.
* ``speed ARTIFACT [ARTIFACT ...] [--dq 64,128] [--rounds N]``: decode tokens/s and TTFT of
  the artifacts against OpenVINO GenAI's all-INT4 export (groups of 64, f32 activations; made
  by ``vmmc bench --generate --baselines genai`` first), one process, interleaved rounds,
  the bench's 400-token prompt and 128 tokens. ``--dq`` adds a copy of the first artifact
  reloaded with the CPU plugin's activation groups set to each size.
* ``raw ARTIFACT [ARTIFACT ...] [--genai int4,int8] [--rounds N]``: the decoders alone, no
  pipeline: each artifact's decoder and GenAI's exports rewritten for PagedAttention the same
  way, compiled with the same properties (f32 activations and KV cache, or ``--precision
  bf16``; the plugin's default activation groups), and 128 decode steps at the 400-token
  prompt's context driven by one Python loop; ms a step, interleaved rounds. What separates
  the kernels from the engines.

    python scripts/llm_int4_study.py gate sym --out /tmp/sym.vmm
    python scripts/llm_int4_study.py gate asym --ratio 0.8 --out /tmp/asym.vmm
    python scripts/llm_int4_study.py speed /tmp/sym.vmm /tmp/asym.vmm --rounds 8
    python scripts/llm_int4_study.py raw /tmp/asym.vmm --genai int4,int8
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

MODEL = Path.home() / ".cache" / "ai-vmm" / "realmodels" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gate(args: argparse.Namespace) -> None:
    import nncf

    import ai_vmm

    wanted = (
        nncf.CompressWeightsMode.INT4_SYM
        if args.variant == "sym"
        else (nncf.CompressWeightsMode.INT4_ASYM)
    )
    original = nncf.compress_weights

    def compress(model: Any, **kwargs: Any) -> Any:
        if kwargs.get("mode") in (
            nncf.CompressWeightsMode.INT4_SYM,
            nncf.CompressWeightsMode.INT4_ASYM,
        ):
            kwargs["mode"] = wanted
            if args.gptq:  # NNCF's GPTQ after AWQ, with scale estimation folded in
                kwargs["gptq"] = True
            if args.all_layers:  # the embedding table / tied LM head may go INT4 too
                kwargs["all_layers"] = True
        return original(model, **kwargs)

    nncf.compress_weights = compress
    options: dict[str, Any] = {"weights": "int4", "target": "openvino:CPU"}
    if args.group:
        options["group_size"] = args.group
    if args.ratio:
        options["ratio"] = args.ratio
    result = ai_vmm.compile(MODEL, output=args.out, force=True, **options)
    quality = result.report["candidates"][0]["quality"]
    keys = ("ratio", "group_size", "dynamic_quantization_group_size", "increase", "agreement")
    print("| " + " | ".join(keys) + " | looping replies | passed |")
    print("|" + "---|" * (len(keys) + 2))
    for attempt in quality["attempts"]:
        cells = [str(attempt.get(k)) for k in keys]
        print(f"| {' | '.join(cells)} | {attempt['looping_replies']} | {attempt['passed']} |")


def speed(args: argparse.Namespace) -> None:
    import ai_vmm
    from ai_vmm.bench_generate import CACHE, GenAIEngine, VmmEngine, prompts, run_bench
    from ai_vmm.frontends.causal_lm import source_digest

    genai = CACHE / source_digest(MODEL)[:16] / "genai" / "int4"
    if not (genai / "openvino_model.xml").is_file():
        raise SystemExit(f"no GenAI INT4 export in {genai}: run vmmc bench --generate first")
    artifacts = [Path(a) for a in args.artifacts]
    with tempfile.TemporaryDirectory() as tmp:
        for group in [int(g) for g in args.dq.split(",") if g]:
            copy = Path(tmp) / f"{artifacts[0].stem}-dq{group}.vmm"
            shutil.copytree(artifacts[0], copy)
            manifest = json.loads((copy / "manifest.json").read_text())
            manifest["partitions"][0]["config"]["dynamic_quantization_group_size"] = group
            (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
            artifacts.append(copy)
        with ai_vmm.load(artifacts[0]) as lm:
            ids = prompts(lm.tokenizer)["long"]
        factories: list[Any] = [lambda a=a: VmmEngine(a, a.name, "int4", "") for a in artifacts]
        f32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        factories.append(lambda: GenAIEngine(genai, "int4 group 64", "", f32))
        rows = run_bench(factories, {"long": ids}, 128, args.rounds, print)
    print("| engine | decode tok/s (400) [min-max] | TTFT ms |")
    print("|---|---|---|")
    for row in rows:
        (length,) = row.decode_tok_s
        low, high = row.decode_spread[length]
        print(
            f"| {row.engine} {row.precision} | {row.decode_tok_s[length]:.1f} "
            f"[{low:.1f}-{high:.1f}] | {row.ttft_ms[length]:.0f} |"
        )


def raw(args: argparse.Namespace) -> None:
    import statistics
    import time

    import numpy as np
    import openvino as ov
    from openvino._offline_transformations import paged_attention_transformation

    import ai_vmm
    from ai_vmm.bench_generate import CACHE, prompts
    from ai_vmm.frontends.causal_lm import source_digest
    from ai_vmm.runtime.executors.openvino_paged import paged_model

    root = CACHE / source_digest(MODEL)[:16]
    core = ov.Core()
    props = {
        "PERFORMANCE_HINT": "LATENCY",
        "KV_CACHE_PRECISION": args.precision,
        "INFERENCE_PRECISION_HINT": args.precision,
    }
    sources = {Path(a).name: Path(a) for a in args.artifacts}
    sources.update({f"GenAI {w}": root / "genai" / w for w in args.genai.split(",") if w})
    requests: dict[str, tuple[Any, set[str]]] = {}
    for name, path in sources.items():
        if name.startswith("GenAI "):
            model = core.read_model(str(path / "openvino_model.xml"))
            paged_attention_transformation(model)
        else:
            cache = json.loads((path / "manifest.json").read_text())["llm"]["cache"]
            xml = next((path / "decoder").glob("*.xml"))
            model = paged_model(core.read_model(str(xml)), len(cache["heads"]))
        compiled = core.compile_model(model, "CPU", props)
        request = compiled.create_infer_request()
        for port in compiled.inputs:  # a pool of 64 blocks of 32 tokens per cache input
            if "_cache." in port.get_any_name():
                tail = [d.get_length() for d in list(port.get_partial_shape())[1:]]
                request.set_tensor(port, ov.Tensor(port.get_element_type(), [64, *tail]))
        requests[name] = (request, {n for port in compiled.inputs for n in port.get_names()})
    with ai_vmm.load(root / "openvino-CPU-fp32.vmm") as lm:  # the bench's float build
        ids = prompts(lm.tokenizer)["long"]

    def step(request: Any, names: set[str], tokens: list[int], past: int) -> int:
        n, blocks = len(tokens), -(-(past + len(tokens)) // 32)
        feed = {
            "input_ids": np.array(tokens, np.int64),
            "position_ids": np.arange(past, past + n, dtype=np.int64),
            "past_lens": np.array([past], np.int32),
            "subsequence_begins": np.array([0, n], np.int32),
            "block_indices": np.arange(blocks, dtype=np.int32),
            "block_indices_begins": np.array([0, blocks], np.int32),
            "max_context_len": np.array(past + n, np.int32),
        }
        if "logit_index" in names:  # ours: the logits of the last token only
            feed["logit_index"] = np.array([n - 1], np.int64)
        request.infer(feed)
        logits = request.get_output_tensor(0).data
        return int(logits.reshape(-1, logits.shape[-1])[-1].argmax())

    def decode(name: str, count: int = 128) -> float:
        request, names = requests[name]
        token = step(request, names, ids, 0)
        started = time.perf_counter()
        for i in range(count):
            token = step(request, names, [token], len(ids) + i)
        return (time.perf_counter() - started) / count * 1000

    for name in requests:
        decode(name, 16)
    times: dict[str, list[float]] = {name: [] for name in requests}
    for round_index in range(args.rounds):
        order = list(requests) if round_index % 2 == 0 else list(reversed(requests))
        for name in order:
            times[name].append(decode(name))
    print("| decoder | ms a decode step [min-max] | tok/s |\n|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.2f} [{min(values):.2f}-{max(values):.2f}] | {1000 / median:.1f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    g = parts.add_parser("gate")
    g.add_argument("variant", choices=["sym", "asym"])
    g.add_argument("--group", type=int, default=0)
    g.add_argument("--ratio", type=float, default=0.0)
    g.add_argument("--gptq", action="store_true", help="NNCF's GPTQ on top of the compile's")
    g.add_argument(
        "--all-layers", action="store_true", help="NNCF's all_layers: the LM head may go INT4"
    )
    g.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "int4-study.vmm")
    s = parts.add_parser("speed")
    s.add_argument("artifacts", nargs="+")
    s.add_argument("--dq", default="", help="activation group sizes, e.g. 64,128")
    s.add_argument("--rounds", type=int, default=8)
    r = parts.add_parser("raw")
    r.add_argument("artifacts", nargs="*")
    r.add_argument("--genai", default="int4", help="GenAI exports to add, e.g. int4,int8")
    r.add_argument("--rounds", type=int, default=7)
    r.add_argument("--precision", default="f32", help="activations and KV cache: f32 or bf16")
    args = parser.parse_args(argv)
    {"gate": gate, "speed": speed, "raw": raw}[args.part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
