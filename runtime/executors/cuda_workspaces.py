"""PyTorch's cuBLAS workspaces, cleared without racing our own matrix products.

A CUDA graph bakes in the cuBLAS/cuBLASLt workspace its products used. So that workspace lives
as long as the graph, ``executors.cuda.capture`` drops PyTorch's cached workspaces
(``torch._C._cuda_clearCublasWorkspaces()``, as torch.compile's CUDA-graph trees do) before a
capture, so that the capture allocates a fresh one inside the graph's own memory pool, and
after it.

That clear is process-wide, and PyTorch does not guard it against other threads: a thread
that has looked up its workspace and not yet launched its product can find the memory freed
under it, and once ``torch.cuda.empty_cache()`` returns that memory to the driver the product
is an illegal memory access. Plain PyTorch does this with no ai-vmm code at all (three threads'
products beside a fourth that clears and empties the cache: ``scripts/gpu_cublas_race.py``,
aborted at once on an H100, 2026-12-06).

Our own executors never meet it: each of their runs outside a graph holds :func:`shared`, and
:func:`clear_workspaces` waits until none is inside one (replays need no guard: their workspace
is the graph's own). Other code's products in other threads are as exposed to our clear as to
torch.compile's; ``CUBLAS_WORKSPACE_CONFIG=:0:0`` (no workspace) removes the hazard for the
whole process, but small products get about 4x slower (12 against 48 us for 4096x768x768
in fp16 on an H100; docs/gpu.md), so we do not set it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any


class _SharedExclusive:
    """Many holders of ``shared`` at once, or one of ``exclusive`` (a waiting exclusive holder
    goes first: new shared holders wait behind it). Not reentrant: a thread inside ``shared``
    must not ask for ``exclusive``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_GUARD = _SharedExclusive()


def shared() -> contextlib.AbstractContextManager[None]:
    """Hold around a run of ours outside a CUDA graph (it looks up cuBLAS workspaces)."""
    return _GUARD.shared()


def clear_workspaces(torch: Any) -> None:
    """Drop PyTorch's cached cuBLAS workspaces once no run of ours is between looking one up
    and launching on it (a no-op where this PyTorch has no such call)."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is None:
        return
    with _GUARD.exclusive():
        clear()
