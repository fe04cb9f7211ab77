"""The bounded load test (``scripts/bench_serve.py`` with 2.5 s runs): stated load, 2x overload,
a high-priority tenant beside a flooding one, against ``vmmc serve`` in a subprocess.

What is asserted holds on any machine: nothing lost, nothing wrong, every refusal says when to
come back, overload is refused rather than queued without bound, and the high-priority tenant
is served while the flood is refused. The latency figures (p50/p99, deadlines met, the
objective) depend on the machine: they are printed here and recorded in docs/serve.md by the
benchmark, which the lead reruns on a quiet machine.
"""

from __future__ import annotations

from pathlib import Path

from conftest import REPO, real_model

from tests_support import load_module


def test_load_overload_and_priorities(tmp_path: Path) -> None:
    real_model("paraphrase_minilm_l3.onnx")
    real_model("bert_uncased_tokenizer.json")
    bench = load_module(REPO / "scripts" / "bench_serve.py", "bench_serve")
    results = bench.run_all(tmp_path, seconds=2.5)
    print(bench.markdown(results, 2.5, "pytest tests/serve/test_load.py -s"))
    rows = [*results.stated, *results.overload, *results.priority, *results.flat]
    for row in rows:
        assert row.lost == 0 and row.wrong == 0 and row.errors == 0, row
        assert row.refused_without_retry_after == 0, row
    (stated,) = results.stated
    assert stated.ok == stated.sent  # half the capacity: every request answered, all correct
    (overload,) = results.overload
    assert overload.refused > 0  # twice the capacity: refused, not queued without bound
    assert overload.ok > 0
    by_tenant = {row.tenant: row for row in results.priority}
    gold, free = by_tenant["gold"], by_tenant["free"]
    assert free.refused > 0
    # The high-priority tenant keeps its service while the other floods: on a quiet machine every
    # request (the docs/serve.md run); a test machine shared with other work stalls the event
    # loop itself now and then, so 90% here, and always far ahead of the flooding tenant.
    assert gold.ok >= 0.9 * gold.sent, gold
    assert gold.ok / gold.sent > free.ok / max(free.sent, 1)
    (flat,) = [row for row in results.flat if row.tenant == "flat"]
    assert flat.ok < gold.ok  # without its priority class the same tenant loses requests
