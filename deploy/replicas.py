"""Replicas across devices for a deployment: the ``replicas`` constraint.

With ``constraints={"replicas": "auto" | N | ["openvino:CPU", "cuda:0", ...]}`` the search runs
as it always does (every device's candidates compiled, verified and measured), and then:

1. ``plan_replicas``: one candidate per device: on the device of the chosen candidate, the
   chosen one; on every other device the best candidate that meets every constraint (by the
   deployment's objective). ``auto`` takes every such device, ``N`` the N with the highest
   measured throughput (the chosen device first), a list exactly those devices (each must
   have a measured candidate; one that meets the constraints where there is one).
2. ``measure_replicas``: the candidates are loaded into a ``ReplicaSet`` (CPU replicas on
   the same cores split them: each gets ``(cores - accelerators) // CPU replicas`` threads,
   a core left to each accelerator's feeding thread; accelerators run as compiled),
   calibrated on a sample, and ``ReplicaSet.prune`` measures the set against each replica
   alone (with the candidate that device would run alone, every core). Where the whole set is
   not at least ``MARGIN`` faster than its best replica alone, only that replica is kept (with
   its all-core candidate): a set never runs below its best device.
3. The record (``explanation["replicas"]``) names every replica, its artifact, the requests/s
   measured alone and together, what was kept and why. It is stored with the decision
   (``deployments/<key>/replicas/``), so a later deploy loads what was kept without
   measuring again (``refresh=True`` measures again); ``open_replicas`` does that load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_vmm.deploy.choose import Variant, best_of
from ai_vmm.deploy.constraints import Constraints
from ai_vmm.deploy.samples import Samples
from ai_vmm.deploy.search import thread_variant
from ai_vmm.deploy.store import safe_name
from ai_vmm.runtime.errors import ConstraintError
from ai_vmm.runtime.replicas import COPY_MARK, cpu_replica_threads, device_of

Say = Callable[[str], None]
MARGIN = 0.03
ACCELERATOR_COPIES = {"cuda": 2}
"""Copies of an accelerator's artifact in a set, by target: a GPU fed by one thread waits on
the host at every call, and a second executor (its own CUDA stream) overlaps one copy's host
work with the other's GPU work. Measured on the H200 beside 16 Xeon cores (docs/parallel.md,
2026-12-05, one run): on the zoo's small ResNet at batch 8 each copy alone did 1,486 and 1,431
requests/s and the two together 2,045, and the GPU + CPU pair 1.26x the best single device
(0.99x in the earlier run with one copy)."""
"""How much faster the whole set must measure than its best replica alone to be kept."""
ROUNDS = 2


@dataclass
class ReplicaPlan:
    """One device of the set: the candidate it runs, and its artifact in the set and alone."""

    device: str
    variant: Variant
    set_path: Path
    """The artifact the device runs in the set (CPU: the shared cores' thread count)."""
    alone_path: Path
    """The artifact the device runs alone (the candidate as measured by the search)."""
    threads: int | None
    """Threads of this replica in the set (CPU replicas only)."""
    copies: int = 1
    """Executors of this device's artifact in the set (``ACCELERATOR_COPIES``)."""


def plan_replicas(
    variants: Sequence[Variant],
    chosen: Variant,
    constraints: Constraints,
    cores: int,
    variants_dir: Path,
) -> tuple[list[ReplicaPlan], list[str]]:
    """The devices of the set and their candidates (see the module docstring), with notes on
    the devices left out.

    Raises:
        ConstraintError: a listed device has no measured candidate here.
    """
    request = constraints.replicas
    notes: list[str] = []
    by_device: dict[str, list[Variant]] = {}
    for variant in variants:
        if variant.figures is None or variant.error or variant.build.spec.plan:
            continue  # partition plans span devices already: not a replica of one device
        by_device.setdefault(variant.build.spec.device.key, []).append(variant)
    best: dict[str, Variant] = {}
    for device, mine in by_device.items():
        meeting = [v for v in mine if v.meets]
        if chosen in mine:
            best[device] = chosen
        elif meeting:
            best[device] = best_of(meeting, constraints)[0]
        elif isinstance(request, tuple):
            # Named by the user: its closest candidate, said so.
            best[device] = max(mine, key=_throughput)
            notes.append(
                f"replica {device}: no candidate meets the constraints; {best[device].key}"
            )
        else:
            notes.append(f"replica {device} left out: no candidate on it meets the constraints")
    chosen_device = chosen.build.spec.device.key
    if isinstance(request, tuple):
        lower = {key.lower(): key for key in best}
        missing = [d for d in request if d.lower() not in lower]
        if missing:
            present = ", ".join(sorted(best)) or "none"
            raise ConstraintError(
                f"replicas: no measured candidate on {', '.join(missing)} "
                f"(devices with candidates here: {present})"
            )
        devices = [lower[d.lower()] for d in request]
    else:
        others = sorted(
            (d for d in best if d != chosen_device),
            key=lambda d: -_throughput(best[d]),
        )
        devices = [chosen_device, *others] if chosen_device in best else others
        if isinstance(request, int):
            for device in devices[request:]:
                notes.append(f"replica {device} left out: replicas = {request}")
            devices = devices[:request]
    on_cpu = [d for d in devices if best[d].build.spec.device.kind == "cpu"]
    share = cpu_replica_threads(cores, len(on_cpu), len(devices) - len(on_cpu))
    plans = []
    for device in devices:
        variant = best[device]
        build_path = variant.build.path
        alone = variant.path
        assert build_path is not None and alone is not None
        threads = share if device in on_cpu and build_path.is_dir() else None
        set_path = alone
        if threads is not None and threads != variant.threads:
            set_path = thread_variant(build_path, variants_dir, threads)
        copies = 1
        if variant.build.spec.device.kind != "cpu":
            copies = ACCELERATOR_COPIES.get(device.split(":")[0], 1)
        plans.append(ReplicaPlan(device, variant, set_path, alone, threads, copies))
    return plans, notes


def measure_replicas(
    plans: Sequence[ReplicaPlan],
    samples: Samples,
    batch: int,
    seconds: float,
    say: Say,
    load: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Calibrate and prune the set on the first sample; the record of what was kept and why.

    ``load`` loads one artifact (default ``ai_vmm.runtime.load``; tests pass simulated
    devices). Every model loaded here is closed again: the deployment loads what was kept.
    """
    from ai_vmm.runtime.replicas import ReplicaSet

    if load is None:
        from ai_vmm.runtime import load as load_artifact

        load = load_artifact
    record: dict[str, Any] = {
        "devices": [_plan_json(p) for p in plans],
        "samples": samples.description + (" (synthetic)" if samples.synthetic else ""),
        "batch": batch,
    }
    if len(plans) < 2:
        record.update(kept=[p.device for p in plans], pruned=[])
        record["why"] = (
            "one device has a candidate that meets the constraints: nothing to replicate"
            if plans
            else "no device has a candidate"
        )
        return record
    sample = samples.batched(batch)[0]
    loaded: list[Any] = []
    try:
        in_set = []
        alone: dict[str, Any] = {}
        for plan in plans:
            for name in copy_names(plan.device, plan.copies):
                model = load(plan.set_path)
                loaded.append(model)
                in_set.append((name, model))
            if plan.alone_path != plan.set_path:
                alone[plan.device] = load(plan.alone_path)
                loaded.append(alone[plan.device])
        names = ", ".join(p.device for p in plans)
        say(f"measuring {len(plans)} replicas ({names}) alone and together")
        replicas = ReplicaSet(in_set)
        try:
            replicas.calibrate(sample, seconds=seconds / 2)
            decision = replicas.prune(
                sample,
                seconds=seconds * (len(plans) + 1),
                rounds=ROUNDS,
                margin=MARGIN,
                alone=alone,
            )
        finally:
            replicas.close(close_models=False)
    finally:
        for model in loaded:
            with contextlib.suppress(Exception):
                model.close()
    record["measured"] = {
        "alone": decision["alone"],
        "together": decision["together"],
        "best_alone": decision["best_alone"],
        "margin": MARGIN,
        "rounds": ROUNDS,
    }
    record.update(kept=_devices(decision["kept"]), pruned=_devices(decision["pruned"]))
    (best, best_rate), together = next(iter(decision["best_alone"].items())), decision["together"]
    if decision["pruned"]:
        record["why"] = (
            f"the set added no capacity: {together:.1f} requests/s together against "
            f"{best_rate:.1f} with {best} alone (needs {1 + MARGIN:.2f}x); {best} runs alone "
            "with its own candidate"
        )
    else:
        record["why"] = (
            f"{together:.1f} requests/s together against {best_rate:.1f} with {best} alone "
            f"({together / best_rate:.2f}x >= {1 + MARGIN:.2f}x): every replica kept"
        )
    return record


def stored_artifacts(plans: Sequence[ReplicaPlan], record: dict[str, Any]) -> dict[str, Path]:
    """What the decision stores of the set, by path under its entry: the set's artifacts when
    several replicas were kept, else the one kept device's artifact as it runs alone."""
    kept = set(record.get("kept", []))
    files: dict[str, Path] = {}
    for plan, row in zip(plans, record["devices"], strict=True):
        if plan.device not in kept:
            continue
        path = plan.set_path if len(kept) > 1 else plan.alone_path
        row["stored"] = f"replicas/{safe_name(plan.device.replace(':', '-'))}.vmm"
        files[row["stored"]] = path
    return files


def open_replicas(entry: Path, record: dict[str, Any]) -> tuple[Any, Path]:
    """The runtime model of a stored replica decision: a ``ReplicaSet`` of the kept replicas
    (started from the rates measured alone), or the one kept device's model; and the
    artifact of its first replica.

    Raises:
        ArtifactError: a stored artifact is missing or broken.
    """
    from ai_vmm.runtime import load
    from ai_vmm.runtime.replicas import ReplicaSet

    kept = list(record.get("kept", []))
    rows = {row["device"]: row for row in record.get("devices", [])}
    rates = record.get("measured", {}).get("alone", {})
    paths: list[Path] = []
    names: list[str] = []
    known: dict[str, float] = {}
    for device in kept:
        copies = int(rows[device].get("copies", 1))
        for name in copy_names(device, copies):
            paths.append(entry / rows[device]["stored"])
            names.append(name)
            if rates.get(device):  # the device's rate, all its copies together
                known[name] = copies / rates[device]
    if len(paths) == 1:
        return load(paths[0]), paths[0]
    return ReplicaSet.load(paths, names=names, seconds_per_request=known), paths[0]


def replica_paths_ok(entry: Path, record: dict[str, Any]) -> bool:
    """Whether every artifact a stored replica decision names is there."""
    from ai_vmm.runtime.artifact import is_artifact

    rows = {row["device"]: row for row in record.get("devices", [])}
    for device in record.get("kept", []):
        stored = rows.get(device, {}).get("stored")
        if not stored or not is_artifact(entry / stored):
            return False
    return True


def format_replicas(record: dict[str, Any]) -> list[str]:
    """The explanation's lines about the replica set (``format_explanation`` adds them)."""
    asked = record.get("asked")
    what = ", ".join(asked) if isinstance(asked, list) else asked
    lines = [f"replicas     asked {what}; measured on {record.get('samples', '?')}"]
    measured = record.get("measured", {})
    alone = measured.get("alone", {})
    for row in record.get("devices", []):
        threads = f"; threads in the set: {row['threads']}" if row.get("threads") else ""
        if int(row.get("copies", 1)) > 1:
            threads += f"; {row['copies']} copies (executors) in the set"
        rate = alone.get(row["device"])
        figure = f"; alone {rate:.1f} requests/s" if rate is not None else ""
        state = "kept" if row["device"] in record.get("kept", []) else "pruned"
        lines.append(f"  {state:<7} {row['device']:<20} {row['candidate']}{threads}{figure}")
    if "together" in measured:
        lines.append(f"  together {measured['together']:.1f} requests/s")
    lines.append(f"  decision {record.get('why', '')}")
    lines += [f"  note     {note}" for note in record.get("notes", [])]
    return lines


def copy_names(device: str, copies: int) -> list[str]:
    """Replica names of a device's copies: ``cuda:0``, ``cuda:0#1``, ..."""
    return [device, *(f"{device}{COPY_MARK}{k}" for k in range(1, copies))]


def _devices(names: Sequence[str]) -> list[str]:
    """Replica names to their devices, in order, each once."""
    return list(dict.fromkeys(device_of(name) for name in names))


def _throughput(variant: Variant) -> float:
    return variant.figures.throughput if variant.figures is not None else 0.0


def _plan_json(plan: ReplicaPlan) -> dict[str, Any]:
    return {
        "device": plan.device,
        "candidate": plan.variant.key,
        "threads": plan.threads,
        "copies": plan.copies,
        "artifact": str(plan.set_path),
        "alone_artifact": str(plan.alone_path),
    }
