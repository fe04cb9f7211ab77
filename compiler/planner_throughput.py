"""The planner's throughput objective (``plan(..., objective="throughput")``).

For a plan whose requests are pipelined (``ai_vmm.runtime.pipelined``), a request leaves every
``max over devices`` of the device's work per request (its nodes, its partitions' overheads, the
tensors copied into it: ``stage_loads``); the search minimizes that bottleneck, with the
sequential latency as a tie break (``THROUGHPUT_LATENCY_WEIGHT``). Its starts add balanced
contiguous splits of the topological order (``_segment_starts``); its local moves evaluate the
whole objective. The graph, plan types and grouping are ``ai_vmm.planner``'s.
"""

from __future__ import annotations

import itertools

import networkx as nx

from ai_vmm.planner import (
    EXACT_LIMIT,
    PAIR_MOVES_UP_TO,
    Plan,
    PlanGraph,
    _check_capable,
    _finished,
    _graph,
    _search_space,
    _starts,
    copies,
    evaluate,
    group_nodes,
)

THROUGHPUT_LATENCY_WEIGHT = 1e-3
"""Weight of the sequential latency in the throughput objective: a tie break between plans
with the same bottleneck (fewer partitions, fewer transfers), never a reason to trade one."""


def stage_loads(
    plan_graph: PlanGraph, assignment: dict[str, str], groups: list[list[str]]
) -> dict[str, float]:
    """Seconds of work per request on each device when requests stream through the plan.

    A device runs one partition at a time, so its load is the compute of its nodes, the
    overhead of each of its partitions, and the copies of tensors into it (the reading side
    of a link waits for them). Devices that share no link share nothing here: a plan graph
    whose devices compete for one resource (two CPU targets with all cores each) should list
    them with the figures each gets when they run at once.
    """
    by_name = {node.name: node for node in plan_graph.nodes}
    loads = dict.fromkeys(plan_graph.devices, 0.0)
    for name, device in assignment.items():
        loads[device] = loads.get(device, 0.0) + by_name[name].times[device]
    for group in groups:
        device = assignment[group[0]]
        loads[device] += plan_graph.overhead.get(device, 0.0)
    for reader, seconds in copies(plan_graph, assignment):
        loads[reader] = loads.get(reader, 0.0) + seconds
    return loads


def evaluate_throughput(
    plan_graph: PlanGraph, assignment: dict[str, str], groups: list[list[str]]
) -> tuple[float, dict[str, float]]:
    """The throughput objective: the busiest device's seconds per request, plus a small
    weight of the sequential latency. The breakdown has both and each device's load."""
    loads = stage_loads(plan_graph, assignment, groups)
    latency, parts = evaluate(plan_graph, assignment, groups)
    bottleneck = max(loads.values(), default=0.0)
    breakdown = {"bottleneck": bottleneck, "latency": latency, **parts}
    breakdown.update({f"load {device}": load for device, load in loads.items()})
    return bottleneck + THROUGHPUT_LATENCY_WEIGHT * latency, breakdown


def plan_throughput(plan_graph: PlanGraph) -> Plan:
    """The plan with the highest estimated pipelined throughput (see ``plan``)."""
    _check_capable(plan_graph)
    graph = _graph(plan_graph)
    if _search_space(plan_graph) <= EXACT_LIMIT:
        assignment = _exact_throughput(plan_graph, graph)
    else:
        assignment = _search_throughput(plan_graph, graph)
    return _finished(
        plan_graph,
        assignment,
        graph,
        evaluate_throughput,
        "highest estimated throughput, requests pipelined",
    )


def _score(plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph) -> float:
    return evaluate_throughput(plan_graph, assignment, group_nodes(plan_graph, assignment, graph))[
        0
    ]


def _ranked(
    plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph
) -> tuple[float, float]:
    """The objective, then the sum of squared loads: moving work off a device that is not the
    busiest changes no maximum, but it is what lets the next move lower the maximum."""
    groups = group_nodes(plan_graph, assignment, graph)
    loads = stage_loads(plan_graph, assignment, groups)
    return evaluate_throughput(plan_graph, assignment, groups)[0], sum(
        v * v for v in loads.values()
    )


def _segment_starts(plan_graph: PlanGraph, orders: int = 24) -> list[dict[str, str]]:
    """Contiguous splits of the topological order, one segment per device, balanced.

    For each order of the devices (up to ``orders`` of them), the smallest bottleneck ``T``
    for which filling the devices in that order, each up to ``T`` of estimated compute, places
    every node (a binary search over ``T``); a node its segment's device cannot run goes to
    its cheapest capable device. A prefix of a topological order depends on nothing after it,
    so such a split is a pipeline without cycles.
    """
    nodes = plan_graph.nodes
    starts: list[dict[str, str]] = []
    for order in itertools.islice(itertools.permutations(plan_graph.devices), orders):
        if len(order) < 2:
            continue

        def fill(limit: float, order: tuple[str, ...] = order) -> dict[str, str] | None:
            assignment: dict[str, str] = {}
            slot, load = 0, 0.0
            for node in nodes:
                if not any(d in node.times for d in order[slot:]):
                    return None
                while True:
                    device = order[slot]
                    time_here = node.times.get(device)
                    if time_here is not None and load + time_here <= limit:
                        assignment[node.name] = device
                        load += time_here
                        break
                    if time_here is None and slot == len(order) - 1:
                        assignment[node.name] = min(node.times, key=node.times.__getitem__)
                        break
                    if time_here is None and load == 0.0:
                        assignment[node.name] = min(node.times, key=node.times.__getitem__)
                        break
                    if slot == len(order) - 1:
                        return None
                    slot, load = slot + 1, 0.0
            return assignment

        high = sum(max(node.times.values()) for node in nodes) + 1e-12
        low = 0.0
        best = fill(high)
        if best is None:
            continue
        for _ in range(40):
            middle = (low + high) / 2
            found = fill(middle)
            if found is None:
                low = middle
            else:
                high, best = middle, found
        starts.append(best)
    return starts


