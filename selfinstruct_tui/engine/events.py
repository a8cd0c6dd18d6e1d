"""Typed events the engine emits, and the bus that hands them to subscribers.

One schema for every consumer: the in-process TUI, the headless printer and a TUI attached to
another process. Events that describe a stored record are built by `Event.of(record)` from the
record the engine wrote; the attached follower builds them from the same records read back, so
both see the same fields. Subscribers are called on the engine's thread and must be quick: the
headless printer prints, the TUI puts the event on a queue that it drains on a timer.
Times: `ts` is epoch seconds; durations (`latency`, `delay`) are seconds.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.endpoints import EndpointStats
from selfinstruct_tui.engine.store import (
    BatchRecord,
    ErrorRecord,
    PromptKind,
    PromptRecord,
    RejectionRecord,
    RetryRecord,
    ReviewRecord,
    RoundStats,
)
from selfinstruct_tui.engine.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    # When it happened (epoch s): the time the store records for it where it has one (a
    # task's `created`, an answer's `finished`, a pause's start and end, the session's start,
    # the state's `ts`), so that every UI derives the same time figures from it (`Rates`)
    ts: float = field(default_factory=lambda: time.time(), kw_only=True)


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    endpoint: str
    model: str  # for people: a pool's models when its endpoints differ (`models_label`)
    api: str
    target: int
    accepted: int
    seeds: int
    resumed: bool
    endpoints: tuple[str, ...] = ()  # a pool's base URLs (empty: one endpoint)
    command: str = ""  # --batch-command: the run has no endpoint, `endpoint` is unused

    @classmethod
    def of(cls, run_dir: str, config: RunConfig, endpoint: str, accepted: int, seeds: int,
           resumed: bool, started: float | None = None) -> RunStarted:
        """`started`: when the session started (epoch s, the `session` meta's; None: now)."""
        pool = tuple(e["base_url"] for e in config.endpoint_list()) \
            if len(config.endpoints) > 1 else ()
        return cls(run_dir, endpoint, config.models_label, config.api, config.target, accepted,
                   seeds, resumed, pool, config.batch_command,
                   **({"ts": started} if started is not None else {}))


@dataclass(frozen=True)
class PromptSent(Event):
    prompt_id: int
    round: int
    kind: PromptKind
    prompt: str
    examples: tuple[tuple[int, str, str], ...] = ()  # (task id, origin, instruction)
    task_ref: int | None = None

    @classmethod
    def of(cls, p: PromptRecord) -> PromptSent:
        return cls(p.id, p.round, p.kind, p.prompt, p.examples, p.task_ref)


@dataclass(frozen=True)
class ResponseReceived(Event):
    prompt_id: int
    round: int
    kind: str
    text: str
    finish_reason: str | None
    latency: float
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, p: PromptRecord) -> ResponseReceived:
        return cls(p.id, p.round, p.kind, p.response or "", p.finish_reason, p.latency,
                   p.prompt_tokens, p.completion_tokens,
                   **({"ts": p.finished} if p.finished is not None else {}))


@dataclass(frozen=True)
class PromptFailed(Event):
    """A request ended without an answer: failed for good, or abandoned by a stop."""

    prompt_id: int
    round: int
    kind: str
    error: str

    @classmethod
    def of(cls, p: PromptRecord) -> PromptFailed:
        return cls(p.id, p.round, p.kind, p.error or "")


def prompt_finished(p: PromptRecord) -> ResponseReceived | PromptFailed:
    """The event for a finished request: its answer, or why there is none."""
    return ResponseReceived.of(p) if p.response is not None else PromptFailed.of(p)


@dataclass(frozen=True)
class TaskAccepted(Event):
    """A task joined the pool (`ts`: its `created`, as the store records it)."""

    task: Task
    accepted: int
    target: int

    @classmethod
    def of(cls, task: Task, accepted: int, target: int) -> TaskAccepted:
        return cls(task, accepted, target, **({"ts": task.created} if task.created else {}))


@dataclass(frozen=True)
class CandidateRejected(Event):
    """A candidate turned down (`level` "candidate"), or one instance of a task dropped
    ("instance", with `task_id`), with its `RejectionReason` value."""

    rejection_id: int
    round: int
    candidate: str
    reason: str
    detail: str
    similar_id: int | None = None
    similar_text: str | None = None
    score: float | None = None
    max_score: float | None = None
    level: str = "candidate"
    task_id: int | None = None

    @classmethod
    def of(cls, r: RejectionRecord) -> CandidateRejected:
        return cls(r.id, r.round, r.candidate, r.reason, r.detail, r.similar_id, r.similar_text,
                   r.score, r.max_score, r.level, r.task_id)


@dataclass(frozen=True)
class RequestRetried(Event):
    """A request failed and will be sent again after `delay` seconds; `cause` names why and
    `endpoint` (base URL; None: unknown) where the failed attempt went."""

    round: int | None
    prompt_id: int | None
    cause: str
    attempt: int
    delay: float
    message: str
    endpoint: str | None = None

    @classmethod
    def of(cls, r: RetryRecord) -> RequestRetried:
        return cls(r.round, r.prompt_id, r.cause, r.attempt, r.delay, r.message, r.endpoint)


