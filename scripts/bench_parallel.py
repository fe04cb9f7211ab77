#!/usr/bin/env python
"""Benchmark: every device of a machine at once (issue 17); writes docs/parallel.md.

Sections (``--sections``, default: every one this machine can run):

- ``pipeline`` (needs two devices of a partitioned plan; here openvino:CPU and onnxruntime:CPU):
  each model planned over both devices with the planner's throughput objective, then run
  (a) one request at a time as ``ai_vmm.runtime.load`` runs it (the artifact's threads),
  (b) one request at a time with the pipeline's thread settings (one core per CPU stage),
  (c) pipelined (``PipelinedModel``) with those threads, (d) pipelined with each partition's
  own threads, and (e) the whole model on each device alone.
  Saturation throughput in interleaved rounds; latency percentiles at a stated load (open loop,
  Poisson arrivals at ``--load`` x the best one-at-a-time contender's throughput).
- ``replicas``: each model compiled for each device (default: ``cuda:0`` where present, else
  ``openvino:CPU``, and ``onnxruntime:CPU``), each device alone and all of them as one
  ``ReplicaSet``; saturation throughput in interleaved rounds, latency percentiles at
  ``--load`` x the best single device's throughput, and where the pair's requests went.

Results are kept per machine in ``docs/parallel.json`` (a run replaces its own machine's entry),
and ``docs/parallel.md`` is rendered from all entries, so the GPU machine's run and this
machine's run sit side by side. Commands::

    python scripts/bench_parallel.py                                  # this machine
    python scripts/bench_parallel.py --sections replicas              # the GPU machine
    python scripts/bench_parallel.py --quick                          # a smoke run (CI-sized)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from parallel_measure import (  # noqa: E402
    interleaved,
    one_at_a_time,
    open_loop,
    ratio,
    saturation,
    spread,
)
from parallel_report import render  # noqa: E402

PIPELINE_GOAL = 1.5
PAIR_GOAL = 1.2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _zoo() -> Any:
    from ai_vmm.bench_suite import load_zoo

    return load_zoo(REPO / "models" / "zoo.py")


def _inventory() -> Any:
    from ai_vmm import hardware, registry

    return hardware.discover(registry.discoverers())


def machine_label(inventory: Any) -> str:
    gpus = [g.name for g in inventory.gpus]
    cpu = f"{inventory.cpu.model} ({os.cpu_count()} logical cores)"
    return f"{cpu} + {', '.join(gpus)}" if gpus else cpu


def _measure_contenders(
    contenders: dict[str, tuple[Any, int]],
    feed: dict[str, Any],
    seconds: float,
    rounds: int,
) -> dict[str, list[float]]:
    """contenders: name -> (submit, window). Saturation throughput per round."""
    return interleaved(
        {
            name: (lambda s=submit, w=window: saturation(s, feed, seconds, w))
            for name, (submit, window) in contenders.items()
        },
        rounds,
    )


def section_pipeline(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from parallel_build import pinned_model, pipelined_artifact, single_artifact

    import ai_vmm
    from ai_vmm.runtime.pipelined import PipelinedModel

    zoo = _zoo()
    devices = args.pipeline_devices.split(",")
    rows = []
    for name in args.models.split(","):
        batch = args.batch
        log(f"[pipeline] {name} batch {batch}: planning over {', '.join(devices)}")
        source = zoo.build(name, work)
        feed = zoo.example_inputs(name, batch=batch)
        path = work / f"{name}-pipeline.vmm"
        plan = pipelined_artifact(source, devices, path, feed, calibrate=args.calibrate)
        log(f"[pipeline] plan: {plan['partitions']}")
        sequential = ai_vmm.runtime.load(path)
        manifest = sequential.manifest
        pinned = pinned_model(path)
        pipelined = PipelinedModel.load(path, threads="auto", depth=args.depth)
        # The same pipeline with each partition's own thread settings (every stage may use
        # every core): on a machine shared with other work, more threads get more time slices.
        pipelined_own = PipelinedModel.load(path, threads=None, depth=args.depth)
        want = sequential.run(feed)
        for model in (pinned, pipelined, pipelined_own):
            got = model.run(feed)
            for out, value in want.items():
                diff = float(abs(got[out] - value).max())
                if diff > 1e-4:
                    raise SystemExit(f"{name}: pipelined output {out} differs by {diff}")
        singles = {}
        for device in devices:
            single_path = single_artifact(
                source, device, work / f"{name}-{device.replace(':', '-')}.vmm"
            )
            singles[device] = ai_vmm.runtime.load(single_path)
        # Stage times alone (pipeline threads), for the balance column.
        stage_ms = _stage_times(pinned, feed)
        closers = []
        contenders: dict[str, tuple[Any, int]] = {}
        for label, model in (
            ("sequential, artifact threads", sequential),
            ("sequential, pipeline threads", pinned),
            *((f"{d} alone", m) for d, m in singles.items()),
        ):
            submit, close = one_at_a_time(model.run)
            closers.append(close)
            contenders[label] = (submit, 1)
        window = (args.depth + 1) * len(manifest.partitions)
        contenders["pipelined, pipeline threads"] = (pipelined.submit, window)
        contenders["pipelined, artifact threads"] = (pipelined_own.submit, window)
        samples = _measure_contenders(contenders, feed, args.seconds, args.rounds)
        best_pipelined = max(
            ("pipelined, pipeline threads", "pipelined, artifact threads"),
            key=lambda k: spread(samples[k])["median"],
        )
        best_sequential = max(
            ("sequential, artifact threads", "sequential, pipeline threads"),
            key=lambda k: spread(samples[k])["median"],
        )
        best_one = max(
            (k for k in contenders if not k.startswith("pipelined")),
            key=lambda k: spread(samples[k])["median"],
        )
        rate = args.load * spread(samples[best_sequential])["median"]
        log(f"[pipeline] {name}: latency at {rate:.1f}/s")
        latency = {
            best_sequential: open_loop(contenders[best_sequential][0], feed, rate, args.requests),
            best_pipelined: open_loop(contenders[best_pipelined][0], feed, rate, args.requests),
        }
        for close in closers:
            close()
        pipelined.close()
        pipelined_own.close()
        rows.append(
            {
                "model": name,
                "batch": batch,
                "plan": plan,
                "stage_ms": stage_ms,
                "throughput": {k: spread(v) for k, v in samples.items()},
                "pipelined": best_pipelined,
                "speedup": ratio(samples, best_pipelined, best_sequential),
                "speedup_vs_best_one_at_a_time": ratio(samples, best_pipelined, best_one),
                "baseline": best_sequential,
                "best_one_at_a_time": best_one,
                "latency": latency,
                "load_fraction": args.load,
            }
        )
        log(f"[pipeline] {name}: {rows[-1]['throughput']} speedup {rows[-1]['speedup']}")
    return rows


def _stage_times(model: Any, feed: dict[str, Any], runs: int = 20) -> list[dict[str, Any]]:
    """Each partition's median ms per call, alone, after two warm-up calls (a mean of 20 with
    one slow first call in it had put a 0.3 ms stage at 1.0 ms)."""
    times: dict[str, list[float]] = {}
    for _ in range(2):
        model.run(feed)
    for _ in range(runs):
        for part, seconds in model.run_profiled(feed)[1]:
            times.setdefault(part, []).append(seconds)
    parts = {p.id: p for p in model.partitions}
    return [
        {
            "partition": part,
            "device": f"{parts[part].target}:{parts[part].device}",
            "ms": round(statistics.median(values) * 1000, 3),
        }
        for part, values in times.items()
    ]


def default_replica_devices(inventory: Any) -> list[str]:
    first = "cuda:0" if inventory.find("cuda") else "openvino:CPU"
    return [first, "onnxruntime:CPU"]


def section_replicas(args: argparse.Namespace, work: Path, inventory: Any) -> list[dict[str, Any]]:
    from parallel_build import load_with_threads, single_artifact

    import ai_vmm
    from ai_vmm.runtime.replicas import ReplicaSet

    zoo = _zoo()
    devices = (
        args.replica_devices.split(",")
        if args.replica_devices
        else default_replica_devices(inventory)
    )
    rows = []
    for name in args.models.split(","):
        source = zoo.build(name, work)
        feed = zoo.example_inputs(name, batch=args.batch)
        models, paths = {}, {}
        try:
            for device in devices:
                log(f"[replicas] {name}: compiling for {device}")
                started = time.perf_counter()
                options = {"precision": args.precision} if device.startswith("cuda") else {}
                paths[device] = path = single_artifact(
                    source, device, work / f"{name}-r-{device.replace(':', '-')}.vmm", **options
                )
                models[device] = ai_vmm.runtime.load(path)
                log(f"[replicas] {name}: {device} built in {time.perf_counter() - started:.0f} s")
        except ai_vmm.VmmError as exc:
            # One model that does not build is a row that says why; the others still run
            # (a GPU session's minutes are too few to lose every result to one failure).
            log(f"[replicas] {name}: not measured: {exc}")
            rows.append({"model": name, "devices": devices, "error": str(exc)})
            continue
        reference = models[devices[-1]].run(feed)
        for device, model in models.items():
            got = model.run(feed)
            for out, value in reference.items():
                diff = float(abs(got[out] - value).max())
                if diff > args.tolerance:
                    raise SystemExit(f"{name}: {device} output {out} differs by {diff}")
        # An accelerator fed by one thread waits on the host for every call (staging, the
        # synchronization): --accelerator-copies loads it N times, each copy an executor with
        # its own CUDA stream, so that one copy's host work overlaps another's GPU work.
        copies = {
            d: [m] + [ai_vmm.runtime.load(paths[d]) for _ in range(args.accelerator_copies - 1)]
            if not d.endswith(":CPU")
            else [m]
            for d, m in models.items()
        }
        alone = {d: ReplicaSet([(d, c) for c in copies[d]]) for d in models}
        # Beside an accelerator, the CPU replica leaves cores to the threads that feed it
        # (the accelerator's worker and the load generator): --cpu-threads.
        threads = _pair_cpu_threads(args.cpu_threads, devices)
        pair_models = {
            d: load_with_threads(paths[d], threads) if d.endswith(":CPU") and threads else m
            for d, m in models.items()
        }
        pair = ReplicaSet([(d, c) for d, m in pair_models.items() for c in [m, *copies[d][1:]]])
        pair.calibrate(feed, seconds=1.0)
        # What a deployment would do: keep the set only where it beats its best replica.
        # Windows of 0.5 s: with 1 s for the whole decision (0.17 s windows) the H200 run of
        # 2026-12-05 measured cuda:0 alone at 2255/s in the prune and at 3118/s right after.
        pruned = pair.prune(feed, seconds=3.0, alone=models)
        log(f"[replicas] {name}: prune {pruned}")
        contenders: dict[str, tuple[Any, int]] = {
            f"{d} alone": (s.submit, 2 * s.capacity + 1) for d, s in alone.items()
        }
        label = " + ".join(devices)
        contenders[label] = (pair.submit, 2 * pair.capacity + 1)
        before = {r["name"]: r["completed"] for r in pair.stats()["replicas"]}
        samples = _measure_contenders(contenders, feed, args.seconds, args.rounds)
        after = pair.stats()["replicas"]
        best_single = max(
            (k for k in contenders if k != label), key=lambda k: spread(samples[k])["median"]
        )
        rate = args.load * spread(samples[best_single])["median"]
        log(f"[replicas] {name}: latency at {rate:.1f}/s")
        latency = {
            best_single: open_loop(contenders[best_single][0], feed, rate, args.requests),
            label: open_loop(pair.submit, feed, rate, args.requests),
        }
        share = {r["name"]: r["completed"] - before.get(r["name"], 0) for r in after}
        total = sum(share.values()) or 1
        rows.append(
            {
                "model": name,
                "batch": args.batch,
                "devices": devices,
                "pair": label,
                "throughput": {k: spread(v) for k, v in samples.items()},
                "ratio_to_best_single": ratio(samples, label, best_single),
                "best_single": best_single,
                "ratio_to_first": ratio(samples, label, f"{devices[0]} alone"),
                "pair_cpu_threads": threads,
                "accelerator_copies": args.accelerator_copies,
                "shares": {k: round(v / total, 3) for k, v in share.items()},
                "stolen": {r["name"]: r["stolen"] for r in after},
                "latency": latency,
                "load_fraction": args.load,
                "prune": pruned,
            }
        )
        log(f"[replicas] {name}: {rows[-1]['throughput']} ratio {rows[-1]['ratio_to_best_single']}")
        for s in alone.values():
            s.close(close_models=False)
        pair.close()
        for device, model in pair_models.items():  # one prune swapped out (close: idempotent)
            if model is not models[device]:
                model.close()
        for extra in (c for d in copies for c in copies[d][1:]):
            extra.close()
    return rows


def _pair_cpu_threads(setting: str, devices: list[str]) -> int | None:
    """Threads of each CPU replica in the set. ``auto``: deploy's rule
    (``cpu_replica_threads``: the cores split between the CPU replicas, less one per
    accelerator for the thread that feeds it) and, beside an accelerator, one more for the load
    generator. A number; or ``none`` (as built)."""
    if setting == "none":
        return None
    if setting != "auto":
        return int(setting)
    from ai_vmm.runtime.replicas import cpu_replica_threads

    on_cpu = sum(d.endswith(":CPU") for d in devices)
    accelerators = len(devices) - on_cpu
    # deploy's rule (a core per accelerator's feeding thread), and one more here for the
    # load generator beside an accelerator.
    return cpu_replica_threads(os.cpu_count() or 1, on_cpu, accelerators, int(accelerators > 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections", default="auto", help="pipeline,replicas (default: what runs here)"
    )
    parser.add_argument("--models", default="resnet,transformer_encoder")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="per contender per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--requests", type=int, default=400, help="open-loop requests per contender"
    )
    parser.add_argument(
        "--load", type=float, default=0.8, help="stated load: x the baseline's throughput"
    )
    parser.add_argument(
        "--calibrate", type=int, default=1, help="plan rounds learning from measured stages"
    )
    parser.add_argument("--depth", type=int, default=2, help="pipeline queue depth per stage")
    parser.add_argument("--pipeline-devices", default="openvino:CPU,onnxruntime:CPU")
    parser.add_argument(
        "--replica-devices", default="", help="default: cuda:0 or openvino:CPU, + onnxruntime:CPU"
    )
    parser.add_argument(
        "--cpu-threads",
        default="auto",
        help="threads of CPU replicas in the set: auto (cores - 2 beside an accelerator, "
        "cores / replicas for CPU targets only), N, none",
    )
    parser.add_argument("--precision", default="fp32", help="precision of cuda replicas")
    parser.add_argument(
        "--accelerator-copies",
        type=int,
        default=1,
        help="executors per accelerator (each its own stream), alone and in the set",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="max abs difference between replicas"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, short, small")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "parallel.json")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "parallel.md")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.requests = 0.5, 1, 60
    inventory = _inventory()
    sections = args.sections.split(",") if args.sections != "auto" else ["pipeline", "replicas"]
    present = {d.key for d in inventory.devices}
    run: dict[str, Any] = {
        "machine": machine_label(inventory),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python scripts/bench_parallel.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "libraries": inventory.libraries,
    }
    with tempfile.TemporaryDirectory(prefix="ai-vmm-bench-parallel-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "pipeline" in sections:
            missing = [d for d in args.pipeline_devices.split(",") if d not in present]
            if missing:
                run["pipeline_skipped"] = f"{', '.join(missing)} not present here"
                log(f"[pipeline] skipped: {run['pipeline_skipped']}")
            else:
                run["pipeline"] = section_pipeline(args, work)
        if "replicas" in sections:
            run["replicas"] = section_replicas(args, work, inventory)
    run["load_after"] = [round(x, 2) for x in os.getloadavg()]
    stored: dict[str, Any] = {}
    if args.json.is_file():
        stored = json.loads(args.json.read_text())
    previous = stored.get(run["machine"], {})
    for section in ("pipeline", "pipeline_skipped", "replicas"):
        if section.split("_")[0] not in sections and section in previous:
            # A run of some sections keeps this machine's other sections from their own run.
            run[section] = previous[section]
            origin = previous.get("sections_from", {}).get(section.split("_")[0])
            run.setdefault("sections_from", {})[section.split("_")[0]] = origin or (
                f"{previous.get('date', '?')}, `{previous.get('command', '?')}`"
            )
    stored[run["machine"]] = run
    args.json.write_text(json.dumps(stored, indent=2) + "\n")
    args.out.write_text(render(stored, PIPELINE_GOAL, PAIR_GOAL))
    log(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
