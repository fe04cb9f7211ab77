"""Deploying a causal LM (a ``.gguf`` file, a Hugging Face ``*ForCausalLM`` folder or model).

The same search as for tensor models, over what the LM compile path offers (issue 15):

- devices: the LM targets present (``openvino:CPU``, ``onnxruntime:CPU``, ``cuda:N``);
- precision: float weights always; with ``max_accuracy_drop`` also INT8 weights (and fp16 /
  bf16 on a GPU), behind compile's own LM quality gate (perplexity and greedy agreement
  against the float model; a build it refuses is dropped with its reason);
- threads on the CPU.

Each candidate generates greedy replies to the prompts (``samples=``: a list of strings or
chats, or a ``.txt`` file with one prompt a line; by default ``DEFAULT_PROMPTS``, said so in
the explanation). For causal LMs
``max_latency_ms`` bounds the time to first token and ``min_throughput`` the generated tokens
per second; energy is per generated token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_vmm.deploy.builds import Build, BuildSpec, artifact_build, describe_partitions
from ai_vmm.deploy.choose import Variant, choose
from ai_vmm.deploy.constraints import Constraints
from ai_vmm.deploy.explain import explanation, preference_notes
from ai_vmm.deploy.hardware import cpu_class
from ai_vmm.deploy.measure import ROUNDS, Figures, rss_bytes
from ai_vmm.deploy.resolve import ResolvedModel, model_digest
from ai_vmm.deploy.samples import Samples
from ai_vmm.deploy.search import SearchResult, thread_options
from ai_vmm.deploy.store import STORE_FORMAT, derive_variant, digest, versions
from ai_vmm.deploy.telemetry import PowerFigure, Window, combine
from ai_vmm.runtime.errors import CompileError, InputError, VmmError

if TYPE_CHECKING:
    from ai_vmm.deploy.deployment import Deployment
    from ai_vmm.deploy.vmm import VMM

LM_TARGETS = ("openvino", "onnxruntime", "cuda")
DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Explain in one sentence what a compiler does.",
    "Give me three tips for writing clear documentation.",
    "How many legs does a spider have?",
)
"""Used when no prompts are given: short, valid chat questions written for this purpose."""
NEW_TOKENS = 24


def prompts_of(samples: Any) -> tuple[list[Any], bool]:
    """The prompts to measure on, and whether they are the defaults.

    A ``Path`` (or a string naming an existing ``.txt`` file) is read one prompt per line
    (``vmmc deploy --samples prompts.txt``); any other string is one prompt.
    """
    if samples is None:
        return list(DEFAULT_PROMPTS), True
    if isinstance(samples, Path) or (
        isinstance(samples, str) and samples.endswith(".txt") and Path(samples).is_file()
    ):
        try:
            lines = Path(samples).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read prompts from {samples}: {exc}") from exc
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise InputError(f"{samples} holds no prompt (one a line)")
        return prompts, False
    if isinstance(samples, str):
        return [samples], False
    if (
        isinstance(samples, Sequence)
        and samples
        and all(isinstance(s, str | list) for s in samples)
    ):
        return list(samples), False
    raise InputError(
        "samples for a causal LM are prompts: a string, or a list of strings or chats "
        "(lists of {'role', 'content'} messages)"
    )


def deploy_causal_lm(
    vmm: VMM,
    resolved: ResolvedModel,
    limits: Constraints,
    samples: Any,
    *,
    strict: bool,
    name: str | None,
) -> Deployment:
    """``VMM.deploy`` for a causal LM (see the module docstring)."""
    import warnings

    from ai_vmm.deploy.vmm import ConstraintWarning, logger

    prompts, default = prompts_of(samples)
    if not isinstance(resolved.source, str | Path):
        raise InputError(
            f"{resolved.label}: deploy an in-memory causal LM by saving it first "
            "(model.save_pretrained(dir)) and deploying the folder"
        )
    model_hash = model_digest(resolved)
    key = digest(
        {
            "format": STORE_FORMAT,
            "kind": "causal-lm",
            "model": model_hash,
            "hardware": vmm.fingerprint,
            "constraints": limits.to_json(),
            "prompts": [str(p) for p in prompts],
            "measure_seconds": vmm.measure_seconds,
            "versions": versions(),
        }
    )
    with vmm.store.locked(key):
        found = vmm.store.decision(key)
        if found is None:
            path, record = _search(vmm, resolved, model_hash, limits, prompts, default, strict)
            record["artifact"] = str(vmm.store.decision_path(key))
            path = vmm.store.save_decision(key, path, record)
        else:
            path, record = found
        deployment = vmm.open(path, record, limits)
    vmm.remember(resolved, path, name, searched=found is None)
    if not record.get("meets_constraints", True):
        message = f"deployment does not meet its constraints: {record.get('rule', '')}"
        logger.warning(message)
        warnings.warn(message, ConstraintWarning, stacklevel=3)
    return deployment


def _search(
    vmm: VMM,
    resolved: ResolvedModel,
    model_hash: str,
    limits: Constraints,
    prompts: list[Any],
    default: bool,
    strict: bool,
) -> tuple[Path, dict[str, Any]]:
    started = time.perf_counter()
    say = vmm.say
    # the store's format too: builds made under another rule (an LM compiled before its
    # attention was timed) are not reused
    group = (
        f"{model_hash[:16]}-{digest({'hardware': vmm.fingerprint, 'format': STORE_FORMAT})[:12]}"
    )
    builds_dir = vmm.store.path("builds", group)
    notes: list[str] = []
    specs: list[BuildSpec] = []
    for entry in vmm.devices:
        for device in entry.devices:
            if device.target not in LM_TARGETS or (
                device.target == "openvino" and device.kind != "cpu"
            ):
                continue
            specs.append(BuildSpec(device, entry.name, "fp32"))
            if limits.permits_low_precision:
                specs.append(BuildSpec(device, entry.name, "int8"))
                if device.kind == "gpu":
                    specs.append(BuildSpec(device, entry.name, "fp16"))
    if not limits.permits_low_precision:
        notes.append("float weights only: give max_accuracy_drop to permit INT8 weights")
    if resolved.kind == "artifact":
        build, _ = artifact_build(Path(resolved.source), vmm.inventory)
        builds = [build]
        notes = ["an artifact: deployed as compiled (thread count searched)"]
    else:
        builds = [_build(spec, Path(resolved.source), builds_dir, vmm, say) for spec in specs]
    if not any(b.usable for b in builds):
        reasons = "; ".join(f"{b.spec.id}: {b.reason}" for b in builds) or "no LM target here"
        raise CompileError(f"no device could compile this causal LM: {reasons}"[:900])
    variants = []
    cores = vmm.inventory.cpu.physical_cores
    for build in builds:
        if not build.usable:
            continue
        assert build.path is not None
        counts: list[int | None] = (
            list(thread_options(cores)) if build.spec.device.kind == "cpu" else [None]
        )
        for count in counts:
            path = build.path
            if count is not None:
                out = vmm.store.path("variants", group, f"{build.path.stem}-t{count}.vmm")
                path = derive_variant(build.path, out, {"threads": count})
            variants.append(Variant(build, count, 1, path))
    say(f"measuring {len(variants)} candidates on {len(prompts)} prompts")
    _measure(variants, prompts, vmm)
    chosen, rule, meets = choose(variants, limits, cpu_class(vmm.inventory.cpu), strict=strict)
    description = (
        f"{len(prompts)} default prompts (none given)" if default else f"{len(prompts)} prompts"
    )
    samples = Samples((), description, default, digest({"prompts": [str(p) for p in prompts]}))
    notes.append(
        f"causal LM: latency is the time to first token, throughput generated tokens/s "
        f"({NEW_TOKENS} greedy tokens a prompt), energy per generated token"
    )
    result = SearchResult(
        chosen, rule, meets, builds, variants, samples, notes,
        "compile's LM quality gate (perplexity, greedy agreement with the float model)",
        time.perf_counter() - started,
    )  # fmt: skip
    host = cpu_class(vmm.inventory.cpu)
    record = explanation(
        model={
            "label": resolved.label,
            "kind": resolved.kind,
            "found": resolved.found,
            "sha256": model_hash,
            "notes": [],
        },
        hardware=vmm.hardware,
        constraints=limits,
        result=result,
        telemetry=vmm.telemetry.describe(),
        preferences=preference_notes(vmm.hardware, limits, chosen, variants, host),
        extra_notes=[],
    )
    assert chosen.path is not None
    return chosen.path, record


def _build(spec: BuildSpec, source: Path, out_dir: Path, vmm: VMM, say: Any) -> Build:
    import ai_vmm
    from ai_vmm.runtime.artifact import is_artifact

    # tune: for one device, what an LM compile tunes is OpenVINO's attention (stateful or
    # paged: compiler/llm_attention.py) and cuda's decode steps (plain or Inductor:
    # compiler/llm_decode.py), timed on the build; threads are searched here
    options: dict[str, Any] = {"tune": True, "cache_dir": vmm.store.path("lm-compile-cache")}
    if spec.precision == "int8":
        options["weights"] = "int8"
    elif spec.precision in ("fp16", "bf16"):
        options["precision"] = spec.precision
    name = spec.device.key.replace(":", "_").replace(".", "_")
    path = out_dir / f"lm-{name}-{spec.precision}.vmm"
    build = Build(spec)
    if is_artifact(path):
        build.path, build.status = path, "reused"
        return describe_partitions(build)
    say(f"compiling {spec.id}")
    started = time.perf_counter()
    try:
        result = ai_vmm.compile(source, spec.device.key, path, force=True, **options)
    except VmmError as exc:
        build.status, build.reason = "failed", str(exc)
        build.seconds = time.perf_counter() - started
        return build
    build.seconds = time.perf_counter() - started
    chosen: dict[str, Any] = next(iter(result.report.get("candidates", [])), {})
    quality = chosen.get("quality") or {}
    if spec.precision == "int8" and not chosen.get("weights"):
        build.status = "refused"
        build.reason = "compile's quality gate kept float weights: " + "; ".join(
            f"{a.get('mode', '?')}: perplexity +{a.get('increase')}, agreement {a.get('agreement')}"
            for a in quality.get("attempts", [])
        )
        return build
    build.path, build.status = path, "built"
    kept = quality.get("kept") or {}
    if kept:
        build.accuracy = {
            "metrics": {k: kept[k] for k in ("perplexity", "increase", "agreement") if k in kept},
            "drops": {},
        }
    return describe_partitions(build)


def _measure(variants: list[Variant], prompts: list[Any], vmm: VMM) -> None:
    from ai_vmm.runtime import load

    telemetry = vmm.telemetry
    cores = vmm.inventory.cpu.logical_cores
    loaded: dict[int, Any] = {}
    memory: dict[int, float | None] = {}
    try:
        for variant in variants:
            assert variant.path is not None
            before = rss_bytes()
            try:
                lm: Any = load(variant.path)
                lm.generate(prompts[0], max_new_tokens=4)
            except VmmError as exc:
                variant.error = str(exc)
                continue
            after = rss_bytes()
            loaded[id(variant)] = lm
            memory[id(variant)] = (
                None if before is None or after is None else max(after - before, 0) / 2**20
            )
        ttft: dict[int, list[float]] = {id(v): [] for v in variants}
        tokens: dict[int, int] = dict.fromkeys(ttft, 0)
        decode_s: dict[int, float] = dict.fromkeys(ttft, 0.0)
        power: dict[int, list[PowerFigure]] = {id(v): [] for v in variants}
        for _ in range(ROUNDS):
            for variant in variants:
                running = loaded.get(id(variant))
                if running is None:
                    continue
                device = variant.build.spec.device
                kind = "gpu" if device.kind == "gpu" else "cpu"
                index = int(device.name) if device.name.isdigit() else 0
                with Window(telemetry.meter_for(kind, index), cores) as window:
                    for prompt in prompts:
                        result = running.generate(
                            prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
                        )
                        ttft[id(variant)].append(1000.0 * float(result.ttft_s or result.total_s))
                        tokens[id(variant)] += len(result.tokens)
                        decode_s[id(variant)] += float(result.total_s)
                if window.figure is not None:
                    power[id(variant)].append(window.figure)
        for variant in variants:
            if id(variant) not in loaded:
                continue
            seconds = decode_s[id(variant)]
            variant.figures = Figures(
                ttft[id(variant)],
                1,
                memory[id(variant)],
                combine(power[id(variant)]),
                rate=tokens[id(variant)] / seconds if seconds > 0 else 0.0,
            )
    finally:
        for opened in loaded.values():
            with contextlib.suppress(Exception):
                opened.close()
