"""``VMM``: discover the hardware, then deploy models on it under constraints.

    vmm = VMM()                          # hardware discovery (vmm.devices, vmm.explain())
    model = vmm.deploy("detector.onnx", constraints={"max_latency_ms": 20}, samples="x.npz")
    outputs = model(images=x)            # model.stats(), model.explain(), model.close()

``deploy`` resolves the model (``resolve.py``), looks for an earlier decision in the deployment
store (same model, machine, constraints and samples: loaded in well under a second), and
otherwise runs the constraint search (``search.py``) and stores its choice.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ai_vmm.deploy.builds import artifact_build
from ai_vmm.deploy.constraints import Constraints
from ai_vmm.deploy.deployment import Deployment
from ai_vmm.deploy.explain import explanation, preference_notes
from ai_vmm.deploy.hardware import Hardware, classify, cpu_class, format_hardware
from ai_vmm.deploy.resolve import ResolvedModel, model_digest, resolve
from ai_vmm.deploy.samples import digest_of
from ai_vmm.deploy.store import (
    STORE_FORMAT,
    DeploymentStore,
    digest,
    hardware_fingerprint,
    versions,
)
from ai_vmm.deploy.telemetry import Meter, Telemetry
from ai_vmm.runtime.errors import ConstraintError, ModelLoadError

logger = logging.getLogger("ai_vmm.deploy")
Progress = Callable[[str], None]


class ConstraintWarning(UserWarning):
    """A deployment was returned although it does not meet every constraint (strict=False)."""


class VMM:
    """The hardware of this machine, and deployments on it.

    Args:
        store: the deployment store directory (default ``~/.cache/ai-vmm/deployments``).
        measure_seconds: measuring time per candidate (spread over interleaved rounds).
        progress: called with a short message as each step starts.
        telemetry: power meters (default: discovered: NVML, RAPL).
        refresh: discover the hardware again instead of reusing this process's inventory.
        restore_accuracy: hand the accuracy budget to compile's own gate, which keeps the most
            sensitive layers of an INT8 build in float until it holds (slow: minutes per build
            on a small machine); default: INT8 builds are judged as compiled.
    """

    def __init__(
        self,
        *,
        store: str | Path | None = None,
        measure_seconds: float = 1.0,
        progress: Progress | None = None,
        telemetry: Telemetry | None = None,
        refresh: bool = False,
        restore_accuracy: bool = False,
    ) -> None:
        from ai_vmm import hardware, registry

        if measure_seconds <= 0:
            raise ValueError("measure_seconds must be positive")
        self.store = DeploymentStore(store)
        self.measure_seconds = float(measure_seconds)
        self.restore_accuracy = restore_accuracy
        self.say = progress or (lambda message: logger.info(message))
        self.inventory = hardware.discover(registry.discoverers(), refresh=refresh)
        self.hardware: list[Hardware] = classify(self.inventory)
        self._telemetry = telemetry
        self.fingerprint = hardware_fingerprint(self.inventory)

    @property
    def devices(self) -> list[Hardware]:
        """The hardware classes present here, with the target devices that drive them."""
        return [h for h in self.hardware if h.present]

    @property
    def telemetry(self) -> Telemetry:
        if self._telemetry is None:
            self._telemetry = Telemetry.discover()
        return self._telemetry

    def explain(self) -> str:
        """Every hardware class: present (devices, details) or absent (why); power telemetry."""
        lines = [format_hardware(self.hardware), "", "power telemetry"]
        lines += [f"  {line}" for line in self.telemetry.describe()]
        if self.inventory.notes:
            lines += ["", "discovery notes"] + [f"  {n}" for n in self.inventory.notes]
        return "\n".join(lines)

    def deploy(
        self,
        model: Any,
        constraints: Constraints | dict[str, Any] | None = None,
        samples: Any = None,
        strict: bool = True,
        *,
        name: str | None = None,
        refresh: bool = False,
    ) -> Deployment:
        """Deploy ``model`` here: the cheapest candidate that meets every constraint.

        Args:
            model: a path (``.onnx``, a Hugging Face folder, ``.gguf``, an OpenVINO ``.xml``, an
                artifact ``.vmm``/``.vmm.zip``, TFLite/Keras/SavedModel/``.pt2``), a model ID
                found in the local Hugging Face cache or in the artifact store, or an
                ``nn.Module`` / ``onnx.ModelProto``.
            constraints: a ``Constraints`` or its dict form (see ``Constraints``).
            samples: what to measure on (a dict of arrays, a list of such dicts, an ``.npz``
                path or a directory of them); synthesised from the signature when ``None``.
            strict: raise ``ConstraintError`` when nothing meets the constraints; ``False``
                returns the closest candidate and warns.
            name: also save the chosen artifact in the artifact store under this name
                (``VMM().deploy(name)`` finds it later).
            refresh: search again even when the store has a decision for this deployment.

        Raises:
            ConstraintError: no candidate meets the constraints (the message names the best
                figure reached for each), with ``strict``.
            ModelLoadError: the model is not found (every place searched is named) or cannot
                be read.
            InputError: samples that do not fit the model.
        """
        started = time.perf_counter()
        limits = Constraints.parse(constraints)
        resolved = resolve(model, self.store)
        if resolved.kind == "causal-lm" or _lm_artifact(resolved, self.inventory):
            from ai_vmm.deploy.llm import deploy_causal_lm

            if limits.replicas is not None:
                raise ConstraintError(
                    f"{resolved.label}: replicas apply to tensor models; a causal LM runs on "
                    "one device (drop the replicas constraint)"
                )

            return deploy_causal_lm(self, resolved, limits, samples, strict=strict, name=name)
        _check_replica_devices(limits, self.inventory)
        model_hash = model_digest(resolved)
        key = digest(
            {
                "format": STORE_FORMAT,
                "model": model_hash,
                "hardware": self.fingerprint,
                "constraints": limits.to_json(),
                "samples": _samples_digest(samples),
                "measure_seconds": self.measure_seconds,
                "restore_accuracy": self.restore_accuracy,
                "versions": versions(),
            }
        )
        with self.store.locked(key):
            found = None if refresh else self.store.decision(key)
            if found is not None and not _replicas_intact(*found):
                found = None  # a replica artifact went missing: search (the builds are kept)
            if found is None:
                path, record = self._search(resolved, model_hash, limits, samples, strict, key)
            else:
                path, record = found
                self.say(f"deployment found in the store ({key[:12]})")
            deployment = self.open(path, record, limits)
        self.remember(resolved, path, name, searched=found is None)
        if not record.get("meets_constraints", True):
            message = f"deployment does not meet its constraints: {record.get('rule', '')}"
            logger.warning(message)
            warnings.warn(message, ConstraintWarning, stacklevel=2)
        self.say(f"deployed {record['chosen']['key']} in {time.perf_counter() - started:.2f} s")
        return deployment

    def remember(
        self, resolved: ResolvedModel, path: Path, name: str | None, *, searched: bool
    ) -> None:
        """Keep the choice in the artifact store: under ``name``, and under the ID a model was
        found by in the HF cache (once, when it was searched), so the ID resolves without it."""
        if name:
            self.store.save_named(name, path)
        elif searched and resolved.model_id and not resolved.found.startswith("artifact store"):
            self.store.save_named(resolved.model_id, path)

    def open(self, path: Path, record: dict[str, Any], limits: Constraints) -> Deployment:
        """A stored decision (artifact + explanation) as a running ``Deployment``."""
        from ai_vmm.runtime import load

        chosen = record.get("chosen", {})
        model: Any
        if record.get("replicas") is not None:
            from ai_vmm.deploy.replicas import open_replicas

            model, path = open_replicas(path.parent, record["replicas"])
        else:
            model = load(path)
        device = str(chosen.get("device", "")).split(":")
        meter: Meter | None = None
        if len(device) == 2:
            kind = "cpu" if device[1].upper().startswith("CPU") else "gpu"
            index = int(device[1]) if device[1].isdigit() else 0
            meter = self.telemetry.meter_for(kind, index)
        return Deployment(
            model,
            artifact_path=path,
            explanation=record,
            constraints=limits,
            meter=meter,
            batch=int(chosen.get("batch") or 1),
        )

    def _search(
        self,
        resolved: ResolvedModel,
        model_hash: str,
        limits: Constraints,
        samples: Any,
        strict: bool,
        key: str,
    ) -> tuple[Path, dict[str, Any]]:
        from ai_vmm.deploy.search import run_search

        source, model_notes = self._source(resolved, model_hash, limits, samples)
        hw = digest({"hardware": self.fingerprint})[:12]
        group = f"{model_hash[:16]}-{hw}"
        host = cpu_class(self.inventory.cpu)
        result = run_search(
            source,
            hardware=self.hardware,
            inventory=self.inventory,
            constraints=limits,
            telemetry=self.telemetry,
            builds_dir=self.store.path("builds", group),
            variants_dir=self.store.path("variants", group),
            host_cpu=host,
            measure_seconds=self.measure_seconds,
            strict=strict,
            say=self.say,
            restore_accuracy=self.restore_accuracy,
        )
        record = explanation(
            model={
                "label": resolved.label,
                "kind": resolved.kind,
                "found": resolved.found,
                "sha256": model_hash,
                "notes": model_notes,
            },
            hardware=self.hardware,
            constraints=limits,
            result=result,
            telemetry=self.telemetry.describe(),
            preferences=preference_notes(
                self.hardware, limits, result.chosen, result.variants, host
            ),
            extra_notes=[],
        )
        assert result.chosen.path is not None
        record["artifact"] = str(self.store.decision_path(key))
        extra: dict[str, Path] = {}
        if limits.replicas is not None:
            record["replicas"], extra = self._replicas(result, limits, group)
        return self.store.save_decision(key, result.chosen.path, record, extra), record

    def _replicas(
        self, result: Any, limits: Constraints, group: str
    ) -> tuple[dict[str, Any], dict[str, Path]]:
        """Plan and measure the replica set (``ai_vmm.deploy.replicas``): its record, and the
        kept replicas' artifacts to store with the decision."""
        from ai_vmm.deploy.replicas import measure_replicas, plan_replicas, stored_artifacts

        plans, notes = plan_replicas(
            result.variants,
            result.chosen,
            limits,
            self.inventory.cpu.physical_cores,
            self.store.path("variants", group),
        )
        record = measure_replicas(
            plans, result.samples, result.chosen.batch, self.measure_seconds, self.say
        )
        asked = limits.replicas
        record["asked"] = list(asked) if isinstance(asked, tuple) else asked
        record["notes"] = notes
        return record, stored_artifacts(plans, record)

    def _source(
        self, resolved: ResolvedModel, model_hash: str, limits: Constraints, samples: Any
    ) -> tuple[Any, list[str]]:
        from ai_vmm.deploy.search import SearchInput

        if resolved.kind == "onnx":
            return SearchInput(Path(resolved.source), samples=samples), []
        if resolved.kind == "onnx-proto":
            path = self.store.path("sources", f"{model_hash[:32]}.onnx")
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.name}.part")
                partial.write_bytes(resolved.source.SerializeToString())
                partial.replace(path)
            return SearchInput(path, samples=samples), [f"ModelProto saved as {path}"]
        if resolved.kind == "artifact":
            build, _ = artifact_build(Path(resolved.source), self.inventory)
            return SearchInput(None, [build], samples), [
                "an artifact: deployed as compiled (thread count and batch are still searched)"
            ]
        if resolved.kind == "openvino-ir":
            return SearchInput(None, self._ir_builds(resolved, limits), samples), [
                "an OpenVINO IR: wrapped as it is (OpenVINO devices and precision hints searched)"
            ]
        if resolved.kind in ("torch-module", "hf-model", "framework"):
            from ai_vmm.deploy.export import export_source

            batching = limits.max_batch > 1 and (
                limits.min_throughput is not None or limits.power_budget_watts is not None
            )
            path, notes, made = export_source(
                resolved, model_hash, samples, self.store, batching=batching, say=self.say
            )
            return SearchInput(path, samples=samples, made_samples=made), notes
        raise ModelLoadError(f"{resolved.label}: cannot deploy a model of kind {resolved.kind}")

    def _ir_builds(self, resolved: ResolvedModel, limits: Constraints) -> list[Any]:
        from ai_vmm.deploy.builds import Build, BuildSpec, describe_partitions
        from ai_vmm.deploy.openvino_ir import wrap_ir
        from ai_vmm.hardware import cpu_precisions

        builds = []
        digest_dir = self.store.path("builds", f"ir-{model_digest(resolved)[:16]}")
        for entry in self.devices:
            for device in entry.devices:
                if device.target != "openvino":
                    continue
                precisions = ["fp32"]
                if limits.permits_low_precision:
                    if device.kind == "cpu":
                        cpu = cpu_precisions(self.inventory.cpu)
                        precisions += [p for p in ("bf16", "fp16") if p in cpu]
                    else:
                        precisions.append("fp16")
                for precision in precisions:
                    spec = BuildSpec(device, entry.name, precision)
                    out = digest_dir / f"{device.name}-{precision}.vmm"
                    started = time.perf_counter()
                    path = wrap_ir(
                        Path(resolved.source),
                        device.name,
                        precision,
                        out,
                        self.store.path("work", out.stem),
                    )
                    build = Build(spec, path, "built", seconds=time.perf_counter() - started)
                    builds.append(describe_partitions(build))
        if not builds:
            raise ModelLoadError(
                f"{resolved.label}: an OpenVINO IR needs OpenVINO, which is absent here"
            )
        return builds


def _check_replica_devices(limits: Constraints, inventory: Any) -> None:
    """Refuse replicas named on devices that are not here before anything is compiled."""
    if not isinstance(limits.replicas, tuple):
        return
    present = {d.key.lower() for d in inventory.devices}
    missing = [key for key in limits.replicas if key.lower() not in present]
    if missing:
        names = ", ".join(sorted(d.key for d in inventory.devices)) or "none"
        raise ConstraintError(
            f"replicas: {', '.join(missing)} is not a device here (devices: {names})"
        )


def _replicas_intact(path: Path, record: dict[str, Any]) -> bool:
    from ai_vmm.deploy.replicas import replica_paths_ok

    replicas = record.get("replicas")
    return replicas is None or replica_paths_ok(path.parent, replicas)


def _lm_artifact(resolved: ResolvedModel, inventory: Any) -> bool:
    if resolved.kind != "artifact":
        return False
    return artifact_build(Path(resolved.source), inventory)[1] == "causal-lm"


def _samples_digest(samples: Any) -> str:
    """What the store keys samples by: their arrays' bytes (not their file's path)."""
    if samples is None:
        return "synthetic"
    from ai_vmm.deploy.export import raw_examples

    return digest_of(raw_examples(samples))
