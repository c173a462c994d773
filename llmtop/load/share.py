"""One load split over N workers so that their union is exactly the configured load.

Pure logic, no clock of its own (callers pass the time), tested with a fake clock.

Open loop: every worker runs the *same* arrival schedule (same seed, same class, same start
time and the same control times, see `TimedControl`) and keeps only its share of the arrivals,
dealt round-robin by the arrival's global index k: worker `members[k % len(members)]` sends
arrival k. So the union of what the workers send is, arrival for arrival, the schedule one
process would have sent (Poisson, gamma or a trace alike), deterministic per `--seed`, and
each worker's share is 1/N of it. A worker that is lost changes the members from an agreed
time on (`MembersSet`): its share is dealt over the others and the offered rate holds.

Why a common schedule instead of N independent Poisson processes of rate/N: that is exact
only for Poisson; the superposition of N gamma processes is not a gamma process, and a trace
has one order. Dealing is exact for all three, at the cost of each worker drawing every gap
(~0.3 µs each) and waking for arrivals that are not its own.

Closed loop: the concurrency (and any `--num-requests`) is split into shares that sum to it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llmtop.config import LoadPlan, RunConfig

NS_PER_S = 1_000_000_000


# -- messages (pickled over the same channel as llmtop.load.channel's) ------------------------
@dataclass(frozen=True)
class StartAt:
    """Parent → worker: start the load at `t_ns` on the worker's own perf_counter_ns clock
    (the start barrier; every worker of a group gets the same instant)."""

    t_ns: int


@dataclass(frozen=True)
class TimedControl:
    """Parent → worker: apply `msg` (RateSet, Paused, Resumed, MembersSet) at `at_ns`.

    Every worker applies it at the same point of the common schedule, so their schedules stay
    the same schedule. `at_ns` lies a little in the future when sent; a worker that gets it
    after it has already sent arrivals past `at_ns` applies it at once and counts it late.
    """

    at_ns: int
    msg: Any


@dataclass(frozen=True)
class MembersSet:
    """From the schedule time of its `TimedControl` on, deal the arrivals among `members`."""

    members: tuple[int, ...]


@dataclass(frozen=True)
class WorkerReady:
    """Worker → parent: built (connections not yet opened), waiting for `StartAt`."""

    index: int
    pid: int
    host: str


@dataclass(frozen=True)
class WorkerReported:
    """Worker → parent, about twice a second: how late its loop ran, control timing."""

    index: int
    loop_lag_us: bytes  # array('q') of probe lateness samples since the last report
    late_controls: int  # timed controls that arrived after their time (cumulative)


# -- shares -----------------------------------------------------------------------------------
def split_evenly(total: int, n: int) -> list[int]:
    """`total` in n whole shares that differ by at most one and sum to `total`."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


@dataclass(frozen=True)
class WorkerShare:
    """What one worker of a group of `count` needs to know to send exactly its share."""

    index: int
    count: int
    members: tuple[int, ...] = ()  # worker ids that deal the open-loop schedule at the start
    num_requests: int | None = None  # open loop: measured arrivals of the whole group
    warmup_s: float = 0.0
    barrier: bool = True  # wait for StartAt (a group of one starts at once)
    seed: int = 0  # the run's --seed (prompt draws are re-seeded per worker from it)

    @property
    def dealing(self) -> bool:
        return self.count > 1


def worker_plan(plan: LoadPlan, index: int, count: int) -> LoadPlan:
    """Worker `index`'s own plan: its share of a closed loop's concurrency and requests, of a
    `--max-concurrency` cap; an open loop keeps the whole rate (the schedule is dealt) and its
    request count is kept by the dealt schedule for the whole group."""
    if count == 1:
        return plan
    changes: dict[str, Any] = {}
    if plan.closed_loop:
        changes["concurrency"] = split_evenly(plan.concurrency or 0, count)[index]
        if plan.num_requests is not None:
            changes["num_requests"] = split_evenly(plan.num_requests, count)[index]
    else:
        changes["num_requests"] = None
        if plan.max_concurrency:
            changes["max_concurrency"] = max(1, split_evenly(plan.max_concurrency, count)[index])
    return dataclasses.replace(plan, **changes)


def worker_config(config: RunConfig, index: int, count: int) -> RunConfig:
    """The RunConfig that worker `index` of `count` runs."""
    return dataclasses.replace(config, plan=worker_plan(config.plan, index, count))


def worker_share(config: RunConfig, index: int, count: int) -> WorkerShare:
    plan = config.plan
    return WorkerShare(
        index=index,
        count=count,
        members=tuple(range(count)),
        num_requests=None if plan.closed_loop else plan.num_requests,
        warmup_s=plan.warmup_s,
        barrier=count > 1,
        seed=config.workload.seed,
    )


def group_size(plan: LoadPlan, workers: int) -> int:
    """How many workers a plan can use: a closed loop of C needs at most C."""
    if plan.closed_loop and plan.concurrency:
        return max(1, min(workers, plan.concurrency))
    return max(1, workers)


