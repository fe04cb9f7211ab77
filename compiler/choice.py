"""Choosing by measurement: candidates and their runtime variants timed at every shape bucket.

    contenders: each verified candidate with its own config, and with each override of its
                target's tuning space (one-partition candidates: e.g. one intra-op thread)
    timing:     per bucket, every contender once per round, ``ai_vmm.tuning.ROUNDS`` rounds
    variants:   a variant replaces a candidate's own config only when it wins beyond the noise
                (faster in every round, by 3% or more at the median ratio)
    candidates: per bucket the lowest median wins; a bucket other than the primary one gets a
                plan of its own only when its winner beats the primary winner there beyond the
                noise, so an artifact is never split on noise
    dispatch:   each extra bucket's plan runs when the call's sizes are past the cut-over
                (the geometric mean of the primary size and the bucket's) on every axis where
                the two differ; the primary plan runs otherwise

``static_choice`` is the rule when nothing can be timed (``--no-tune``, no runnable sample).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ai_vmm import registry
from ai_vmm.candidates import Candidate, static_order
from ai_vmm.runtime.errors import VmmError
from ai_vmm.runtime.executors import Executor, create_executor
from ai_vmm.shapes import Bucket, Variable
from ai_vmm.tuning import (
    BUSY_SHARE,
    NOISY_SPREAD,
    ROUNDS,
    OthersCpu,
    Rounds,
    beats,
    interleaved,
    load_average,
)

Progress = Callable[[str], None]
OPEN_END = 2**31 - 1


@dataclass
class Contender:
    """A candidate with one executor config (its own, or a tuning-space override)."""

    candidate: Candidate
    override: dict[str, Any]
    executors: dict[str, Executor] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return json.dumps(self.override, sort_keys=True) if self.override else "default"


@dataclass
class BucketChoice:
    """What runs at one bucket, and why."""

    bucket: Bucket
    candidate: Candidate
    override: dict[str, Any]
    rule: str
    decided: bool
    when: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket.name,
            "sizes": self.bucket.sizes,
            "chosen": self.candidate.name,
            "config": self.override,
            "rule": self.rule,
            "decided_beyond_noise": self.decided,
            "when": self.when,
        }


@dataclass
class Decision:
    """Per bucket, in dispatch order (extra buckets first, the primary one last)."""

    choices: list[BucketChoice]
    timing: dict[str, Any]

    @property
    def primary(self) -> BucketChoice:
        return self.choices[-1]


def contenders(candidates: list[Candidate]) -> list[Contender]:
    """Every candidate as built, plus its target's runtime variants (one-partition only)."""
    found: list[Contender] = []
    for candidate in candidates:
        found.append(Contender(candidate, {}))
        if candidate.partitioned or len(candidate.partitions) != 1:
            continue
        part = candidate.partitions[0]
        assert part.work_dir is not None
        target = registry.get_target(part.device.target)
        for override in target.tuning_space(part.device, part.config):
            config = {**part.config, **override}
            if config == part.config:
                continue
            try:
                executor = create_executor(
                    part.device.target,
                    part.work_dir / part.entry,
                    part.device.name,
                    config,
                    part.outputs,
                )
            except VmmError:
                continue
            found.append(Contender(candidate, override, {part.id: executor}))
    return found


def contender_executors(candidate: Candidate, override: dict[str, Any]) -> dict[str, Executor]:
    """Executors of ``candidate``'s one partition with ``override`` applied to its config."""
    part = candidate.partitions[0]
    assert part.work_dir is not None
    executor = create_executor(
        part.device.target,
        part.work_dir / part.entry,
        part.device.name,
        {**part.config, **override},
        part.outputs,
    )
    return {part.id: executor}


