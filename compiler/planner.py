"""Partition planning: assign every node to a device, then group nodes into partitions.

The planner works on a ``PlanGraph``: nodes in topological order, each with the devices that can
run it (and why the others cannot) and an estimated time per device; tensors with their size,
producer and consumers. It minimizes the estimated end-to-end latency of a sequential run:

    sum of node times on their devices
    + for every tensor produced on one device and read on another: bytes / link bandwidth
      + link latency (once per consuming device)
    + per partition: the device's per-call overhead

subject to capability and to an acyclic partition graph. Planning is tagging: ``plan`` only
assigns devices and groups; ``ai_vmm.outline`` cuts the subgraphs.

Search: when the assignments to consider are few (``EXACT_LIMIT``), a branch-and-bound search
finds the optimum. Otherwise: start from each device taking everything it can run (the rest on
their cheapest capable device), improve by local moves (one node, one whole group of same-device
neighbours, or two adjacent nodes, to another capable device) while the objective drops, and
keep the best start. Groups are maximal sets of same-device nodes merged along edges when the
merge keeps the partition graph acyclic. ``brute_force`` enumerates every assignment (tests).

Objective ``"throughput"`` (``plan(..., objective="throughput")``, ``ai_vmm.planner_throughput``):
for a plan whose requests are
pipelined (``ai_vmm.runtime.pipelined``), a request leaves every ``max over devices`` of the
device's work per request (its nodes, its partitions' overheads, the tensors copied into it:
``stage_loads``); the planner minimizes that bottleneck, with the sequential latency as a tie
break (``THROUGHPUT_LATENCY_WEIGHT``). Its starts add balanced contiguous splits of the
topological order (``_segment_starts``); its local moves evaluate the whole objective.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx


@dataclass(frozen=True)
class Link:
    """Moving a tensor between two devices: ``bytes / bandwidth + latency``."""

    bandwidth_gbps: float
    latency_us: float

    def seconds(self, nbytes: int) -> float:
        return nbytes / (self.bandwidth_gbps * 1e9) + self.latency_us * 1e-6


@dataclass
class PlanNode:
    name: str
    op_type: str
    times: dict[str, float]
    """Estimated seconds on each device that can run the node."""
    unsupported: dict[str, str] = field(default_factory=dict)
    """Device -> why it cannot run the node."""


@dataclass
class PlanTensor:
    name: str
    nbytes: int
    producer: str | None
    """Producing node, or ``None`` for a graph input (it lives on the host)."""
    consumers: tuple[str, ...]
    is_output: bool = False


@dataclass
class PlanGraph:
    nodes: list[PlanNode]
    """In topological order."""
    tensors: list[PlanTensor]
    devices: list[str]
    overhead: dict[str, float]
    """Per-partition call overhead of each device, seconds."""
    links: dict[tuple[str, str], Link]
    """Link between two devices (either order); a missing pair means same memory (free)."""
    host: str = ""
    """The device where graph inputs and outputs live (transfers to/from it are counted)."""

    def link(self, a: str, b: str) -> Link | None:
        return self.links.get((a, b)) or self.links.get((b, a))


@dataclass
class Plan:
    assignment: dict[str, str]
    groups: list[list[str]]
    """Partitions: lists of node names, in an order that respects dependencies."""
    cost: float
    breakdown: dict[str, float]
    explanation: dict[str, str]

    def group_devices(self) -> list[str]:
        return [self.assignment[g[0]] for g in self.groups]

    def to_json(self) -> dict[str, Any]:
        return {
            "estimated_ms": round(self.cost * 1000, 4),
            "breakdown_ms": {k: round(v * 1000, 4) for k, v in self.breakdown.items()},
            "partitions": [{"device": self.assignment[g[0]], "nodes": len(g)} for g in self.groups],
        }


OBJECTIVES = ("latency", "throughput")

EXACT_LIMIT = 20_000
"""Above this many capable assignments, the planner uses local search instead of exact search."""


class PlanningError(Exception):
    """No device can run some node (the message lists them with each device's reason)."""


def _graph(plan_graph: PlanGraph) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(node.name for node in plan_graph.nodes)
    for tensor in plan_graph.tensors:
        if tensor.producer is not None:
            for consumer in tensor.consumers:
                if consumer != tensor.producer:
                    graph.add_edge(tensor.producer, consumer)
    return graph


def group_nodes(
    plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph | None = None
) -> list[list[str]]:
    """Merge same-device nodes into as few partitions as keep the partition graph acyclic.

    First along edges in topological order: two groups on one device merge when no path leaves
    one and comes back into the other through a third group. Then same-device groups with no
    path between them at all (parallel branches) merge too. The result lists each partition's
    nodes in topological order, partitions in an order that respects their dependencies.
    """
    order = [node.name for node in plan_graph.nodes]
    index = {name: i for i, name in enumerate(order)}
    succ: dict[int, set[int]] = {i: set() for i in range(len(order))}
    for tensor in plan_graph.tensors:
        if tensor.producer is None:
            continue
        for consumer in tensor.consumers:
            if consumer != tensor.producer and consumer in index:
                succ[index[tensor.producer]].add(index[consumer])
    pred: dict[int, set[int]] = {i: set() for i in succ}
    for u, targets in succ.items():
        for v in targets:
            pred[v].add(u)
    members: dict[int, list[int]] = {i: [i] for i in succ}
    group_of = list(range(len(order)))
    device = [assignment[name] for name in order]

    def reaches(start: set[int], goal: int, skip: int) -> bool:
        seen = set(start)
        stack = list(start)
        while stack:
            g = stack.pop()
            if g == goal:
                return True
            for nxt in succ[g]:
                if nxt != skip and nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    def merge(a: int, b: int) -> bool:
        if a == b:
            return True
        if reaches(succ[a] - {b}, b, a) or reaches(succ[b] - {a}, a, b):
            return False
        for node in members[b]:
            group_of[node] = a
        members[a] += members.pop(b)
        for s in succ.pop(b):
            pred[s].discard(b)
            if s != a:
                succ[a].add(s)
                pred[s].add(a)
        for p in pred.pop(b):
            succ[p].discard(b)
            if p != a:
                pred[a].add(p)
                succ[p].add(a)
        succ[a].discard(a)
        pred[a].discard(a)
        return True

    initial = {u: sorted(targets) for u, targets in succ.items()}
    for u in range(len(order)):
        for v in initial[u]:
            if device[u] == device[v]:
                merge(group_of[u], group_of[v])
    changed = True
    while changed:
        changed = False
        for a, b in itertools.combinations(sorted(members), 2):
            if a not in members or b not in members or device[a] != device[b]:
                continue
            if reaches({a}, b, -1) or reaches({b}, a, -1):
                continue
            changed = merge(a, b) or changed
    ranked = nx.DiGraph()
    ranked.add_nodes_from(members)
    ranked.add_edges_from((u, v) for u, targets in succ.items() for v in targets)
    ordered = nx.lexicographical_topological_sort(ranked, key=lambda g: min(members[g]))
    return [[order[i] for i in sorted(members[g])] for g in ordered]


def copies(plan_graph: PlanGraph, assignment: dict[str, str]) -> Iterator[tuple[str, float]]:
    """Each copy of a tensor from the device that makes it to another that reads it (the host
    reads the outputs): the reading device and the link's seconds."""
    for tensor in plan_graph.tensors:
        source = assignment[tensor.producer] if tensor.producer else plan_graph.host
        readers = {assignment[c] for c in tensor.consumers if c in assignment}
        if tensor.is_output and plan_graph.host:
            readers.add(plan_graph.host)
        for reader in readers - {source}:
            link = plan_graph.link(source, reader)
            if link is not None:
                yield reader, link.seconds(tensor.nbytes)


def evaluate(
    plan_graph: PlanGraph, assignment: dict[str, str], groups: list[list[str]]
) -> tuple[float, dict[str, float]]:
    """The objective of an assignment: compute + transfers + per-partition overhead."""
    by_name = {node.name: node for node in plan_graph.nodes}
    compute = sum(by_name[n].times[assignment[n]] for n in assignment)
    transfer = sum(seconds for _, seconds in copies(plan_graph, assignment))
    overhead = sum(plan_graph.overhead.get(assignment[g[0]], 0.0) for g in groups)
    return compute + transfer + overhead, {
        "compute": compute,
        "transfer": transfer,
        "overhead": overhead,
    }


def _check_capable(plan_graph: PlanGraph) -> None:
    stuck = [node for node in plan_graph.nodes if not node.times]
    if stuck:
        details = "; ".join(
            f"{n.name} ({n.op_type}: "
            + ", ".join(f"{d}: {r}" for d, r in sorted(n.unsupported.items()))
            + ")"
            for n in stuck[:5]
        )
        raise PlanningError(
            f"no available device can run {len(stuck)} node(s): {details}"
            + (" ..." if len(stuck) > 5 else "")
        )


def plan(
    plan_graph: PlanGraph, priority: Sequence[str] | None = None, objective: str = "latency"
) -> Plan:
    """Assign devices and group partitions.

    With ``priority`` (the ``--target a:B,c:D`` list), each node goes to the first listed device
    that can run it, as OpenVINO's HETERO plugin does; without it, the cost model decides.
    ``objective``: ``"latency"`` (one request at a time) or ``"throughput"`` (requests
    pipelined through the partitions: the busiest device per request is minimized).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    if objective == "throughput" and not priority:
        from ai_vmm.planner_throughput import plan_throughput

        return plan_throughput(plan_graph)
    _check_capable(plan_graph)
    graph = _graph(plan_graph)
    if priority:
        assignment = {
            node.name: next(d for d in [*priority, *node.times] if d in node.times)
            for node in plan_graph.nodes
        }
        return _finished(
            plan_graph, assignment, graph, evaluate, "first in the --target priority list"
        )
    exact = _search_space(plan_graph) <= EXACT_LIMIT
    assignment = _exact(plan_graph, graph) if exact else local_search(plan_graph, graph)
    return _finished(plan_graph, assignment, graph, evaluate, "lowest estimated end-to-end latency")


def _search_space(plan_graph: PlanGraph) -> int:
    """How many assignments there are: the product of each node's capable devices."""
    space = 1
    for node in plan_graph.nodes:
        space *= len(node.times)
    return space


def _finished(
    plan_graph: PlanGraph,
    assignment: dict[str, str],
    graph: nx.DiGraph,
    score: Any,
    rule: str,
) -> Plan:
    """Group an assignment, cost it with ``score`` and explain every node by ``rule``."""
    groups = group_nodes(plan_graph, assignment, graph)
    cost, breakdown = score(plan_graph, assignment, groups)
    explanation = {node.name: _why(node, assignment[node.name], rule) for node in plan_graph.nodes}
    return Plan(assignment, groups, cost, breakdown, explanation)


def _why(node: PlanNode, device: str, rule: str) -> str:
    others = [d for d in node.times if d != device]
    text = f"{rule}; est. {node.times[device] * 1e6:.1f} us here"
    if others:
        text += " vs " + ", ".join(f"{d} {node.times[d] * 1e6:.1f} us" for d in others)
    if node.unsupported:
        text += "; cannot run on " + ", ".join(
            f"{d} ({r})" for d, r in sorted(node.unsupported.items())
        )
    return text


def _starts(plan_graph: PlanGraph) -> list[dict[str, str]]:
    """Each device taking everything it can run; the rest on their cheapest capable device."""
    return [
        {
            n.name: device if device in n.times else min(n.times, key=n.times.__getitem__)
            for n in plan_graph.nodes
        }
        for device in plan_graph.devices
    ]


def local_search(plan_graph: PlanGraph, graph: nx.DiGraph | None = None) -> dict[str, str]:
    """The heuristic: improve every start by local moves; keep the best result."""
    graph = graph if graph is not None else _graph(plan_graph)
    best: tuple[float, dict[str, str]] = (float("inf"), {})
    for start in _starts(plan_graph):
        assignment = _improve(plan_graph, start, graph)
        cost = evaluate(plan_graph, assignment, group_nodes(plan_graph, assignment, graph))[0]
        if cost < best[0]:
            best = (cost, assignment)
    return best[1]


def _transfer_of(plan_graph: PlanGraph, tensor: PlanTensor, assignment: dict[str, str]) -> float:
    source = assignment[tensor.producer] if tensor.producer else plan_graph.host
    readers = {assignment[c] for c in tensor.consumers if c in assignment}
    if tensor.is_output and plan_graph.host:
        readers.add(plan_graph.host)
    total = 0.0
    for reader in readers - {source}:
        link = plan_graph.link(source, reader)
        if link is not None:
            total += link.seconds(tensor.nbytes)
    return total


def _improve(
    plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph
) -> dict[str, str]:
    """Move one node, one group or two adjacent nodes to another device while the cost drops.

    A move's compute and transfer change is computed locally; only a move whose local change
    could be outweighed by saved partition overheads pays for regrouping the whole graph.
    """
    by_name = {node.name: node for node in plan_graph.nodes}
    touching: dict[str, list[PlanTensor]] = {}
    for tensor in plan_graph.tensors:
        for name in {tensor.producer, *tensor.consumers} - {None}:
            touching.setdefault(str(name), []).append(tensor)
    min_overhead = min(plan_graph.overhead.values(), default=0.0)
    groups = group_nodes(plan_graph, assignment, graph)
    best, parts = evaluate(plan_graph, assignment, groups)
    pairs = [[u, v] for u, v in graph.edges] if graph.number_of_nodes() <= PAIR_MOVES_UP_TO else []
    improved = True
    while improved:
        improved = False
        for move in [[n] for n in assignment] + groups + pairs:
            for device in plan_graph.devices:
                if all(assignment[n] == device for n in move):
                    continue
                if not all(device in by_name[n].times for n in move):
                    continue
                trial = dict(assignment)
                trial.update({n: device for n in move})
                tensors = {id(t): t for n in move for t in touching.get(n, [])}.values()
                local = sum(
                    by_name[n].times[device] - by_name[n].times[assignment[n]] for n in move
                ) + sum(
                    _transfer_of(plan_graph, t, trial) - _transfer_of(plan_graph, t, assignment)
                    for t in tensors
                )
                if local >= parts["overhead"] - min_overhead - 1e-15:
                    continue  # even one partition fewer could not pay for it
                trial_groups = group_nodes(plan_graph, trial, graph)
                cost, trial_parts = evaluate(plan_graph, trial, trial_groups)
                if cost < best - 1e-12:
                    assignment, groups, best, parts = trial, trial_groups, cost, trial_parts
                    improved = True
                    break
            if improved:
                break
    return assignment


PAIR_MOVES_UP_TO = 200
"""Two-node moves are tried on graphs up to this many nodes (their number grows with edges)."""


def _exact(plan_graph: PlanGraph, graph: nx.DiGraph) -> dict[str, str]:
    """Branch and bound in topological order; the bound is compute so far + the cheapest rest.

    Transfers and overheads are never negative, so a partial assignment whose compute bound
    already reaches the best complete cost cannot lead to a better one.
    """
    nodes = plan_graph.nodes
    cheapest_rest = [0.0] * (len(nodes) + 1)
    for i in range(len(nodes) - 1, -1, -1):
        cheapest_rest[i] = cheapest_rest[i + 1] + min(nodes[i].times.values())
    start = local_search(plan_graph, graph)
    best_cost = evaluate(plan_graph, start, group_nodes(plan_graph, start, graph))[0]
    best = dict(start)
    partial: dict[str, str] = {}

    def descend(i: int, compute: float) -> None:
        nonlocal best_cost, best
        if compute + cheapest_rest[i] >= best_cost - 1e-15:
            return
        if i == len(nodes):
            cost = evaluate(plan_graph, partial, group_nodes(plan_graph, partial, graph))[0]
            if cost < best_cost - 1e-15:
                best_cost, best = cost, dict(partial)
            return
        node = nodes[i]
        for device in sorted(node.times, key=node.times.__getitem__):
            partial[node.name] = device
            descend(i + 1, compute + node.times[device])
        del partial[node.name]

    descend(0, 0.0)
    return best


def brute_force(plan_graph: PlanGraph, objective: str = "latency") -> tuple[float, dict[str, str]]:
    """The optimum over every capable assignment (exponential: small graphs only)."""
    from ai_vmm.planner_throughput import evaluate_throughput

    score = evaluate_throughput if objective == "throughput" else evaluate
    _check_capable(plan_graph)
    names = [node.name for node in plan_graph.nodes]
    choices: Iterable[tuple[str, ...]] = itertools.product(
        *[sorted(node.times) for node in plan_graph.nodes]
    )
    graph = _graph(plan_graph)
    best: tuple[float, dict[str, str]] = (float("inf"), {})
    for combo in choices:
        assignment = dict(zip(names, combo, strict=True))
        cost = score(plan_graph, assignment, group_nodes(plan_graph, assignment, graph))[0]
        if cost < best[0]:
            best = (cost, assignment)
    return best