def _search_throughput(plan_graph: PlanGraph, graph: nx.DiGraph) -> dict[str, str]:
    """Local search from each device alone and from balanced splits; the best result."""
    best: tuple[float, dict[str, str]] = (float("inf"), {})
    seen: dict[tuple[str, ...], dict[str, str]] = {}
    for start in [*_starts(plan_graph), *_segment_starts(plan_graph)]:
        seen.setdefault(tuple(start[n.name] for n in plan_graph.nodes), start)
    # Each local search regroups the graph per trial: improve only the most promising starts.
    ranked = sorted(seen.values(), key=lambda a: _score(plan_graph, a, graph))
    for start in ranked[:THROUGHPUT_STARTS]:
        assignment = _improve_throughput(plan_graph, start, graph)
        cost = _score(plan_graph, assignment, graph)
        if cost < best[0]:
            best = (cost, assignment)
    return best[1]


THROUGHPUT_MOVE_ROUNDS = 50
"""Improving moves the throughput search makes from one start at most."""

THROUGHPUT_STARTS = 3
"""Starts (the best by their objective) that the throughput search improves."""


def _improve_throughput(
    plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph
) -> dict[str, str]:
    """Move a node or two adjacent nodes on a partition border, or a whole partition, while
    the objective drops (then the sum of squared loads: see ``_ranked``).

    Border nodes have a neighbour on another device; inner nodes move only while the plan is
    one partition. Each trial regroups the graph, and a move from inside a partition would cut
    it in three, which pays only in rare plans. Pairs only up to ``PAIR_MOVES_UP_TO`` nodes.
    """
    by_name = {node.name: node for node in plan_graph.nodes}
    best = _ranked(plan_graph, assignment, graph)
    small = graph.number_of_nodes() <= PAIR_MOVES_UP_TO
    for _ in range(THROUGHPUT_MOVE_ROUNDS):
        groups = group_nodes(plan_graph, assignment, graph)
        border = {
            n
            for n in assignment
            if any(
                assignment[m] != assignment[n]
                for m in (*graph.predecessors(n), *graph.successors(n))
            )
        }
        singles = [[n] for n in assignment] if small and len(groups) < 2 else []
        singles += [[n] for n in sorted(border)]
        pairs = [[u, v] for u, v in graph.edges if u in border or v in border] if small else []
        improved = False
        for move in singles + groups + pairs:
            for device in plan_graph.devices:
                if all(assignment[n] == device for n in move):
                    continue
                if not all(device in by_name[n].times for n in move):
                    continue
                trial = {**assignment, **dict.fromkeys(move, device)}
                cost = _ranked(plan_graph, trial, graph)
                if cost[0] < best[0] - 1e-15 or (
                    cost[0] <= best[0] and cost[1] < best[1] * (1 - 1e-9)
                ):
                    assignment, best, improved = trial, cost, True
                    break
            if improved:
                break
        if not improved:
            break
    return assignment


def _exact_throughput(plan_graph: PlanGraph, graph: nx.DiGraph) -> dict[str, str]:
    """Branch and bound for the throughput objective.

    Bound for a partial assignment: the busiest device's compute so far, and the total
    compute (so far plus the cheapest rest) spread evenly over every device; loads only grow,
    so neither can exceed the final bottleneck.
    """
    nodes = plan_graph.nodes
    cheapest_rest = [0.0] * (len(nodes) + 1)
    for i in range(len(nodes) - 1, -1, -1):
        cheapest_rest[i] = cheapest_rest[i + 1] + min(nodes[i].times.values())
    start = _search_throughput(plan_graph, graph)
    best_cost = _score(plan_graph, start, graph)
    best = dict(start)
    partial: dict[str, str] = {}
    loads = dict.fromkeys(plan_graph.devices, 0.0)
    count = max(1, len(plan_graph.devices))

    def descend(i: int, total: float) -> None:
        nonlocal best_cost, best
        bound = max(max(loads.values()), (total + cheapest_rest[i]) / count)
        if bound >= best_cost - 1e-15:
            return
        if i == len(nodes):
            cost = _score(plan_graph, partial, graph)
            if cost < best_cost - 1e-15:
                best_cost, best = cost, dict(partial)
            return
        node = nodes[i]
        for device in sorted(node.times, key=lambda d: loads[d] + node.times[d]):
            partial[node.name] = device
            loads[device] += node.times[device]
            descend(i + 1, total + node.times[device])
            loads[device] -= node.times[device]
        del partial[node.name]

    descend(0, 0.0)
    return best


__all__ = [
    "THROUGHPUT_LATENCY_WEIGHT",
    "THROUGHPUT_MOVE_ROUNDS",
    "THROUGHPUT_STARTS",
    "evaluate_throughput",
    "plan_throughput",
    "stage_loads",
]
