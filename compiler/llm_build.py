"""One LM candidate: a target's decoder payload, staged as an artifact, loaded by the runtime.

Every check runs on what users get: the staged artifact is loaded with ``ai_vmm.runtime.load``
and driven through ``CausalLM.generate`` (the same token loop, sampler and tokenizer).
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_vmm.driver import toolchain
from ai_vmm.frontends import causal_lm as frontend
from ai_vmm.llm_quality import (
    answer_overlap,
    calibration_windows,
    chat_prompts,
    common_prefix,
    distinct_share,
    docstring_corpus,
    greedy,
    perplexity,
)
from ai_vmm.runtime.artifact import (
    MANIFEST,
    Manifest,
    PartitionSpec,
    TensorSpec,
    copy_artifact,
    dumps_json,
    sha256_file,
    write_artifact,
)
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import CompileError
from ai_vmm.runtime.llm import spec as lm_spec

if TYPE_CHECKING:
    from ai_vmm.llm_compile import LMOptions

AGREEMENT_TOKENS = 64
PERPLEXITY_TOKENS = 2048
INT4_RATIOS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.1)
DYNAMIC_QUANTIZATION_FALLBACK = (64, 128)
"""Activation groups tried when the plugin's default fails the gate; off (0) only at the last
attempt (``gate_weights``)."""
LOOP_DROP = 0.25
"""A reply whose share of distinct 4-grams is this much below the float reply's has fallen
into a loop: the gate refuses it whatever its average agreement (SmolLM2 with INT8 weights and
the CPU plugin's activation groups of 32 answered "What is the capital of France?" with "la
France, la France, ..." while the mean agreement over the four prompts was 0.61)."""
_serial = itertools.count()


@dataclass
class LMRun:
    """State of one LM compile: the source, the export, the work directory, the reference."""

    source: frontend.CausalLMSource
    layout: frontend.KvLayout
    vocab_size: int
    export_onnx: Callable[[], frontend.DecoderExport]
    """The ONNX decoder step, exported on first use (the cuda target does not need it)."""
    tokenizer_dir: Path
    tokenizer_info: dict[str, Any]
    work: Path
    options: LMOptions
    say: Callable[[str], None]
    reference: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    attention: str = "stateful"
    """OpenVINO decoders: ``stateful`` or ``paged`` (``llm_attention.choose_attention``)."""


@dataclass(frozen=True)
class WeightSpec:
    """Weight-only compression of one attempt."""

    mode: str
    group_size: int | None = None
    ratio: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "group_size": self.group_size, "ratio": self.ratio}