# -- the dealt schedule -------------------------------------------------------------------------
class Schedule(Protocol):
    """What the load loop asks of an arrival schedule (ArrivalSchedule, TraceSchedule)."""

    @property
    def rate(self) -> float: ...

    @property
    def paused(self) -> bool: ...

    def start(self, now_ns: int) -> None: ...

    def set_rate(self, now_ns: int, rate: float) -> None: ...

    def pause(self) -> None: ...

    def resume(self, now_ns: int) -> None: ...

    def next_due_ns(self) -> int | None: ...

    def take_due(self, now_ns: int, limit: int = 1_000_000) -> list[int]: ...


class DealtSchedule:
    """The group's one schedule, of which this worker takes only its own arrivals.

    Control changes are applied at agreed times: `hold(at_ns)` (called when a TimedControl
    arrives) keeps the schedule from moving past `at_ns` until `applying(at_ns)` has passed the
    control on at exactly that time, so every worker changes rate (pause, resume, members) at
    the same point of the same schedule.
    """

    def __init__(
        self,
        inner: Schedule,
        share: WorkerShare,
        on_exhausted: Callable[[], None] | None = None,
    ) -> None:
        self._inner = inner
        self.index = share.index
        self._epochs: list[tuple[int, tuple[int, ...]]] = [
            (-(2**62), share.members or tuple(range(share.count)))
        ]
        self._n_max = share.num_requests
        self._warmup_ns = round(share.warmup_s * NS_PER_S)
        self._measure_from_ns = 0
        self._measured = 0
        self._done = False
        self._on_exhausted = on_exhausted
        self._holds: deque[int] = deque()
        self._event_ns: int | None = None
        self.k = 0  # global index of the next arrival
        self.last_taken_ns: int | None = None  # intended time of the last arrival looked at
        self.own_indices: deque[int] = deque()  # global indices of own arrivals, for prompts

    # what the driver reads
    @property
    def rate(self) -> float:
        return self._inner.rate

    @property
    def paused(self) -> bool:
        return self._inner.paused

    @property
    def exhausted(self) -> bool:
        return self._done or bool(getattr(self._inner, "exhausted", False))

    @property
    def members(self) -> tuple[int, ...]:
        return self._epochs[-1][1]

    def _at(self, now_ns: int) -> int:
        return self._event_ns if self._event_ns is not None else now_ns

    # controls: the driver calls these from on_control; inside `applying` they take the
    # agreed time instead of the moment the message was read
    def start(self, now_ns: int) -> None:
        self._measure_from_ns = now_ns + self._warmup_ns
        self._inner.start(now_ns)

    def set_rate(self, now_ns: int, rate: float) -> None:
        self._inner.set_rate(self._at(now_ns), rate)

    def pause(self) -> None:
        self._inner.pause()

    def resume(self, now_ns: int) -> None:
        self._inner.resume(self._at(now_ns))

    def hold(self, at_ns: int) -> bool:
        """A control for `at_ns` is on its way: take no arrival at or past it until then.
        False when arrivals at or past `at_ns` were already taken (the control is late)."""
        late = self.last_taken_ns is not None and self.last_taken_ns >= at_ns
        if not late:
            self._holds.append(at_ns)
        return not late

    def release(self, at_ns: int) -> None:
        if at_ns in self._holds:
            self._holds.remove(at_ns)

    def applying(self, at_ns: int | None) -> None:
        """Controls passed on from now to `applying(None)` take effect at `at_ns`."""
        self._event_ns = at_ns

    def set_members(self, at_ns: int, members: tuple[int, ...]) -> None:
        """Deal arrivals due at or after `at_ns` among `members` (a lost worker's share goes
        to the others)."""
        if not members:
            raise ValueError("a group needs at least one worker")
        self._epochs.append((at_ns, tuple(members)))

    # arrivals
    def _owner(self, k: int, t_ns: int) -> int:
        members = self._epochs[-1][1]
        for start, m in reversed(self._epochs):
            if start <= t_ns:
                members = m
                break
        return members[k % len(members)]

    def next_due_ns(self) -> int | None:
        """The next arrival of the group (own or not: dealing needs every one seen); None
        while a control is pending for a time at or before it."""
        if self._done:
            return None
        nxt = self._inner.next_due_ns()
        if nxt is not None and self._holds and nxt >= min(self._holds):
            return None
        return nxt

    def take_due(self, now_ns: int, limit: int = 1_000_000) -> list[int]:
        """This worker's arrivals due by `now_ns`, oldest first."""
        if self._done:
            return []
        upto = now_ns if not self._holds else min(now_ns, min(self._holds) - 1)
        own: list[int] = []
        inner = self._inner
        n_max = self._n_max
        while len(own) < limit:
            got = inner.take_due(upto, 1)
            if not got:
                break
            t = got[0]
            k = self.k
            self.k = k + 1
            self.last_taken_ns = t
            if n_max is not None and t >= self._measure_from_ns:
                if self._measured >= n_max:  # the group has sent all its measured requests
                    self._finish()
                    break
                self._measured += 1
            if self._owner(k, t) == self.index:
                own.append(t)
                self.own_indices.append(k)
            if n_max is not None and self._measured >= n_max:
                self._finish()
                break
        return own

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._inner.pause()
            if self._on_exhausted is not None:
                self._on_exhausted()
