"""The planner on synthetic graphs: no cycles, no fragmentation, optimal on small graphs."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from ai_vmm.planner import (
    Link,
    PlanGraph,
    PlanningError,
    PlanNode,
    PlanTensor,
    brute_force,
    evaluate,
    group_nodes,
    local_search,
    plan,
)

DEVICES = ["cpu", "gpu", "npu"]


def random_graph(seed: int, n_nodes: int, devices: list[str]) -> PlanGraph:
    """A random DAG (each node reads 1-2 earlier tensors) with made-up capabilities and costs."""
    rng = random.Random(seed)
    nodes, tensors = [], []
    for i in range(n_nodes):
        times = {d: rng.uniform(1e-5, 1e-3) for d in devices if d == "cpu" or rng.random() < 0.75}
        unsupported = {d: "made up" for d in devices if d not in times}
        nodes.append(PlanNode(f"n{i}", "Op", times, unsupported))
    consumers: dict[int, list[str]] = {i: [] for i in range(-1, n_nodes)}
    for i in range(n_nodes):
        for src in rng.sample(range(-1, i), k=min(i + 1, rng.choice([1, 1, 2]))):
            consumers[src].append(f"n{i}")
    for i in range(-1, n_nodes):
        producer = None if i == -1 else f"n{i}"
        reads = tuple(consumers[i])
        tensors.append(
            PlanTensor(
                f"t{i}",
                rng.choice([1e3, 1e5, 4e6]).__int__(),
                producer,
                reads,
                is_output=(i == n_nodes - 1),
            )
        )
    links = {
        ("cpu", "gpu"): Link(16.0, 10.0),
        ("cpu", "npu"): Link(8.0, 30.0),
        ("gpu", "npu"): Link(4.0, 50.0),
    }
    overhead = {"cpu": 5e-6, "gpu": 2e-5, "npu": 5e-5}
    return PlanGraph(nodes, tensors, devices, overhead, links, host="cpu")


def _partition_graph_is_acyclic(graph: PlanGraph, groups: list[list[str]]) -> bool:
    group_of = {name: i for i, group in enumerate(groups) for name in group}
    contracted = nx.DiGraph()
    contracted.add_nodes_from(range(len(groups)))
    for tensor in graph.tensors:
        if tensor.producer is None:
            continue
        for consumer in tensor.consumers:
            a, b = group_of[tensor.producer], group_of[consumer]
            if a != b:
                contracted.add_edge(a, b)
    return nx.is_directed_acyclic_graph(contracted)


@pytest.mark.parametrize("seed", range(30))
def test_optimal_against_brute_force(seed: int) -> None:
    devices = DEVICES[: 2 + seed % 2]
    graph = random_graph(
        seed, n_nodes=6 + seed % 5 if len(devices) == 3 else 8 + seed % 5, devices=devices
    )
    result = plan(graph)
    best_cost, _ = brute_force(graph)
    assert result.cost == pytest.approx(best_cost, rel=1e-9)
    assert _partition_graph_is_acyclic(graph, result.groups)
    assert sorted(n for g in result.groups for n in g) == sorted(n.name for n in graph.nodes)


def test_local_search_gap_on_small_graphs() -> None:
    """The heuristic used past EXACT_LIMIT, measured against the optimum on 30 graphs."""
    gaps = []
    for seed in range(20):
        graph = random_graph(100 + seed, n_nodes=8, devices=DEVICES[: 2 + seed % 2])
        heuristic = local_search(graph)
        cost = evaluate(graph, heuristic, group_nodes(graph, heuristic))[0]
        gaps.append(cost / brute_force(graph)[0] - 1)
    assert max(gaps) < 0.10, gaps
    assert sum(g < 1e-9 for g in gaps) >= 16, gaps


def test_no_fragmentation_when_one_device_runs_everything() -> None:
    nodes = [PlanNode(f"n{i}", "Op", {"cpu": 1e-4, "gpu": 1e-5}) for i in range(30)]
    tensors = [PlanTensor("in", 1000, None, ("n0",))]
    tensors += [PlanTensor(f"t{i}", 1000, f"n{i}", (f"n{i + 1}",)) for i in range(29)]
    tensors.append(PlanTensor("out", 1000, "n29", (), is_output=True))
    graph = PlanGraph(
        nodes,
        tensors,
        ["cpu", "gpu"],
        {"cpu": 0, "gpu": 1e-5},
        {("cpu", "gpu"): Link(16, 10)},
        host="cpu",
    )
    result = plan(graph)
    assert result.group_devices() == ["gpu"]


def test_a_cheap_island_pays_for_its_transfers_or_goes_home() -> None:
    """A chain on the GPU with one node the GPU can't run: it must go to the CPU (2 cuts);
    a node the GPU runs slowly but cheaply stays, since moving it costs two transfers."""
    times = [{"cpu": 1e-4, "gpu": 1e-5}] * 10
    times[4] = {"cpu": 1e-6}
    times[7] = {"cpu": 1e-6, "gpu": 3e-6}
    nodes = [
        PlanNode(f"n{i}", "Op", t, {} if "gpu" in t else {"gpu": "no kernel"})
        for i, t in enumerate(times)
    ]
    tensors = [PlanTensor("in", 40_000, None, ("n0",))]
    tensors += [PlanTensor(f"t{i}", 40_000, f"n{i}", (f"n{i + 1}",)) for i in range(9)]
    tensors.append(PlanTensor("out", 4000, "n9", (), is_output=True))
    graph = PlanGraph(
        nodes,
        tensors,
        ["cpu", "gpu"],
        {"cpu": 1e-6, "gpu": 1e-5},
        {("cpu", "gpu"): Link(16, 10)},
        host="cpu",
    )
    result = plan(graph)
    assert result.assignment["n4"] == "cpu" and result.assignment["n7"] == "gpu"
    assert result.group_devices() == ["gpu", "cpu", "gpu"]
    assert "cannot run on gpu (no kernel)" in result.explanation["n4"]
    # With 100x larger tensors the transfers cost more than the GPU saves on n0..n3.
    for tensor in graph.tensors[:-1]:
        tensor.nbytes *= 100
    assert plan(graph).group_devices() == ["cpu", "gpu"]


def test_priority_list_assigns_first_capable_device() -> None:
    graph = random_graph(3, 10, ["cpu", "gpu"])
    result = plan(graph, priority=["gpu", "cpu"])
    for node in graph.nodes:
        assert result.assignment[node.name] == ("gpu" if "gpu" in node.times else "cpu")
    assert _partition_graph_is_acyclic(graph, result.groups)


def test_parallel_branches_on_one_device_share_a_partition() -> None:
    # in -> a(gpu) -> c(cpu); in -> b(gpu) -> c: a and b have no path between them.
    nodes = [
        PlanNode("a", "Op", {"gpu": 1e-5}, {"cpu": "x"}),
        PlanNode("b", "Op", {"gpu": 1e-5}, {"cpu": "x"}),
        PlanNode("c", "Op", {"cpu": 1e-5}, {"gpu": "x"}),
    ]
    tensors = [
        PlanTensor("in", 10, None, ("a", "b")),
        PlanTensor("ta", 10, "a", ("c",)),
        PlanTensor("tb", 10, "b", ("c",)),
        PlanTensor("out", 10, "c", (), True),
    ]
    graph = PlanGraph(nodes, tensors, ["cpu", "gpu"], {}, {}, host="cpu")
    groups = group_nodes(graph, {"a": "gpu", "b": "gpu", "c": "cpu"})
    assert groups == [["a", "b"], ["c"]]


def test_cycle_is_never_created() -> None:
    # a(gpu) -> b(cpu) -> c(gpu), and a -> c: merging a and c would make a cycle with b.
    nodes = [PlanNode(n, "Op", {"cpu": 1.0, "gpu": 1.0}) for n in "abc"]
    tensors = [
        PlanTensor("in", 1, None, ("a",)),
        PlanTensor("ta", 1, "a", ("b", "c")),
        PlanTensor("tb", 1, "b", ("c",)),
        PlanTensor("out", 1, "c", (), True),
    ]
    graph = PlanGraph(nodes, tensors, ["cpu", "gpu"], {}, {}, host="cpu")
    groups = group_nodes(graph, {"a": "gpu", "b": "cpu", "c": "gpu"})
    assert groups == [["a"], ["b"], ["c"]]
    assert evaluate(graph, {"a": "gpu", "b": "cpu", "c": "gpu"}, groups)[0] == 3.0


def test_unrunnable_node_lists_reasons() -> None:
    nodes = [PlanNode("n0", "MaxUnpool", {}, {"gpu": "no kernel", "npu": "not translated"})]
    graph = PlanGraph(nodes, [PlanTensor("in", 1, None, ("n0",))], ["gpu", "npu"], {}, {})
    with pytest.raises(PlanningError, match=r"n0 \(MaxUnpool: gpu: no kernel, npu: not trans"):
        plan(graph)