class Built:
    """A staged, loaded candidate and what was measured on it."""

    def __init__(
        self,
        device: Device,
        weights: WeightSpec | None,
        root: Path,
        manifest: Manifest,
        lm: Any,
        notes: list[str],
    ) -> None:
        self.device = device
        self.weights = weights
        self.root = root
        self.manifest = manifest
        self.lm = lm
        self.notes = notes
        self.parity: dict[str, Any] | None = None
        self.quality: dict[str, Any] | None = None
        self.speed: Any = None

    def check_parity(self, run: LMRun) -> str | None:
        """Greedy tokens against transformers on a real prompt; the problem, or ``None``."""
        prompt, expected = _reference(run)
        ids = (
            self.lm.encode_prompt(run.reference["messages"])
            if run.reference.get("messages")
            else prompt
        )
        got = self.lm.generate(
            prompt, max_new_tokens=len(expected), min_new_tokens=len(expected)
        ).tokens
        same = common_prefix(got, expected)
        self.parity = {
            "prompt_tokens": len(prompt),
            "tokens": len(expected),
            "identical": same,
            "tokenizer_matches_transformers": ids == prompt,
        }
        if ids != prompt:
            return "the artifact's chat template gives other token ids than transformers"
        if run.options.precision != "fp32":
            # fp16/bf16 replies drift from the float32 reference after a while: a build is
            # refused only when its very first token is wrong.
            return None if same > 0 else "fp16/bf16 decoding differs from transformers at once"
        if same < len(expected):
            return (
                f"greedy decoding differs from transformers at token {same} of {len(expected)} "
                f"(float32; got {got[same]}, expected {expected[same]})"
            )
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.device.key,
            "weights": None if self.weights is None else self.weights.to_json(),
            "partition_config": self.manifest.partitions[0].config,
            "parity": self.parity,
            "quality": self.quality,
            "speed": None if self.speed is None else self.speed.to_json(),
            "notes": self.notes,
        }

    def finalize(self, out_path: Path, report: dict[str, Any]) -> Path:
        """Write the final artifact (this candidate, the whole report) to ``out_path``; return
        the directory form (for the compile cache)."""
        final = self.root.with_name(self.root.name + "-final")
        payloads = {"decoder": self.root / "decoder", "tokenizer": self.root / "tokenizer"}
        write_artifact(final, self.manifest, report, payloads)
        copy_artifact(final, out_path)
        self.close()
        return final

    def close(self) -> None:
        if self.lm is not None:
            self.lm.close()
            self.lm = None

    def reconfigure(self, changes: dict[str, Any]) -> None:
        """Reload the staged candidate with its runtime config changed (no rebuild)."""
        from ai_vmm.runtime import load

        self.close()
        self.manifest.partitions[0].config.update(changes)
        (self.root / MANIFEST).write_bytes(dumps_json(self.manifest.to_json()))
        self.lm = load(self.root)


def build_candidate(run: LMRun, device: Device, weights: WeightSpec | None) -> Built:
    """Build, stage and load the decoder for ``device``.

    Raises:
        CompileError: the target cannot build it (the message says why).
        DeviceError: the device is missing.
    """
    serial = next(_serial)
    payload = run.work / f"payload-{serial}"
    layout = run.layout
    notes: list[str] = []
    precision = run.options.precision
    if precision != "fp32" and device.target == "onnxruntime":
        raise CompileError(f"{precision} LMs build for the openvino and cuda targets")
    if device.target == "openvino":
        from ai_vmm.targets import openvino_lm

        model = openvino_lm.stateful_model(run.export_onnx().path, layout.layers)
        if weights is not None:
            windows = calibration(run) if weights.mode == "int4" else None
            compression = openvino_lm.WeightCompression(
                weights.mode,
                weights.group_size or openvino_lm.DEFAULT_INT4_GROUP,
                weights.ratio,
                data_aware=bool(windows),
            )
            model = openvino_lm.compress(
                model, compression, windows, statistics=run.work / "nncf-statistics"
            )
            notes.append(compression.describe())
            int8 = _int8_layers(run, openvino_lm.layer_precisions(model), weights)
            if int8 is not None:
                notes.append(f"layers kept INT8: {', '.join(int8) or 'embedding and LM head only'}")
        openvino_lm.save(model, payload)
        entry, kind = "decoder.xml", "stateful"
        config: dict[str, Any] = {
            "performance_hint": "LATENCY",
            "kv_cache_precision": "f32",
            "attention": run.attention,
        }
        if precision != "fp32":
            # Activations and the KV cache in bf16/f16 where the device computes in them (AMX,
            # AVX512-FP16); the weights stay as they are (float32 or compressed).
            wanted = {"bf16": "BF16", "fp16": "FP16"}[precision]
            if wanted not in openvino_lm.capabilities(device.name):
                raise CompileError(
                    f"{device.key} has no {precision} compute (OpenVINO's capabilities: "
                    f"{', '.join(openvino_lm.capabilities(device.name))})"
                )
            short = {"bf16": "bf16", "fp16": "f16"}[precision]
            config.update(inference_precision=short, kv_cache_precision=short)
    elif device.target == "onnxruntime":
        from ai_vmm.targets import onnxruntime_lm

        entry, config, note = onnxruntime_lm.build(
            run.export_onnx().path,
            payload,
            weights=None if weights is None else weights.mode,
            group_size=None if weights is None else weights.group_size,
        )
        if weights is not None and weights.ratio != 1.0:
            raise CompileError("ratio (mixed INT4/INT8) is an NNCF option: use the openvino target")
        notes += [note] if note else []
        kind = "explicit"
    else:
        from ai_vmm.targets import cuda_lm

        entry, config, note = cuda_lm.build(
            run.source.model,
            layout.heads,
            layout.head_dims,
            payload,
            precision=run.options.precision,
            device=device.name,
        )
        notes.append(note)
        kind = "static"
    root = run.work / f"candidate-{serial}.vmm"
    manifest = _manifest(run, device, payload, entry, config, kind)
    write_artifact(root, manifest, {}, {"decoder": payload, "tokenizer": run.tokenizer_dir})
    shutil.rmtree(payload, ignore_errors=True)
    from ai_vmm.runtime import load

    return Built(device, weights, root, manifest, load(root), notes)