def choose(
    candidates: list[Candidate],
    buckets: list[Bucket],
    variables: list[Variable],
    budget_s: float,
    say: Progress,
) -> Decision:
    """Time every contender at every bucket (``buckets[0]`` is the primary one) and decide."""
    racing = contenders(candidates)
    before = load_average()
    say(
        f"timing {len(racing)} contenders at {len(buckets)} shape bucket(s) in {ROUNDS} "
        f"interleaved rounds"
    )
    timings: dict[str, list[Rounds]] = {}
    with OthersCpu() as others:
        for bucket in buckets:
            runners = [_runner(c, bucket) for c in racing]
            timings[bucket.name] = interleaved(runners, budget_s=budget_s)
    after = load_average()
    busy = others.share is not None and others.share > BUSY_SHARE
    # Per candidate and bucket: its own config unless a variant wins beyond the noise (and
    # never on a busy machine, where fewer threads win for reasons a quiet one would not have).
    best: dict[tuple[str, str], tuple[Contender, Rounds]] = {}
    for bucket in buckets:
        for candidate in candidates:
            own = [
                (c, r)
                for c, r in zip(racing, timings[bucket.name], strict=True)
                if c.candidate is candidate
            ]
            default = own[0]
            winners = [] if busy else [(c, r) for c, r in own[1:] if beats(r, default[1])]
            best[(candidate.name, bucket.name)] = min(
                winners, key=lambda item: item[1].median_ms, default=default
            )
    _record_latency(candidates, racing, timings, best, buckets, busy)
    primary = buckets[0]
    ranked = sorted(candidates, key=lambda c: best[(c.name, primary.name)][1].median_ms)
    top = ranked[0]
    top_rounds = best[(top.name, primary.name)][1]
    decided = len(ranked) < 2 or beats(top_rounds, best[(ranked[1].name, primary.name)][1])
    rule = "fastest measured on this machine" if len(ranked) > 1 else "the only candidate"
    if len(ranked) > 1 and not decided:
        rule += " (within the noise of the runner-up)"
    primary_choice = BucketChoice(
        primary, top, best[(top.name, primary.name)][0].override, rule, decided
    )
    extra: list[BucketChoice] = []
    for bucket in buckets[1:]:
        here = min(candidates, key=lambda c: best[(c.name, bucket.name)][1].median_ms)
        incumbent_contender, incumbent = best[(top.name, bucket.name)]
        challenger_contender, challenger = best[(here.name, bucket.name)]
        if here is not top and beats(challenger, incumbent):
            choice = BucketChoice(
                bucket,
                here,
                challenger_contender.override,
                f"faster than {top.name} at {bucket.name} beyond the noise",
                True,
            )
        elif incumbent_contender.override != primary_choice.override:
            choice = BucketChoice(
                bucket,
                top,
                incumbent_contender.override,
                f"a runtime variant wins at {bucket.name} beyond the noise",
                True,
            )
        else:
            continue
        choice.when = dispatch_when(primary, bucket, variables)
        if choice.when:
            extra.append(choice)
    spreads = [best[(c.name, primary.name)][1].spread for c in ranked[:2]]
    timing: dict[str, Any] = {
        "busy": busy,
        "others_cpu_share": others.share,
        "rounds": ROUNDS,
        "budget_s": budget_s,
        "load_average": [before, after],
        "spread": round(max(spreads, default=0.0), 3),
    }
    warning = noise_warning(max(spreads, default=0.0), decided, after)
    if warning:
        timing["warnings"] = [warning]
        say(f"WARNING: {warning}")
    if busy:
        note = (
            f"the machine was busy (other processes used {others.share:.0%} of the CPU "
            f"while contenders were timed; load average {after}): thread-count variants were "
            "not adopted; recompile on a quiet machine to tune them"
        )
        timing.setdefault("warnings", []).append(note)
        say(f"WARNING: {note}")
    return Decision([*extra, primary_choice], timing)


def noise_warning(spread: float, decided: bool, load: Any) -> str | None:
    """A warning when noise may have made the choice: round medians spread more than
    ``NOISY_SPREAD`` and the winner did not beat the runner-up in every round. A winner faster
    in every round (by ``MATERIAL``) stands however much the rounds moved (sub-millisecond
    models spread 40 % between rounds on a quiet 2-core machine)."""
    if decided or spread <= NOISY_SPREAD:
        return None
    return (
        f"the machine was too noisy to decide reliably (round medians spread {spread:.0%}, "
        f"load average {load}, and no candidate was faster in every round): recompile on a "
        f"quieter machine, or give --tune-seconds more time"
    )


def _runner(contender: Contender, bucket: Bucket) -> Callable[[], Any]:
    candidate, executors, sample = contender.candidate, contender.executors, bucket.sample
    return lambda: candidate.run(sample, executors)


def _record_latency(
    candidates: list[Candidate],
    racing: list[Contender],
    timings: dict[str, list[Rounds]],
    best: dict[tuple[str, str], tuple[Contender, Rounds]],
    buckets: list[Bucket],
    busy: bool,
) -> None:
    for candidate in candidates:
        per_bucket: dict[str, Any] = {}
        for bucket in buckets:
            variants = [
                {"config": c.override, **r.to_json()}
                for c, r in zip(racing, timings[bucket.name], strict=True)
                if c.candidate is candidate
            ]
            chosen, rounds = best[(candidate.name, bucket.name)]
            for variant in variants:
                variant["chosen"] = variant["config"] == chosen.override
            default = variants[0]
            reason = (
                "kept its own config: other processes used over "
                f"{BUSY_SHARE:.0%} of the CPU while it was timed, so runtime variants are "
                "measured but not adopted"
                if busy
                else "kept its own config: no variant was faster in every round by 3% or more"
                if not chosen.override
                else f"{chosen.label} was faster than its own config in every round "
                f"({rounds.median_ms:.4g} ms vs {default['median_ms']:.4g} ms at the median)"
            )
            per_bucket[bucket.name] = {
                "sizes": bucket.sizes,
                "chosen_config": chosen.override,
                **rounds.to_json(),
                "variant_reason": reason,
                "variants": variants,
            }
        primary = per_bucket[buckets[0].name]
        candidate.latency = {
            "median_ms": primary["median_ms"],
            "ci_ms": primary["ci_ms"],
            "spread": primary["spread"],
            "variant_reason": primary["variant_reason"],
            "variants": primary["variants"],
            "buckets": per_bucket,
        }


def dispatch_when(
    primary: Bucket, bucket: Bucket, variables: list[Variable]
) -> dict[str, dict[str, dict[str, int]]]:
    """The input-shape ranges where ``bucket``'s plan runs instead of the primary one."""
    when: dict[str, dict[str, dict[str, int]]] = {}
    for variable in variables:
        a, b = primary.sizes.get(variable.name), bucket.sizes.get(variable.name)
        if a is None or b is None or a == b:
            continue
        cut = max(min(a, b) + 1, round(math.sqrt(a * b)))
        name, axis = variable.axes[0]
        when.setdefault(name, {})[str(axis)] = (
            {"min": cut, "max": OPEN_END} if b > a else {"min": 0, "max": cut - 1}
        )
    return when


def static_choice(candidates: list[Candidate], why: str) -> tuple[Candidate, str]:
    """The first candidate in the documented static order (``--no-tune``, nothing timed)."""
    order = {d.key: i for i, d in enumerate(static_order([c.device for c in candidates]))}
    first = min(candidates, key=lambda c: (c.partitioned, order.get(c.device.key, 99)))
    return first, why
