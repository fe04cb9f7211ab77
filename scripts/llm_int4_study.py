"""How INT4 was chosen for causal LMs on OpenVINO (docs/generate.md, "Weights"): SmolLM2's
quality gate and decode speed under INT4 variants, on this CPU.

* ``gate sym|asym [--group G] [--ratio R]``: ``ai_vmm.compile(SmolLM2, weights="int4")`` with
  NNCF's INT4 mode forced to symmetric or asymmetric (``nncf.compress_weights`` wrapped in
  this process; the compile itself is unchanged), then every attempt of the quality gate:
  ratio, activation groups, perplexity increase, agreement, looping replies, passed. The
  artifact is written to ``--out`` for ``speed``.
* ``speed ARTIFACT [ARTIFACT ...] [--dq 64,128] [--rounds N]``: decode tokens/s and TTFT of
  the artifacts against OpenVINO GenAI's all-INT4 export (groups of 64, f32 activations; made
  by ``vmmc bench --generate --baselines genai`` first), one process, interleaved rounds,
  the bench's 400-token prompt and 128 tokens. ``--dq`` adds a copy of the first artifact
  reloaded with the CPU plugin's activation groups set to each size.

    python scripts/llm_int4_study.py gate sym --out /tmp/sym.vmm
    python scripts/llm_int4_study.py gate asym --ratio 0.8 --out /tmp/asym.vmm
    python scripts/llm_int4_study.py speed /tmp/sym.vmm /tmp/asym.vmm --rounds 8
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    g = parts.add_parser("gate")
    g.add_argument("variant", choices=["sym", "asym"])
    g.add_argument("--group", type=int, default=0)
    g.add_argument("--ratio", type=float, default=0.0)
    g.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "int4-study.vmm")
    s = parts.add_parser("speed")
    s.add_argument("artifacts", nargs="+")
    s.add_argument("--dq", default="", help="activation group sizes, e.g. 64,128")
    s.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    (gate if args.part == "gate" else speed)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