def gate_weights(run: LMRun, float_build: Built) -> Built:
    """Compressed weights behind the quality gate; the float build when every attempt fails.

    Gate: perplexity on standard-library docstrings within ``max_perplexity_increase`` of the
    float build's, and greedy replies to the chat prompts keeping the float build's answers:
    mean ROUGE-L recall at least ``min_agreement`` (``llm_quality.answer_overlap``), and no
    reply looping where the float one does not (``LOOP_DROP``); the identical prefix of each
    reply is recorded too. A compressed candidate that fails with the CPU plugin's activation
    groups is reloaded with ``DYNAMIC_QUANTIZATION_FALLBACK`` before the next attempt.
    """
    options, say = run.options, run.say
    mode = options.weights or "int8"
    limit = options.max_perplexity_increase
    limit = limit if limit is not None else (0.02 if mode == "int8" else 0.10)
    tokenizer = float_build.lm.tokenizer
    corpus = tokenizer.encode(docstring_corpus())[:PERPLEXITY_TOKENS]
    prompts = chat_prompts(tokenizer)
    say(f"quality reference: float perplexity and replies on {float_build.device.key}")
    base_ppl = perplexity(float_build.lm, corpus)
    base_replies = greedy(float_build.lm, prompts, AGREEMENT_TOKENS)
    attempts: list[dict[str, Any]] = []
    gate = {
        "max_perplexity_increase": limit,
        "min_agreement": options.min_agreement,
        "max_loop_drop": LOOP_DROP,
    }
    specs = _attempts(run, float_build.device)
    fallbacks_help = True
    for spec in specs:
        say(f"weights {spec.mode} (ratio {spec.ratio:g}) on {float_build.device.key}")
        candidate = build_candidate(run, float_build.device, spec)
        # OpenVINO's CPU plugin quantizes activations on the fly (groups of 32) for compressed
        # weights where the CPU has VNNI/AMX; when that fails the gate, larger groups (and for
        # the next attempts only while a fallback fixed something the default failed). None at
        # all only at the last attempt: it decodes slower than a smaller share of INT4 layers
        # with it on (SmolLM2 INT4 at ratio 1.0 passed only with it off, at 51 tok/s, where
        # ratio 0.8 passed with it on at 60; 2026-12-06, 2-core Xeon).
        default_group = _dynamic_quantization(candidate)
        groups: list[int | None] = [None]
        if default_group and fallbacks_help:
            groups += [g for g in DYNAMIC_QUANTIZATION_FALLBACK if g > default_group]
        if default_group and spec == specs[-1]:
            groups.append(0)
        failures: list[set[str]] = []
        for group in groups:
            if group is not None:
                what = "off" if not group else f"in groups of {group}"
                say(f"  ... with dynamic quantization of activations {what}")
                candidate.reconfigure({"dynamic_quantization_group_size": group})
            ppl = perplexity(candidate.lm, corpus)
            replies = greedy(candidate.lm, prompts, AGREEMENT_TOKENS)
            overlap = answer_overlap(replies, base_replies)
            increase = ppl / base_ppl - 1
            loops = [
                i
                for i, (r, b) in enumerate(zip(replies, base_replies, strict=True))
                if distinct_share(r) < (1 - LOOP_DROP) * distinct_share(b)
            ]
            failed = {
                name
                for name, bad in (
                    ("perplexity", increase > limit),
                    ("agreement", overlap < options.min_agreement),
                    ("loops", bool(loops)),
                )
                if bad
            }
            failures.append(failed)
            passed = not failed
            attempt = {
                **spec.to_json(),
                "dynamic_quantization_group_size": default_group if group is None else group,
                "perplexity": round(ppl, 4),
                "float_perplexity": round(base_ppl, 4),
                "increase": round(increase, 4),
                "agreement": round(overlap, 4),
                "identical_prefix": [
                    common_prefix(r, b) for r, b in zip(replies, base_replies, strict=True)
                ],
                "looping_replies": loops,
                "passed": passed,
                "notes": list(candidate.notes),
            }
            attempts.append(attempt)
            last = spec == specs[-1] and group == groups[-1]
            if passed or (options.force_weights and last):
                candidate.quality = {
                    "gate": gate,
                    "corpus_tokens": len(corpus),
                    "prompts": len(prompts),
                    "reply_tokens": AGREEMENT_TOKENS,
                    "attempts": attempts,
                    "kept": attempt,
                }
                if group is not None:
                    candidate.notes.append(
                        f"dynamic quantization of activations {what} (the CPU plugin's default "
                        f"groups of {default_group} failed the quality gate)"
                    )
                candidate.parity = float_build.parity
                float_build.close()
                return candidate
        if len(failures) > 1:
            fallbacks_help = any(f < failures[0] for f in failures[1:])
        candidate.close()
    float_build.quality = {
        "gate": gate,
        "attempts": attempts,
        "kept": None,
    }
    float_build.notes.append(f"{mode} weights refused by the quality gate: float weights kept")
    return float_build


