"""Stress trials behind docs/reliability.md: concurrent writers, concurrent compiles, killed ones.

    python scripts/reliability.py                 # run the trials, rewrite the table in the doc
    python scripts/reliability.py --code /tmp/old # the same trials against another ai_vmm tree
                                                  # (a directory importable as ``ai_vmm``)

Every worker is its own process (``--code`` becomes its ``PYTHONPATH``), so the same trials
measure today's code and older code alike. Results go to stdout as a Markdown table; without
``--code`` the table also replaces the part of docs/reliability.md between its two markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"

SETUP = """
import json, sys
from pathlib import Path
import numpy as np, onnx
from onnx import TensorProto, helper as oh, numpy_helper
from ai_vmm.runtime.artifact import Manifest, PartitionSpec, TensorSpec, sha256_file
root, k = Path(sys.argv[1]), int(sys.argv[2])
payload = root / f"payload{k}"
payload.mkdir()
inits = [numpy_helper.from_array(np.full((1, 4), float(k), np.float32), "k"),
         numpy_helper.from_array(np.full(200_000, k, np.float32), "ballast")]
graph = oh.make_graph([oh.make_node("Mul", ["x", "k"], ["y"])], "scale",
    [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
    [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), payload / "m.onnx")
part = PartitionSpec("p0", "onnxruntime", "CPU", "p0/m.onnx",
    {"p0/m.onnx": sha256_file(payload / "m.onnx")}, ("x",), ("y",))
spec = (TensorSpec("x", "float32", (1, 4)),), (TensorSpec("y", "float32", (1, 4)),)
(root / f"manifest{k}.json").write_text(json.dumps(Manifest(*spec, (part,), {}, {}, {}).to_json()))
"""
WRITER = """
import json, sys
from pathlib import Path
from ai_vmm.runtime.artifact import Manifest, write_artifact
root, out, k, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
manifest = Manifest.from_json(json.loads((root / f"manifest{k}.json").read_text()))
for _ in range(rounds):
    write_artifact(out, manifest, {"writer": k}, {"p0": root / f"payload{k}"})
"""
READER = """
import json, re, sys, time
from pathlib import Path
import numpy as np
from ai_vmm.runtime import load
out, stop = Path(sys.argv[1]), Path(sys.argv[2])
counts = {"loaded": 0, "wrong numbers": 0}
x = np.ones((1, 4), np.float32)
while not stop.exists():
    if not out.exists():
        time.sleep(0.002)
        continue
    try:
        model = load(out)
        y = model.run({"x": x})["y"]
        getattr(model, "close", lambda: None)()
        ok = any(np.array_equal(y, x * k) for k in range(1, 64))
        counts["loaded" if ok else "wrong numbers"] += 1
    except Exception as exc:
        text = re.sub(r"/\\S+", "PATH", " ".join(str(exc).split()))
        key = f"{type(exc).__name__}: {text[:70]}"
        counts[key] = counts.get(key, 0) + 1
print(json.dumps(counts))
"""
FINAL = """
import sys, numpy as np
from ai_vmm.runtime import load
m = load(sys.argv[1]); print(m.run({"x": np.ones((1, 4), np.float32)})["y"].ravel()[0])
"""


def _env(code: Path | None, tmp: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return env


def _py(code: str, *args: Any, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True
    )


def _debris(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def writers_trial(code: Path | None, name: str, writers: int, rounds: int) -> dict[str, Any]:
    """``writers`` processes write ``rounds`` artifacts each to ``out/name``; a reader loads."""
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp_name:
        tmp = Path(tmp_name)
        env = _env(code, tmp)
        for k in range(1, writers + 1):
            done = _py(SETUP, tmp, k, env=env)
            if done.returncode:
                raise RuntimeError(done.stderr)
        (tmp / "out").mkdir()
        out, stop = tmp / "out" / name, tmp / "stop"
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(out), str(stop)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        running = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(tmp), str(out), str(k), str(rounds)],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(1, writers + 1)
        ]
        for process in running:
            process.communicate()
        stop.touch()
        reads = json.loads(reader.communicate()[0] or "{}")
        final = _py(FINAL, out, env=env)
        return {
            "writers failed": sum(1 for p in running if p.returncode),
            "reads": reads,
            "final loads": final.returncode == 0,
            "debris": _debris(tmp / "out", {name}),
        }


def compiles_trial(code: Path | None, processes: int) -> dict[str, Any]:
    """``processes`` concurrent ``vmmc compile`` to one ``.vmm.zip``."""
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp_name:
        tmp = Path(tmp_name)
        env = _env(code, tmp)
        _py(SETUP, tmp, 1, env=env)
        model = tmp / "payload1" / "m.onnx"
        (tmp / "out").mkdir()
        out = tmp / "out" / "same.vmm.zip"
        command = [sys.executable, "-m", "ai_vmm.cli", "compile", str(model), "-o", str(out)]
        command += ["--no-tune", "--target", "onnxruntime:CPU"]
        running = [
            subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            for _ in range(processes)
        ]
        for process in running:
            process.communicate()
        final = _py(FINAL, out, env=env)
        return {
            "failed": sum(1 for p in running if p.returncode),
            "final loads": final.returncode == 0,
            "debris": _debris(tmp / "out", {"same.vmm.zip"}),
        }


def killed_trial(code: Path | None, stage: str) -> dict[str, Any]:
    """SIGKILL a compile at ``stage``; age what it left; does the next compile sweep it?"""
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "tmp").mkdir()
        env = _env(code, tmp / "tmp")
        _py(SETUP, tmp, 1, env=env)
        model = tmp / "payload1" / "m.onnx"
        command = [sys.executable, "-m", "ai_vmm.cli", "compile", str(model)]
        command += ["-o", str(tmp / "out" / "m.vmm"), "--no-tune", "--target", "onnxruntime:CPU"]
        command += ["--cache-dir", str(tmp / "cache")]
        victim = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert victim.stderr is not None
        for line in victim.stderr:
            if stage in line:
                victim.send_signal(signal.SIGKILL)
                break
        victim.wait()
        places = [tmp / "tmp", tmp / "out", tmp / "cache"]
        left = [p / n for p in places if p.exists() for n in os.listdir(p) if "ai-vmm" in n]
        then = time.time() - 7200
        for path in left:
            os.utime(path, (then, then))
        subprocess.run(command, env=env, capture_output=True, check=False)
        after = [p for p in left if p.exists()]
        return {"left": len(left), "after next compile": len(after)}


def table(code: Path | None, trials: int) -> str:
    rows = ["| trial | runs | what happened |", "|---|---|---|"]
    for name in ("shared.vmm.zip", "shared.vmm"):
        results = [writers_trial(code, name, 4, 8) for _ in range(trials)]
        bad_final = sum(1 for r in results if not r["final loads"])
        crashed = sum(r["writers failed"] for r in results)
        reads: dict[str, int] = {}
        for r in results:
            for key, count in r["reads"].items():
                reads[key] = reads.get(key, 0) + count
        debris = sum(len(r["debris"]) for r in results)
        rows.append(
            f"| 4 writer processes x 8 `write_artifact` to one `{name}`, one reader process "
            f"loading and running it throughout | {trials} | {crashed} of {4 * trials} writers "
            f"failed; final artifact broken in {bad_final} of {trials}; reader: "
            f"{', '.join(f'{v} {k}' for k, v in sorted(reads.items()))}; "
            f"{debris} files left beside it |"
        )
    compiles = [compiles_trial(code, 12) for _ in range(max(1, trials // 2))]
    rows.append(
        f"| 12 concurrent `vmmc compile -o same.vmm.zip` | {len(compiles)} | "
        f"{sum(c['failed'] for c in compiles)} of {12 * len(compiles)} failed; final zip broken "
        f"in {sum(1 for c in compiles if not c['final loads'])}; "
        f"{sum(len(c['debris']) for c in compiles)} files left beside it |"
    )
    for stage in ("verifying against the reference", "writing"):
        killed = [killed_trial(code, stage) for _ in range(max(1, trials // 2))]
        rows.append(
            f"| `vmmc compile` SIGKILLed at '{stage}', leftovers aged 2 h, compiled again | "
            f"{len(killed)} | {sum(k['left'] for k in killed)} leftovers; "
            f"{sum(k['after next compile'] for k in killed)} remained after the next compile |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, help="another ai_vmm tree to measure instead")
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    started = time.perf_counter()
    body = table(args.code, args.trials)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = (
        f"\n\n`python scripts/reliability.py --trials {args.trials}` on {platform.node()}, "
        f"{os.cpu_count()} cores, load average {load:.1f}, {time.perf_counter() - started:.0f} s."
    )
    print(body + note)
    if args.code is None:
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{BEGIN}\n{body}{note}\n{END}{tail}")


if __name__ == "__main__":
    main()
