"""``vmmc bench --suite zoo``: every zoo model against the baselines; regenerates the docs.

The zoo lives in ``models/zoo.py`` of the repository (it is not installed), so the suite runs
from the repository root, or with ``--zoo PATH`` pointing at that file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ai_vmm.bench import BenchSettings
from ai_vmm.bench_report import Say, bench, environment, markdown, plot
from ai_vmm.runtime.errors import InputError

CACHE = Path.home() / ".cache" / "ai-vmm" / "zoo"


def load_module(path: Path, name: str) -> ModuleType:
    """Import a file that is not in an installed package (``models/``, ``scripts/``) as ``name``.

    The module is registered in ``sys.modules`` under ``name`` (spawned worker processes unpickle
    by module name) and imported once per process. The one helper for it: the benchmarks, the
    scripts and the tests all load ``models/*.py`` this way.

    Raises:
        InputError: the file is missing.
    """
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise InputError(f"{path} is missing: run from the repository root")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_zoo(path: Path) -> ModuleType:
    if not path.is_file():
        raise InputError(
            f"--suite zoo needs the model zoo at {path}: run from the repository root or pass "
            f"--zoo PATH/models/zoo.py"
        )
    return load_module(path, "ai_vmm_zoo")


def _prefixed(say: Say, prefix: str) -> Say:
    return lambda message: say(f"{prefix}: {message}")


def run_zoo(
    zoo_path: Path,
    out: Path,
    settings: BenchSettings,
    baselines: list[str],
    names: list[str] | None,
    command: str,
    say: Say,
    on_result: Any = None,
) -> list[dict[str, Any]]:
    """Benchmark each zoo model; write ``out`` (Markdown), its ``.png`` and ``.json``."""
    zoo = load_zoo(zoo_path)
    chosen = names or list(zoo.ZOO)
    unknown = sorted(set(chosen) - set(zoo.ZOO))
    if unknown:
        raise InputError(f"not in the zoo: {', '.join(unknown)} (zoo: {', '.join(zoo.ZOO)})")
    results = []
    for index, name in enumerate(chosen, 1):
        say(f"[{index}/{len(chosen)}] {name}: building")
        path = zoo.build(name, CACHE)
        feed = zoo.example_inputs(name, batch=settings.batch)
        module = zoo.build_module(name) if "torch" in baselines else None
        result = bench(
            path,
            baselines=baselines,
            settings=settings,
            feed=feed,
            torch_module=module,
            name=name,
            say=_prefixed(say, name),
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    env = environment()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(results, env, command) + partition_overhead_note(out.parent))
    plot(results, out.with_suffix(".png"))
    out.with_suffix(".json").write_text(
        json.dumps({"environment": env, "results": results}, indent=2) + "\n"
    )
    return results


def partition_overhead_note(docs: Path) -> str:
    """The per-boundary overhead line for the generated page, from ``partition-overhead.md``.

    ``scripts/bench_partition.py`` measures what a partition boundary costs and writes that
    file with a ``Summary:`` line; the zoo page repeats the line with a link (issue 5 asks for
    the per-boundary overhead in ``docs/performance.md``). ``""`` when there is no such file.
    """
    path = docs / "partition-overhead.md"
    if not path.is_file():
        return ""
    for line in path.read_text().splitlines():
        if line.startswith("Summary: "):
            return (
                "\nPartition boundary overhead ([partition-overhead.md](partition-overhead.md), "
                "`scripts/bench_partition.py`, its own run): "
                + line.removeprefix("Summary: ")
                + "\n"
            )
    return ""
