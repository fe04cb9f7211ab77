#!/usr/bin/env python
"""Does plain PyTorch survive what issue 18's threaded CUDA-graph test does beside our executor?

    python scripts/gpu_cublas_race.py [--work clear,empty,matmul] [--seconds 5] [--graphs]
    python scripts/gpu_cublas_race.py --products    # what CUBLAS_WORKSPACE_CONFIG=:0:0 costs

Three threads run matrix products, each on a CUDA stream of its own (with ``--graphs``: replay
a CUDA graph of them captured first), while a fourth does ``--work`` in a loop: ``clear``
(``torch._C._cuda_clearCublasWorkspaces()``, what torch.compile's CUDA-graph trees call before
each capture), ``empty`` (``torch.cuda.empty_cache()``), ``matmul`` (a product on the default
stream). No ai-vmm code runs: if this aborts with an illegal memory access, the race is
PyTorch's (the cuBLAS workspace a thread looked up is freed by another thread's clear before
its kernel runs, and ``empty_cache`` unmaps it). Prints one line: the work, the products run,
and whether every result was right; an abort ends the process (the caller reads its exit code).

``--products`` times a few matrix products instead (median of 5 rounds of 20), one line with
the process's ``CUBLAS_WORKSPACE_CONFIG``: run it with and without ``:0:0`` (no workspace, which
removes the race) for docs/gpu.md's cost table (``gpu_all.sh cublas-race`` does both).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

PRODUCTS = [
    (4096, 768, 768, "float16"),
    (4096, 768, 3072, "float16"),
    (32, 768, 768, "float16"),
    (8192, 8192, 8192, "float16"),
    (4096, 1024, 1024, "float32"),
]


def time_products() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    timed = []
    for m, k, n, dtype in PRODUCTS:
        a = torch.randn(m, k, device="cuda", dtype=getattr(torch, dtype))
        b = torch.randn(k, n, device="cuda", dtype=getattr(torch, dtype))
        for _ in range(5):
            a @ b
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        rounds = []
        for _ in range(5):
            start.record()
            for _ in range(20):
                a @ b
            end.record()
            end.synchronize()
            rounds.append(start.elapsed_time(end) / 20 * 1000)
        timed.append(f"{m}x{k}x{n} {dtype} {sorted(rounds)[2]:.1f} us")
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "default")
    print(f"CUBLAS_WORKSPACE_CONFIG={config}: " + "; ".join(timed), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="clear,empty,matmul")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--graphs", action="store_true")
    parser.add_argument("--products", action="store_true")
    args = parser.parse_args()
    if args.products:
        time_products()
        return
    work = set(args.work.split(","))
    stop = time.monotonic() + args.seconds
    failures: list[str] = []
    counts = [0, 0, 0]
    capture_lock = threading.Lock()  # one capture at a time (PyTorch's rule)

    def products(index: int) -> None:
        stream = torch.cuda.Stream()
        gen = torch.Generator(device="cpu").manual_seed(index)
        a = torch.randn(256, 384, generator=gen).cuda()
        b = torch.randn(384, 128, generator=gen).cuda()
        want = (a.double() @ b.double()).float().cpu()
        with torch.cuda.stream(stream):
            a, b = a.clone(), b.clone()
            graph = None
            if args.graphs:
                for _ in range(2):
                    a @ b
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                mode = "thread_local"
                with capture_lock, torch.cuda.graph(graph, stream=stream, capture_error_mode=mode):
                    out = a @ b
            while time.monotonic() < stop:
                if graph is not None:
                    graph.replay()
                    got = out.cpu()
                else:
                    got = (a @ b).cpu()
                counts[index] += 1
                if not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
                    failures.append(f"thread {index}: max error {(got - want).abs().max():.2e}")
                    return

    def other() -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            if "clear" in work:
                torch._C._cuda_clearCublasWorkspaces()
            if "empty" in work:
                torch.cuda.empty_cache()
            if "matmul" in work:
                a = torch.full((512, 512), float(n % 7), device="cuda")
                (a @ a).sum().item()

    torch.backends.cuda.matmul.allow_tf32 = False
    threads = [threading.Thread(target=products, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=other))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    print(
        f"work {sorted(work)} graphs={args.graphs}: {sum(counts)} products, "
        f"{failures or 'all right'}",
        flush=True,
    )


if __name__ == "__main__":
    main()
