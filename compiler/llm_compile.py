"""The compile path of causal language models: a ``kind: causal-lm`` artifact.

    load (HF dir | .gguf | PreTrainedModel) -> export the decoder step (ONNX, KV cache as
    tensors) -> analyse (label causal-decoder with evidence) -> per target: build the decoder
    (OpenVINO stateful | ONNX Runtime bound cache | cuda static cache), load it with the LM
    runtime, check greedy parity against transformers -> weights (INT8/INT4) behind the quality
    gate -> time prefill and decode -> choose -> artifact (+ tokenizer as hashed assets)

``ai_vmm.compile`` routes causal LM sources here. The report records every candidate: parity,
quality figures, speed, and why the kept one won.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_vmm import hardware, registry
from ai_vmm.cache import CompileCache, cache_key, cache_root
from ai_vmm.driver import CompileResult, resolve_targets, toolchain
from ai_vmm.frontends import causal_lm as frontend
from ai_vmm.llm_attention import choose_attention
from ai_vmm.llm_build import Built, LMRun, build_candidate, calibration, gate_weights
from ai_vmm.llm_decode import choose_decode_compile
from ai_vmm.llm_quality import Speed, measure_speed, realistic_prompt
from ai_vmm.runtime.artifact import (
    MANIFEST,
    check_output_path,
    copy_artifact,
    read_manifest,
    read_report,
)
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import CompileError, DeviceError

Progress = Callable[[str], None]
LM_TARGETS = ("openvino", "onnxruntime", "cuda")
WEIGHTS = (None, "int8", "int4")


@dataclass(frozen=True)
class LMOptions:
    """What the user asked of an LM compile (recorded in the manifest and the cache key)."""

    target: str = "auto"
    precision: str = "fp32"
    weights: str | None = None
    group_size: int | None = None
    ratio: float | None = None
    verify: bool = True
    verify_tokens: int = 24
    tune: bool = True
    max_perplexity_increase: float | None = None
    """Allowed relative perplexity increase of compressed weights (default 2 % INT8, 10 % INT4)."""
    min_agreement: float = 0.5
    """Mean ROUGE-L recall of the compressed model's greedy replies against the float ones."""
    force_weights: bool = False
    """Keep compressed weights even when the quality gate refuses them."""
    calibration: tuple[str, ...] = ()
    """Text that calibrates data-aware INT4 (the user's own prompts or documents); empty:
    standard-library docstrings that the quality gate does not read."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "causal-lm",
            "target": self.target,
            "precision": self.precision,
            "weights": self.weights,
            "group_size": self.group_size,
            "ratio": self.ratio,
            "verify": self.verify,
            "verify_tokens": self.verify_tokens,
            "tune": self.tune,
            "max_perplexity_increase": self.max_perplexity_increase,
            "min_agreement": self.min_agreement,
            "force_weights": self.force_weights,
            "calibration": (
                hashlib.sha256("\0".join(self.calibration).encode()).hexdigest()
                if self.calibration
                else None
            ),
        }


def compile_causal_lm(
    source: Any,
    output: str | Path | None,
    options: LMOptions,
    *,
    tokenizer: Any = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> CompileResult:
    """Compile a causal LM into a ``causal-lm`` artifact (see the module doc).

    Raises:
        VmmError: a subclass saying what was wrong.
    """
    say = progress or (lambda message: None)
    _validate(options)
    stem = Path(source).stem if isinstance(source, str | Path) else "model"
    out_path = check_output_path(Path(output) if output is not None else Path(f"{stem}.vmm"), force)
    started = time.perf_counter()
    devices = _devices(options.target)
    root = cache_root(cache_dir)
    cache = CompileCache(root) if root is not None else None
    key = None
    if cache is not None and isinstance(source, str | Path) and Path(source).exists():
        key = cache_key(
            {
                "source": frontend.source_digest(Path(source)),
                "options": options.to_json(),
                "toolchain": toolchain(),
                "devices": [d.key for d in devices],
                # 2-4: OpenVINO decoders choose stateful or paged attention; 5: cuda decoders
                # attend over cache windows and choose Inductor decode steps or not; 6: ONNX
                # Runtime decoders attend over the grouped cache (no repeat_kv copies)
                "format": 6,
            }
        )
        hit = cache.lookup(key)
        if hit is not None:
            copy_artifact(hit, out_path)
            say(f"cache hit {key[:12]}")
            return CompileResult(out_path, read_manifest(hit).to_json(), read_report(hit), True)
    with tempfile.TemporaryDirectory(prefix="ai-vmm-lm-") as tmp:
        work = Path(tmp)
        label = source if isinstance(source, str | Path) else type(source).__name__
        say(f"loading {label}")
        src = frontend.load_causal_lm(source, tokenizer)
        tokenizer_dir = work / "tokenizer"
        info = frontend.save_tokenizer(src, tokenizer_dir)
        layout = frontend.kv_layout(src)
        exported: list[frontend.DecoderExport] = []

        def export_onnx() -> frontend.DecoderExport:
            if not exported:
                exported.append(_export(src, work, root, say))
                run.report["export"] = {"opset": exported[0].opset, "path": "decoder.onnx"}
                run.report["profile"] = _profile(exported[0], say)
            return exported[0]

        vocab = int(src.config.get_text_config().vocab_size)
        run = LMRun(src, layout, vocab, export_onnx, tokenizer_dir, info, work, options, say)
        run.report = {
            "source": {"label": src.label, "sha256": src.digest, "architecture": src.architecture},
            "notes": list(src.notes),
            "cache": layout.to_json(),
        }
        if options.calibration:
            calibration(run)  # the user's text tokenized now: too short fails before any build
        chosen = _compile_candidates(run, devices)
        run.report["timings"] = {"total_s": round(time.perf_counter() - started, 2)}
        artifact = chosen.finalize(out_path, run.report)
        if cache is not None and key is not None:
            cache.store(key, artifact)
    return CompileResult(out_path, chosen.manifest.to_json(), run.report)


def _compile_candidates(run: LMRun, devices: list[Device]) -> Built:
    options, say = run.options, run.say
    built: list[Built] = []
    rejected: list[dict[str, Any]] = []
    for device in devices:
        say(f"building the decoder for {device.key}")
        try:
            candidate = build_candidate(run, device, weights=None)
        except (CompileError, DeviceError) as exc:
            rejected.append({"device": device.key, "reason": str(exc)})
            continue
        if options.verify:
            problem = candidate.check_parity(run)
            if problem is not None:
                rejected.append({"device": device.key, "reason": problem})
                candidate.close()
                continue
        if device.target == "openvino" and options.tune:
            choose_attention(run, candidate)
        if device.target == "cuda" and options.tune:
            choose_decode_compile(run, candidate)
        if options.weights is not None:
            candidate = gate_weights(run, candidate)
        built.append(candidate)
    run.report["rejected"] = rejected
    if not built:
        reasons = "; ".join(f"{r['device']}: {r['reason']}" for r in rejected) or "none available"
        raise CompileError(f"no target could build this causal LM ({reasons})")
    chosen, why = _choose(run, built)
    run.report["candidates"] = [c.summary() for c in built]
    run.report["chosen"] = {"device": chosen.device.key, "why": why}
    for candidate in built:
        if candidate is not chosen:
            candidate.close()
    return chosen


def _choose(run: LMRun, built: list[Built]) -> tuple[Built, str]:
    """Measured: the fastest decode at a realistic prompt length; else the static order."""
    if len(built) == 1:
        return built[0], "the only candidate"
    if not run.options.tune:
        return built[0], "static order (--no-tune): the first available target"
    tokenizer = built[0].lm.tokenizer
    prompt = realistic_prompt(tokenizer, 128)
    speeds: dict[int, list[Speed]] = {id(c): [] for c in built}
    for _ in range(2):  # interleaved rounds: a noisy machine slows every candidate alike
        for candidate in built:
            speeds[id(candidate)].append(measure_speed(candidate.lm, prompt, 32, runs=1))
    for candidate in built:
        best = max(speeds[id(candidate)], key=lambda s: s.decode_tok_s)
        candidate.speed = best
    chosen = max(built, key=lambda c: c.speed.decode_tok_s if c.speed else 0.0)
    figures = ", ".join(
        f"{c.device.key} {c.speed.decode_tok_s:.1f} tok/s" for c in built if c.speed is not None
    )
    return chosen, f"fastest decode at a {len(prompt)}-token prompt ({figures})"


def _export(
    src: frontend.CausalLMSource, work: Path, root: Path | None, say: Progress
) -> frontend.DecoderExport:
    """The exported decoder, from the export cache when the same model was exported before."""
    key = cache_key({"source": src.digest, "toolchain": toolchain("cuda"), "opset": 23})
    cached = root / "lm-export" / key if root is not None else None
    if cached is not None and (cached / "decoder.onnx").is_file():
        say("decoder export from the cache")
        return frontend.DecoderExport(
            cached / "decoder.onnx",
            frontend.kv_layout(src),
            int(src.config.get_text_config().vocab_size),
            frontend.DEFAULT_OPSET,
        )
    say("exporting the decoder step (torch.onnx, dynamo)")
    started = time.perf_counter()
    export = frontend.export_decoder(src, work / "export")
    say(f"exported in {time.perf_counter() - started:.1f} s")
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=cached.parent))
            for path in export.path.parent.iterdir():
                shutil.copy2(path, stage / path.name)
            stage.rename(cached)
        except OSError:
            pass  # the export cache is an optimisation only
    return export


def _profile(export: frontend.DecoderExport, say: Progress) -> dict[str, Any]:
    """The architecture analysis of the exported decoder (labels with evidence)."""
    import onnx_ir as ir

    from ai_vmm.passes.analyze import analyze

    say("analysing the decoder graph")
    try:
        model = ir.load(export.path)
        profile = analyze(model)
    except Exception as exc:  # analysis informs the report; it never fails a compile
        return {"error": f"{type(exc).__name__}: {exc}"}
    data = profile.to_json()
    return {
        "labels": data.get("labels", []),
        "primary_label": profile.primary_label,
        "params": data.get("params"),
    }


CUDA_ON_CPU = "cuda:cpu"
"""The cuda LM path (static cache, ``torch.export``) run on the CPU: checks without a GPU."""


def _devices(target: str) -> list[Device]:
    if target.strip() == CUDA_ON_CPU:
        return [Device("cuda", "cpu", "cpu", "the cuda LM path on the CPU (no CUDA graphs)")]
    inventory = hardware.discover(registry.discoverers())
    devices = [d for d in resolve_targets(target, inventory) if d.target in LM_TARGETS]
    if target.strip() in ("", "auto"):
        # OpenVINO's GPU/NPU plugins run stateful LMs through their own pipelines: CPU here.
        devices = [d for d in devices if d.target != "openvino" or d.name == "CPU"]
    if not devices:
        raise DeviceError(
            f"no device of {target!r} can run causal LMs here (LM targets: {', '.join(LM_TARGETS)})"
        )
    return devices


def _validate(options: LMOptions) -> None:
    if options.weights not in WEIGHTS:
        raise CompileError(f"weights must be int8 or int4 for causal LMs, not {options.weights!r}")
    if options.precision not in ("fp32", "fp16", "bf16"):
        raise CompileError(f"precision must be fp32, fp16 or bf16, not {options.precision!r}")
    if options.ratio is not None and not 0 < options.ratio <= 1:
        raise CompileError(f"ratio must be in (0, 1], not {options.ratio}")
    if options.verify_tokens < 1:
        raise CompileError("verify_tokens must be >= 1")
    if options.calibration and options.weights != "int4":
        raise CompileError(
            "calibration text calibrates INT4 weights: it needs weights='int4' "
            f"(weights={options.weights!r})"
        )


def _names_a_file(text: str) -> bool:
    """Whether one line of text is the path of an existing file (a long line of calibration
    prose is not: the file system refuses the name, which ``Path.is_file`` raises before 3.14)."""
    if "\n" in text:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def calibration_texts(source: Any) -> tuple[str, ...]:
    """An LM's calibration text: ``None`` (none given), a string or a list of strings, or the
    path of a ``.txt`` file (the whole file) or a ``.jsonl`` file (each line a string or an
    object with a ``text`` field, as chat logs and datasets are commonly exported).

    Raises:
        CompileError: anything else, a file that cannot be read, or no text at all.
    """
    if source is None:
        return ()
    if isinstance(source, Path) or (
        isinstance(source, str) and (source.endswith((".txt", ".jsonl")) or _names_a_file(source))
    ):
        path = Path(source)
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CompileError(f"cannot read the calibration text {path}: {exc}") from exc
        if path.suffix == ".jsonl":
            texts = []
            for number, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CompileError(f"{path}:{number}: not JSON ({exc.msg})") from None
                text = value.get("text") if isinstance(value, dict) else value
                if not isinstance(text, str):
                    raise CompileError(
                        f"{path}:{number}: a line must be a string or an object with a "
                        f"'text' string"
                    )
                texts.append(text)
        else:
            texts = [raw]
    elif isinstance(source, str):
        texts = [source]
    elif isinstance(source, list | tuple) and all(isinstance(t, str) for t in source):
        texts = list(source)
    else:
        raise CompileError(
            "calibration for a causal LM is text: a string, a list of strings, or a .txt / "
            f".jsonl file, not {type(source).__name__}"
        )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CompileError("the calibration text is empty")
    return tuple(texts)


def is_lm_artifact(path: Path) -> bool:
    """Whether ``path`` holds a ``causal-lm`` artifact."""
    try:
        return (path / MANIFEST).is_file() and read_manifest(path).kind == "causal-lm"
    except Exception:
        return False


__all__ = [
    "LMOptions",
    "calibration_texts",
    "compile_causal_lm",
    "compile_lm_from_api",
    "is_lm_artifact",
]


def compile_lm_from_api(
    model: Any,
    output: str | Path | None,
    *,
    target: str,
    precision: str,
    weights: str | None,
    group_size: int | None,
    ratio: float | None,
    verify: bool,
    tune: bool,
    quantize: str | None,
    force_quantize: bool,
    cache_dir: str | Path | None,
    progress: Progress | None,
    force: bool,
    frontend_options: dict[str, Any],
    calibration: Any = None,
) -> CompileResult:
    """``ai_vmm.compile`` for a causal LM: its options mapped, those that do not apply refused.

    ``calibration``: text that calibrates data-aware INT4 (``calibration_texts``).
    """
    options = dict(frontend_options)
    tokenizer = options.pop("tokenizer", None)
    if options:
        raise CompileError(
            f"option(s) {', '.join(sorted(options))} do not apply to a causal LM (it takes "
            f"tokenizer=, weights=, group_size=, ratio=, precision=, target=)"
        )
    if quantize is not None:
        raise CompileError(
            f"quantize={quantize!r} (activations) does not apply to causal LMs: use "
            f"weights='int8' or weights='int4' (weight-only, behind the perplexity gate)"
        )
    lm_options = LMOptions(
        target=target,
        precision=precision,
        weights=weights,
        group_size=group_size,
        ratio=ratio,
        verify=verify,
        tune=tune,
        force_weights=force_quantize,
        calibration=calibration_texts(calibration),
    )
    return compile_causal_lm(
        model,
        output,
        lm_options,
        tokenizer=tokenizer,
        cache_dir=cache_dir,
        progress=progress,
        force=force,
    )