def _attempts(run: LMRun, device: Device) -> list[WeightSpec]:
    options = run.options
    if options.weights == "int8":
        return [WeightSpec("int8")]
    if device.target != "openvino":
        return [WeightSpec("int4", options.group_size)]
    first = options.ratio if options.ratio is not None else 1.0
    ratios = [first, *[r for r in INT4_RATIOS if r < first]]
    return [WeightSpec("int4", options.group_size, r) for r in ratios]


def _dynamic_quantization(built: Built) -> int:
    """The activation group size the CPU plugin chose for this candidate (0: none)."""
    value = built.lm.backend_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def calibration(run: LMRun) -> list[list[int]]:
    """Token windows that calibrate INT4 (``llm_quality.calibration_windows``): the user's text
    when the compile was given some, else docstrings the gate does not read; computed once."""
    if "calibration" not in run.reference:
        texts = list(run.options.calibration) or None
        windows = calibration_windows(run.source.tokenizer, texts)
        if not windows:
            raise CompileError("the calibration text is too short: no window of 16 tokens")
        source = "the given text" if texts else "standard-library docstrings (not the gate's)"
        run.say(f"INT4 calibration: {len(windows)} windows of up to 128 tokens from {source}")
        run.report["calibration"] = {
            "windows": len(windows),
            "tokens": sum(len(w) for w in windows),
            "source": source,
        }
        run.reference["calibration"] = windows
    return list(run.reference["calibration"])