@dataclass(frozen=True)
class Notice(Event):
    """Something the user should know once (structured output detected, a limit learned)."""

    message: str


@dataclass(frozen=True)
class BatchProgress(Event):
    """A batch job changed (submitted, polled, downloaded, settled, cancelled): its state, the
    endpoint's status and request counts, as recorded in the store."""

    batch: BatchRecord


@dataclass(frozen=True)
class RequestError(Event):
    """A request failed for good (or another error of the run; `kind` names it); `endpoint`:
    the base URL its last attempt went to (None: unknown or not a request)."""

    round: int | None
    kind: str
    message: str
    endpoint: str | None = None

    @classmethod
    def of(cls, e: ErrorRecord) -> RequestError:
        return cls(e.round, e.kind, e.message, e.endpoint)


def at_endpoint(event: RequestRetried | RequestError, pool: bool) -> str:
    """" at <base URL>" for a retry's or a failure's line in a run with a pool of endpoints;
    nothing with one endpoint, an unknown one, or a message that names it already."""
    url = event.endpoint
    return f" at {url}" if pool and url and url not in event.message else ""


@dataclass(frozen=True)
class EndpointsReported(Event):
    """A pool of endpoints' figures, one `EndpointStats` per endpoint (in flight, requests/s,
    errors, median latency in seconds), sent every few seconds and when an endpoint changes."""

    endpoints: tuple[EndpointStats, ...]


USER_PAUSE = "paused by the user"  # the reason of a pause the user asked for (key p)


@dataclass(frozen=True)
class Paused(Event):
    """The run paused (`ts`: when, the start of the pause the store records)."""

    reason: str
    by_errors: bool = False
    needs_restart: bool = False  # the fix is a setting: resuming as it is gets the same


@dataclass(frozen=True)
class Resumed(Event):
    """The run resumed (`ts`: when, the end of the pause the store records)."""


@dataclass(frozen=True)
class Crashed(Event):
    """The process that drove the run is gone without recording an end (killed with -9, out
    of memory, a crash): the run's state still reads live and its pid is dead, the rule of
    `selfinstruct runs`. Emitted by a `StoreFollower` for an attached UI (an in-process engine
    goes with its UI); the run resumes with `selfinstruct run --run-dir DIR`. `last_activity`:
    when the process last recorded work (epoch s, `RunStore.last_activity`; None: unknown),
    where its run time ends."""

    pid: int | None
    last_activity: float | None = None


@dataclass(frozen=True)
class Stopping(Event):
    cancel_batches: bool = False  # the submitted batch jobs are being cancelled, not kept
    now: bool = False  # requests in flight are abandoned, not given the stop's grace


@dataclass(frozen=True)
class RoundFinished(Event):
    stats: RoundStats
    accepted_total: int  # machine tasks in the pool when the round finished
    target: int
    # A round an earlier process left running (it crashed or was killed), closed as
    # `interrupted` by this one: its tokens were spent by that process, not this session
    earlier: bool = False

    @classmethod
    def of(cls, stats: RoundStats, target: int) -> RoundFinished:
        return cls(stats, stats.pool_after if stats.pool_after is not None else stats.accepted,
                   target)


@dataclass(frozen=True)
class SeedsReplaced(Event):
    """The run's seed set is now `tasks` (active seed tasks, new ids)."""

    tasks: tuple[Task, ...]

    @property
    def count(self) -> int:
        return len(self.tasks)


@dataclass(frozen=True)
class TaskDropped(Event):
    task_id: int
    accepted: int


@dataclass(frozen=True)
class TaskEdited(Event):
    task: Task


@dataclass(frozen=True)
class ReviewUpdated(Event):
    """Quality-review records as now stored: tasks added to the sample, or a task answered or
    skipped (each record replaces the one with its task id)."""

    reviews: tuple[ReviewRecord, ...]


@dataclass(frozen=True)
class PoolRecounted(Event):
    """The machine pool holds `accepted` tasks after a change that is neither an acceptance nor
    a drop (a demoted seed came back as a machine task)."""

    accepted: int


class FinishReason(str, enum.Enum):
    """Why a run ended, with its one mapping to an exit code and a run state."""

    TARGET = "target"  # the pool reached the target
    STOPPED = "stopped"  # the user stopped it
    LIMIT = "limit"  # a spend limit (--max-cost, --max-tokens) was reached
    FAILING = "failing"  # paused by errors or a spend guard with nobody to resume (headless)
    ERROR = "error"  # the engine itself failed

    @property
    def exit_code(self) -> int:
        return {"target": 0, "stopped": 130, "limit": 4, "failing": 3, "error": 1}[self.value]

    @property
    def state(self) -> str:
        return {"target": "finished", "error": "error"}.get(self.value, "stopped")


@dataclass(frozen=True)
class Finished(Event):
    """The session ended (`ts`: when, the end state's `ts` in the store)."""

    reason: FinishReason
    accepted: int
    target: int
    message: str = ""


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn)

    def emit(self, event: Event) -> None:
        for fn in list(self._subscribers):
            try:
                fn(event)
            except (Exception, SystemExit):  # a broken subscriber must never stop a run
                log.exception("event subscriber failed on %s", type(event).__name__)
