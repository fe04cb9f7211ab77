"""Greedy parity of compiled causal LMs with transformers, and seeded-sampling reproducibility.

For each architecture (random-weight tiny configs from models/tiny_lms.py, and SmolLM2-135M-
Instruct with its real weights) and each CPU target, compile with ``ai_vmm.compile``, generate
``--tokens`` greedy tokens with EOS blocked through ``CausalLM.generate`` and compare them token
for token with ``transformers`` ``generate`` in float32; then sample twice with one seed and
check the two replies are identical. Writes the table between ``<!-- parity:start -->`` and
``<!-- parity:end -->`` in docs/generate.md.

    python scripts/llm_parity.py                      # 6 architectures + SmolLM2, 200 tokens
    python scripts/llm_parity.py --archs llama,gpt2 --tokens 50 --no-smollm2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = Path.home() / ".cache" / "ai-vmm" / "realmodels" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path.home() / ".cache" / "ai-vmm" / "llm-parity"
TARGETS = ("openvino:CPU", "onnxruntime:CPU")
PROMPT = "Write a short story about a robot who learns to paint."


def _tiny_lms() -> Any:
    spec = importlib.util.spec_from_file_location("tiny_lms", REPO / "models" / "tiny_lms.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_lms"] = module
    spec.loader.exec_module(module)
    return module


def reference(source: Path, prompt: list[int], tokens: int) -> list[int]:
    """transformers' greedy reply in float32, EOS blocked."""
    from ai_vmm.frontends.causal_lm import load_causal_lm, reference_greedy

    return reference_greedy(load_causal_lm(source), prompt, tokens, block_eos=True)


def check(name: str, source: Path, tokens: int, say: Any) -> list[dict[str, Any]]:
    """One model on every target: rows of the table."""
    import ai_vmm

    rows = []
    expected: list[int] | None = None
    for target in TARGETS:
        out = CACHE / f"{name}-{target.replace(':', '-')}.vmm"
        started = time.perf_counter()
        ai_vmm.compile(
            source, target=target, output=out, tune=False, cache_dir=CACHE / "compile", force=True
        )
        compile_s = time.perf_counter() - started
        with ai_vmm.load(out) as lm:
            chat = lm.tokenizer.chat_template is not None
            prompt = lm.encode_prompt([{"role": "user", "content": PROMPT}] if chat else PROMPT)
            if expected is None:
                say(f"{name}: transformers reference, {tokens} tokens")
                expected = reference(source, prompt, tokens)
            got = lm.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens).tokens
            same = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                len(expected),
            )
            sampled = [
                lm.generate(prompt, max_new_tokens=48, temperature=0.8, top_p=0.9, seed=1234).tokens
                for _ in range(2)
            ]
            rows.append(
                {
                    "model": name,
                    "target": target,
                    "prompt_tokens": len(prompt),
                    "tokens": len(expected),
                    "identical": same,
                    "distinct": len(set(expected)),
                    "seeded_reproducible": sampled[0] == sampled[1],
                    "compile_s": round(compile_s, 1),
                }
            )
            reproducible = sampled[0] == sampled[1]
            say(f"{name} {target}: {same}/{len(expected)} identical, seeded: {reproducible}")
    return rows


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"Greedy tokens of `CausalLM.generate` against `transformers` `generate` (float32, EOS "
        f"blocked), and two seeded sampling runs (temperature 0.8, top-p 0.9, seed 1234, 48 "
        f"tokens). Load average {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        f"Command: `{command}`",
        "",
        "| model | target | prompt tokens | identical greedy tokens | distinct tokens in the "
        "reply | seeded sampling reproducible |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['target']} | {r['prompt_tokens']} | "
            f"{r['identical']}/{r['tokens']} | "
            f"{r['distinct']} | {'yes' if r['seeded_reproducible'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, mark: str, body: str) -> None:
    start, end = f"<!-- {mark}:start -->", f"<!-- {mark}:end -->"
    text = path.read_text() if path.is_file() else "# Generation\n\n"
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def run(archs: list[str], tokens: int, smollm2: bool, say: Any = print) -> list[dict[str, Any]]:
    tiny = _tiny_lms()
    rows: list[dict[str, Any]] = []
    for arch in archs:
        rows += check(arch, tiny.save(arch, CACHE / "hf" / arch), tokens, say)
    if smollm2:
        rows += check("SmolLM2-135M-Instruct", SMOLLM2, tokens, say)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default=",".join(_tiny_lms().ARCHITECTURES))
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "generate.md")
    args = parser.parse_args(argv)
    rows = run([a for a in args.archs.split(",") if a], args.tokens, not args.no_smollm2)
    command = "python scripts/llm_parity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section(args.out, "parity", markdown(rows, command.strip()))
    print(f"wrote {args.out}")
    return 0 if all(r["identical"] == r["tokens"] and r["seeded_reproducible"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