def _int8_layers(run: LMRun, precisions: dict[str, str], weights: WeightSpec) -> list[str] | None:
    """The weight layers an INT4 build kept in INT8, by the model's own module names."""
    if weights.mode != "int4":
        return None
    names = _module_names(run)
    kept = [names.get(n, n) for n, kind in precisions.items() if kind in ("u8", "i8")]
    return sorted(kept, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def _module_names(run: LMRun) -> dict[str, str]:
    """Exported node name -> the ``transformers`` module it came from (``model.layers.14.mlp.
    down_proj``), read off the exporter's ``pkg.torch.onnx.name_scopes`` metadata."""
    if "module_names" not in run.reference:
        import ast

        import onnx

        names: dict[str, str] = {}
        graph = onnx.load(str(run.export_onnx().path), load_external_data=False).graph
        for node in graph.node:
            scopes = next(
                (p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"),
                None,
            )
            if scopes is None:
                continue
            try:
                path = [str(s) for s in ast.literal_eval(scopes)]
            except (ValueError, SyntaxError):
                continue
            if len(path) >= 2 and path[-2].startswith("model."):
                names[node.name] = path[-2].removeprefix("model.")
        names.setdefault("logits", "lm_head")
        run.reference["module_names"] = names
    return dict(run.reference["module_names"])


def _reference(run: LMRun) -> tuple[list[int], list[int]]:
    """The parity prompt (the model's own chat template when it has one) and transformers'
    greedy reply to it, computed once per compile."""
    if "prompt" not in run.reference:
        tok = run.source.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": "What is the capital of France?"}]
            encoded = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = (
                encoded["input_ids"]
                if isinstance(encoded, dict) or hasattr(encoded, "keys")
                else encoded
            )
            run.reference["messages"] = messages
        else:
            ids = tok(docstring_corpus(2000)[:400])["input_ids"]
        prompt = [int(t) for t in ids]
        run.say(f"transformers reference: {run.options.verify_tokens} greedy tokens")
        run.reference["prompt"] = prompt
        run.reference["tokens"] = frontend.reference_greedy(
            run.source, prompt, run.options.verify_tokens, block_eos=True
        )
    return run.reference["prompt"], run.reference["tokens"]


def _manifest(
    run: LMRun, device: Device, payload: Path, entry: str, config: dict[str, Any], kind: str
) -> Manifest:
    files = {
        f"decoder/{p.relative_to(payload).as_posix()}": sha256_file(p)
        for p in sorted(payload.rglob("*"))
        if p.is_file()
    }
    assets = {
        f"tokenizer/{p.relative_to(run.tokenizer_dir).as_posix()}": sha256_file(p)
        for p in sorted(run.tokenizer_dir.rglob("*"))
        if p.is_file()
    }
    layout = run.layout
    info = run.tokenizer_info
    inputs = (
        TensorSpec("input_ids", "int64", ("batch", "seq")),
        TensorSpec("attention_mask", "int64", ("batch", "total")),
        TensorSpec("position_ids", "int64", ("batch", "seq")),
    )
    outputs = (TensorSpec("logits", "float32", ("batch", "n", run.vocab_size)),)
    partition = PartitionSpec(
        id="decoder",
        target=device.target,
        device=device.name,
        entry=f"decoder/{entry}",
        files=files,
        inputs=tuple(s.name for s in inputs),
        outputs=("logits",),
        config=config,
    )
    tokenizer = {
        "file": "tokenizer/tokenizer.json",
        "chat_template": (
            f"tokenizer/{info['files']['chat_template']}"
            if "chat_template" in info["files"]
            else None
        ),
        "special_tokens": info["special_tokens"],
        "bos_token_id": info["bos_token_id"],
        "eos_token_ids": info["eos_token_ids"],
        "pad_token_id": info["pad_token_id"],
    }
    config_obj = run.source.config.get_text_config()
    context = int(
        getattr(config_obj, "max_position_embeddings", None)
        or getattr(config_obj, "n_positions", None)
        or 2048
    )
    if "max_cache_len" in config:  # a static cache bounds the context
        context = min(context, int(config["max_cache_len"]))
    return Manifest(
        inputs=inputs,
        outputs=outputs,
        partitions=(partition,),
        compile_options=run.options.to_json(),
        toolchain=toolchain(device.target),
        source={"sha256": run.source.digest, "architecture": run.source.architecture},
        kind="causal-lm",
        assets=assets,
        llm=lm_spec.to_json(
            architecture=run.source.architecture,
            vocab_size=run.vocab_size,
            context_length=context,
            cache=layout.to_json(),
            decoder_kind=kind,
            partition="decoder",
            tokenizer=tokenizer,
        ),
    )
