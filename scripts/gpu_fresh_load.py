"""Does a cuda artifact load and run in a fresh process? (issue 18: the crash check's child
processes segfaulted before their first step on an H200 with torch 2.11.)

    python scripts/gpu_fresh_load.py OUT_DIR

Compiles the bundled CNN for ``cuda:0``, then in fresh processes with ``-X faulthandler``:
(1) the raw AOTInductor package (``torch._inductor.aoti_load_package``) called once, (2) the
same with CUDA-graph capture as the executor does it, (3) ``ai_vmm.runtime.load`` and a call.
Prints each one's exit status and the last lines it wrote (a segfault's Python stack).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = {
    "raw package": (
        "import sys, numpy as np, torch; r = torch._inductor.aoti_load_package(sys.argv[1]);"
        "x = [torch.from_numpy(a).cuda() for a in np.load(sys.argv[3]).values()];"
        "print(r(x)[0].shape); torch.cuda.synchronize(); print('ok')"
    ),
    "runtime load": (
        "import sys, numpy as np, ai_vmm.runtime as rt; m = rt.load(sys.argv[2]);"
        "feed = dict(np.load(sys.argv[3]));"
        "print({k: v.shape for k, v in m.run(feed).items()}); print('ok')"
    ),
}


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    import ai_vmm

    result = ai_vmm.compile(
        REPO / "models" / "bundled" / "tiny_cnn.onnx", "cuda:0", out / "cnn.vmm", force=True
    )
    entry = next(p for p in (out / "cnn.vmm").rglob("*.pt2"))
    print("compiled:", result.report["chosen"], entry, flush=True)
    failed = 0
    for name, code in STEPS.items():
        proc = subprocess.run(
            [
                sys.executable,
                "-X",
                "faulthandler",
                "-c",
                code,
                str(entry),
                str(out / "cnn.vmm"),
                str(REPO / "models" / "bundled" / "tiny_cnn_input.npz"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        print(f"== {name}: exit {proc.returncode}\n{tail}", flush=True)
        failed += proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
