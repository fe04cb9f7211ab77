"""The cuBLAS workspace guard (runtime/executors/cuda_workspaces.py), with a stand-in for
PyTorch's clear call: no GPU needed. What it guards against is PyTorch's own race (a product
between its workspace lookup and its launch while another thread clears and empties the cache,
scripts/gpu_cublas_race.py); here the stand-in clear records whether any run was inside."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from ai_vmm.runtime.executors import cuda_workspaces


def _torch_with_clear(clear: Any) -> Any:
    return SimpleNamespace(_C=SimpleNamespace(_cuda_clearCublasWorkspaces=clear))


def test_a_clear_never_overlaps_a_run_outside_a_graph() -> None:
    inside = 0
    count_lock = threading.Lock()
    overlaps: list[int] = []
    clears = 0
    stop = threading.Event()

    def clear() -> None:
        nonlocal clears
        clears += 1
        with count_lock:
            if inside:
                overlaps.append(inside)
        time.sleep(0.0005)  # a run that started now would be caught by the next check
        with count_lock:
            if inside:
                overlaps.append(inside)

    def run() -> None:
        nonlocal inside
        while not stop.is_set():
            with cuda_workspaces.shared():
                with count_lock:
                    inside += 1
                time.sleep(0.0002)  # between the workspace lookup and the launch
                with count_lock:
                    inside -= 1

    runners = [threading.Thread(target=run) for _ in range(4)]
    for thread in runners:
        thread.start()
    torch = _torch_with_clear(clear)
    for _ in range(200):
        cuda_workspaces.clear_workspaces(torch)
    stop.set()
    for thread in runners:
        thread.join()
    assert clears == 200
    assert overlaps == []


def _first_run(order: list[str]) -> tuple[threading.Thread, threading.Event]:
    """A thread inside ``shared`` until the returned event is set; it then appends "first run"
    to ``order``. Returns once it is inside."""
    inside, release = threading.Event(), threading.Event()

    def run() -> None:
        with cuda_workspaces.shared():
            inside.set()
            release.wait(5)
            order.append("first run")

    thread = threading.Thread(target=run)
    thread.start()
    assert inside.wait(5)
    return thread, release


def test_a_waiting_clear_goes_before_runs_that_come_after_it() -> None:
    order: list[str] = []
    clear_started = threading.Event()

    def clearer() -> None:
        clear_started.set()
        cuda_workspaces.clear_workspaces(_torch_with_clear(lambda: order.append("clear")))

    def later_run() -> None:
        with cuda_workspaces.shared():
            order.append("later run")

    first, release_first = _first_run(order)
    threads = [first, threading.Thread(target=clearer)]
    threads[1].start()
    assert clear_started.wait(5)
    time.sleep(0.05)  # the clear is now waiting for the first run
    threads.append(threading.Thread(target=later_run))
    threads[2].start()
    time.sleep(0.05)
    assert order == []  # neither the clear nor the later run got in beside the first run
    release_first.set()
    for thread in threads:
        thread.join(5)
    assert order == ["first run", "clear", "later run"]


def test_runs_share_and_a_pytorch_without_the_call_is_left_alone() -> None:
    # Runs share: a second holder gets in beside a first that has not left (in another thread,
    # within a second), and a PyTorch without the clear call takes no exclusive turn (it
    # returns at once while a run is inside, where a real clear would wait for it).
    order: list[str] = []
    second_inside = threading.Event()

    def second() -> None:
        with cuda_workspaces.shared():
            second_inside.set()

    holder, release_first = _first_run(order)
    sharer = threading.Thread(target=second)
    sharer.start()
    assert second_inside.wait(1)
    started = time.perf_counter()
    cuda_workspaces.clear_workspaces(SimpleNamespace(_C=SimpleNamespace()))  # no such call
    assert time.perf_counter() - started < 0.5
    release_first.set()
    holder.join(5)
    sharer.join(5)
    assert order == ["first run"] and not holder.is_alive() and not sharer.is_alive()
