"""One control surface and one event stream for a run, whoever drives it.

Commands are typed values (`Pause`, `Resume`, `Stop`, `ReplaceSeeds`, `DropTask`, `EditTask`)
with one codec (`encode`/`decode`) for the store's commands table. Three `RunControl`s take them:
* the in-process `Engine` (engine.py);
* `RemoteControl`: an attached UI writes them to the commands table, which the engine polls (they
  survive the UI going away; several UIs can attach at once);
* `OfflineControl`: no engine runs; seed, drop and edit changes go straight to the store as single
  transactions, and the same events are emitted.

`read_snapshot` reads what a run's screens show from the store in one read transaction;
`StoreFollower` then turns rows committed after it into the engine's own event types, built by
the same constructors (`Event.of(record)`), so an attached UI is fed exactly like an in-process one.
"""

from __future__ import annotations

import enum
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.endpoints import EndpointStats
from selfinstruct_tui.engine.errors import UserError
from selfinstruct_tui.engine.invocation import command_line
from selfinstruct_tui.engine.rates import WINDOW_SECONDS, window_start
from selfinstruct_tui.engine.seeds import Instance, SeedTask, seed_from_record, seed_to_record
from selfinstruct_tui.engine.store import (
    REVIEW_QUESTIONS,
    PromptRecord,
    RejectionRecord,
    ReviewQuestion,
    ReviewRecord,
    RoundStats,
    RunStore,
    db_path,
    is_run_dir,
    seed_tasks_to_pool,
)
from selfinstruct_tui.engine.task import Task

DETACH_EXIT = 75  # the TUI's return value when the user hands the run to a background process
HISTORY_REJECTIONS = 500  # rejection lines a screen keeps (history and live alike)
HISTORY_ROUNDS = 100  # rows of the rounds table (the charts keep more)


class RunState(str, enum.Enum):
    """The states a run's `state` meta takes, and the ones derived for `runs`."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    FINISHED = "finished"  # the target was reached
    STOPPED = "stopped"  # by the user, a spend limit, or a pause with nobody to resume
    ERROR = "error"  # the engine failed
    FAILED = "failed"  # a detached start that never ran
    CRASHED = "crashed"  # derived: a live state whose process is gone
    NEW = "new"  # derived: no state recorded

    def __str__(self) -> str:
        return self.value

    @property
    def live(self) -> bool:
        """A process drives the run (unless it crashed: see `run_status`)."""
        return self in LIVE_STATES


LIVE_STATES = frozenset({RunState.STARTING, RunState.RUNNING, RunState.PAUSED,
                         RunState.STOPPING})


# -- commands ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Stop:
    """Stop: nothing new is sent; requests in flight get the stop grace (`now`: none)."""

    reason: str = "stopped"  # a FinishReason value
    message: str = ""
    now: bool = False
    cancel_batches: bool = False  # batch mode: cancel submitted batch jobs at the endpoint


@dataclass(frozen=True)
class ReplaceSeeds:
    seeds: tuple[SeedTask, ...]


@dataclass(frozen=True)
class DropTask:
    task_id: int


@dataclass(frozen=True)
class EditTask:
    task_id: int
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool


# -- quality review commands (engine/review.py): typed and encoded like the others; the engine
# and OfflineControl both write them with `apply_review`, and StoreFollower.poll_reviews turns
# what they wrote into the same `ReviewUpdated` events for an attached UI.

@dataclass(frozen=True)
class SetReviewSample:
    """Add a drawn sample to the run's quality review: `task_ids[i]` is shown with its
    instance `instance_indexes[i]` (0-based), in this order. Tasks already in the review keep
    their place and answers."""

    task_ids: tuple[int, ...]
    instance_indexes: tuple[int, ...]


@dataclass(frozen=True)
class ReviewAnswer:
    """Yes (`answer` True) or no to one review question (a `REVIEW_QUESTIONS` value) about a
    sampled task."""

    task_id: int
    question: ReviewQuestion
    answer: bool


@dataclass(frozen=True)
class ReviewSkip:
    """Leave a sampled task out of the review (recorded as skipped)."""

    task_id: int


ReviewCommand = SetReviewSample | ReviewAnswer | ReviewSkip
_REVIEW_NAMES: dict[type, str] = {SetReviewSample: "review_sample",
                                  ReviewAnswer: "review_answer", ReviewSkip: "review_skip"}


def encode_review(command: ReviewCommand) -> tuple[str, dict[str, Any]]:
    """(name, JSON-able args) of a review command."""
    return _REVIEW_NAMES[type(command)], {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in asdict(command).items()}


def decode_review(name: str, args: dict[str, Any]) -> ReviewCommand:
    """The review command `encode_review` wrote; ValueError for an unknown name or question,
    or a sample whose two lists differ in length."""
    if name == "review_sample":
        task_ids = tuple(int(t) for t in args["task_ids"])
        indexes = tuple(int(i) for i in args["instance_indexes"])
        if len(task_ids) != len(indexes):
            raise ValueError(f"review sample: {len(task_ids)} task ids but {len(indexes)} "
                             "instance indexes")
        return SetReviewSample(task_ids, indexes)
    if name == "review_answer":
        question = str(args["question"])
        if question not in REVIEW_QUESTIONS:
            raise ValueError(f"unknown review question {question!r}")
        return ReviewAnswer(int(args["task_id"]), question, bool(args["answer"]))
    if name == "review_skip":
        return ReviewSkip(int(args["task_id"]))
    raise ValueError(f"unknown command {name!r}")


def apply_review(store: RunStore, command: ReviewCommand) -> ev.ReviewUpdated | None:
    """Write a review command to the store (each in one transaction) and return the event that
    tells the views; None when nothing changed (a task not in the review, or nothing new in a
    sample). The engine and `OfflineControl` both apply review commands through this."""
    if isinstance(command, SetReviewSample):
        records = store.add_review_sample(list(zip(command.task_ids, command.instance_indexes,
                                                   strict=True)))
        return ev.ReviewUpdated(tuple(records)) if records else None
    if isinstance(command, ReviewAnswer):
        record = store.answer_review(command.task_id, command.question, command.answer)
    else:
        record = store.skip_review(command.task_id)
    return ev.ReviewUpdated((record,)) if record is not None else None


Command = Pause | Resume | Stop | ReplaceSeeds | DropTask | EditTask | ReviewCommand
_NAMES: dict[type, str] = {Pause: "pause", Resume: "resume", Stop: "stop",
                           ReplaceSeeds: "replace_seeds", DropTask: "drop_task",
                           EditTask: "edit_task"}


def encode(command: Command) -> tuple[str, dict[str, Any]]:
    """(name, JSON-able args) of a command, for the store's commands table."""
    if isinstance(command, (SetReviewSample, ReviewAnswer, ReviewSkip)):
        return encode_review(command)
    name = _NAMES[type(command)]
    if isinstance(command, ReplaceSeeds):
        return name, {"seeds": [seed_to_record(s) for s in command.seeds]}
    if isinstance(command, DropTask):
        return name, {"task_id": command.task_id}
    if isinstance(command, EditTask):
        return name, {"task_id": command.task_id, "instruction": command.instruction,
                      "instances": [asdict(i) for i in command.instances],
                      "is_classification": command.is_classification}
    if isinstance(command, Stop):
        return name, asdict(command)
    return name, {}


def decode(name: str, args: dict[str, Any]) -> Command:
    """The command `encode` wrote; ValueError for an unknown name."""
    if name == "pause":
        return Pause()
    if name == "resume":
        return Resume()
    if name == "stop":
        return Stop(str(args.get("reason") or "stopped"), str(args.get("message") or ""),
                    bool(args.get("now")), bool(args.get("cancel_batches")))
    if name == "replace_seeds":
        return ReplaceSeeds(tuple(seed_from_record(d) for d in args["seeds"]))
    if name == "drop_task":
        return DropTask(int(args["task_id"]))
    if name == "edit_task":
        return EditTask(int(args["task_id"]), args["instruction"],
                        tuple(Instance(i["input"], i["output"]) for i in args["instances"]),
                        bool(args["is_classification"]))
    if name in _REVIEW_NAMES.values():
        return decode_review(name, args)
    raise ValueError(f"unknown command {name!r}")


class RunControl(Protocol):
    """What a UI can ask of a run, whoever runs it."""

    def send(self, command: Command) -> None: ...


def wake_address(run_dir: str | Path) -> str | None:
    """Where the engine of `run_dir` listens for "a command is waiting": an abstract Unix
    datagram socket named after the run directory (Linux; no file, gone with the process), or
    None where there are none (the engine then polls the commands table 4 times a second)."""
    if not sys.platform.startswith("linux"):
        return None
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:32]
    return f"\0selfinstruct-{digest}"


def open_wake_socket(run_dir: str | Path) -> socket.socket | None:
    """The engine's side of `wake_address` (non-blocking), or None when it cannot be had."""
    address = wake_address(run_dir)
    if address is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except OSError:  # taken (another engine of this directory) or not allowed here
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def ring(run_dir: str | Path) -> None:
    """Tell the engine of `run_dir`, if one listens, that a command is waiting (best effort:
    the engine also reads the commands table every few seconds)."""
    address = wake_address(run_dir)
    if address is None:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"!", address)
        except OSError:  # no engine listens, or its queue is full (it will poll)
            pass


class NoEngine(UserError):
    """No process drives the run any more (it ended, or it is gone: `state` "crashed"): a
    pause, resume or stop written to the commands table would wait there for nobody, and a
    later session would read it (a pause held it "paused (by you)")."""

    def __init__(self, run_dir: Path, state: str, pid: int | None) -> None:
        self.state, self.pid = state, pid
        gone = "its engine process is gone (killed or crashed)" if state == RunState.CRASHED \
            else f"it is {state}"
        super().__init__(f"{run_dir}: no engine runs this run ({gone}); resume it with "
                         f"`{command_line('run', '--run-dir', str(run_dir))}`")


class RemoteControl:
    """Commands for an engine in another process, through the store's commands table (and a
    wake-up datagram, `ring`, so the engine reads them at once). A pause, resume or stop for a
    run that no process drives any more is refused (`NoEngine`), never queued; changes to the
    run's data (seed sets, drops, edits, review answers) are kept for the next session, as a
    pending seed set always was."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def send(self, command: Command) -> None:
        store = RunStore(self.run_dir)
        try:
            if isinstance(command, (Pause, Resume, Stop)):
                state, pid = run_status(store)
                if state not in LIVE_STATES:
                    raise NoEngine(self.run_dir, state, pid)
            if isinstance(command, ReplaceSeeds):  # visible to every UI before the engine polls
                store.set_pending_seeds(encode(command)[1]["seeds"])
            store.add_command(*encode(command))
        finally:
            store.close()
        ring(self.run_dir)


class OfflineControl:
    """Commands for a run that no engine runs: changes go to the store directly, each in one
    transaction, and `emit` gets the events the engine would have sent."""

    def __init__(self, run_dir: str | Path, emit: Callable[[ev.Event], None]) -> None:
        self.run_dir = Path(run_dir)
        self.emit = emit

    def send(self, command: Command) -> None:
        if isinstance(command, (Pause, Resume, Stop)):
            raise RuntimeError("the run is not running")
        store = RunStore(self.run_dir)
        try:
            if isinstance(command, ReplaceSeeds):
                new = seed_tasks_to_pool(list(command.seeds), store.max_used_id() + 1)
                for event in seed_set_events(new, *store.apply_seed_set(new),
                                             store.count_tasks("machine")):
                    self.emit(event)
            elif isinstance(command, DropTask):
                dropped = store.drop_task(command.task_id)
                if dropped is not None:
                    self.emit(ev.CandidateRejected.of(dropped[1]))
                    self.emit(ev.TaskDropped(command.task_id, store.count_tasks("machine")))
            elif isinstance(command, EditTask):
                task = store.edit_task(command.task_id, command.instruction,
                                       list(command.instances), command.is_classification)
                if task is not None:
                    self.emit(ev.TaskEdited(task))
            elif isinstance(command, (SetReviewSample, ReviewAnswer, ReviewSkip)):
                review = apply_review(store, command)
                if review is not None:
                    self.emit(review)
        finally:
            store.close()


# -- the seed set -----------------------------------------------------------------------------

def current_seeds(store: RunStore) -> tuple[list[SeedTask], bool]:
    """(seeds, pending): the seed set the next round uses — the pending set recorded by a
    ReplaceSeeds not applied yet, if any (pending True), else the run's active seeds."""
    pending = store.pending_seeds()
    if pending is not None:
        return [seed_from_record(d) for d in pending], True
    return [t.to_seed() for t in store.tasks(status="active", origin="seed")], False


def seed_set_events(new: list[Task], promoted: list[Task], demoted: list[Task],
                    accepted: int) -> list[ev.Event]:
    """What applying a seed set (`RunStore.apply_seed_set`) shows: the new seeds, promoted
    machine tasks leaving the pool, demoted ones back in it (`accepted`: machine tasks now)."""
    events: list[ev.Event] = [ev.SeedsReplaced(tuple(new))]
    events += [ev.TaskDropped(t.id, accepted) for t in promoted]
    events += [ev.TaskEdited(t) for t in demoted]
    if demoted:
        events.append(ev.PoolRecounted(accepted))
    return events


# -- ownership and state ------------------------------------------------------------------------

def check_owner(run_dir: str | Path) -> None:
    """Only the run's owner may attach or send commands; raises UserError otherwise."""
    path = Path(run_dir)
    if not is_run_dir(path):
        raise UserError(f"{path}: not a run directory (no run.sqlite in it)")
    try:
        owner = path.stat().st_uid
        readable = os.access(db_path(path), os.R_OK | os.W_OK)
    except PermissionError:
        raise UserError(f"{path}: permission denied: only the run's owner can attach") from None
    if owner != os.getuid() or not readable:
        raise UserError(f"{path}: belongs to another user (uid {owner}); only the run's owner "
                        "can attach or send commands")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def run_status(store: RunStore) -> tuple[str, int | None]:
    """(state, pid): a live state with a live pid, a final state, "crashed" or "new"."""
    return status_of(store.get_meta("state") or {})


def status_of(meta: dict[str, Any]) -> tuple[str, int | None]:
    """`run_status` of a `state` meta already read: a live state whose process is gone (killed,
    or it crashed: nothing recorded its end) is "crashed". The one rule for `runs`, attached
    UIs (`StoreFollower`) and their commands (`RemoteControl`)."""
    state, pid = meta.get("state", RunState.NEW), meta.get("pid")
    if state in LIVE_STATES and not pid_alive(pid):
        return RunState.CRASHED, pid
    return state, pid


# -- what the screens show ----------------------------------------------------------------------

@dataclass
class RunSnapshot:
    """A run as its screens show it, read in one transaction. `ids`: the largest id of each table
    at that moment, where a `StoreFollower` picks up."""

    run_dir: Path
    config: RunConfig | None
    state: str
    state_meta: dict[str, Any]
    session: dict[str, Any]
    rows: list[tuple[int, int, str, int, int, float, str]]
    rounds: list[RoundStats]
    rejection_counts: dict[str, int]
    recent_rejections: list[RejectionRecord]
    latest_generation: PromptRecord | None
    open_prompts: list[PromptRecord]
    tokens: tuple[int, int]
    retries: dict[str, int]
    errors: int
    ids: dict[str, int] = field(default_factory=dict)
    reviews: list[ReviewRecord] = field(default_factory=list)  # the quality review, in order
    # Candidates open at that moment with ids below ids["tasks"]: accepted later, their tasks
    # arrive below the largest id (`RunStore.open_candidate_ids`)
    open_candidates: set[int] = field(default_factory=set)
    # The last minute (epoch s): tasks accepted, and answers with their tokens (the rates)
    recent_accepted: list[float] = field(default_factory=list)
    recent_answers: list[tuple[float, int, int]] = field(default_factory=list)
    # The run's pauses, (started, ended) epoch seconds (ended None: open): not run time
    pauses: list[tuple[float, float | None]] = field(default_factory=list)
    # Rounds left running by a process that ended (a crash; for a live run, the rounds from
    # before its session started, not closed yet): when that process last recorded work
    # (epoch s, `RunStore.last_activity`), where those rounds' run time ends
    crash_end: float | None = None


def read_snapshot(store: RunStore) -> RunSnapshot:
    with store.read_transaction():
        ids = store.max_ids()
        ids["reviews"] = store.max_review_seq()
        errors = ids.get("errors", 0)
        state, session, rounds = run_status(store)[0], store.get_meta("session") or {}, \
            store.rounds()
        pauses, now = store.pauses(), time.time()
        started = session.get("started")
        # the rates' records: this session's last minute of run time (`Rates.load`)
        since = window_start(started, pauses, now) \
            if isinstance(started, (int, float)) else now - WINDOW_SECONDS
        # (a live session's start: rounds an earlier process left running, not yet closed)
        before = None if state not in LIVE_STATES else \
            started if isinstance(started, (int, float)) else now
        crash_end = store.last_activity(before) if any(
            r.status == "running" and (before is None or r.started < before)
            for r in rounds) else None
        return RunSnapshot(
            run_dir=store.run_dir, config=store.config(), state=state,
            state_meta=store.get_meta("state") or {}, session=session,
            rows=store.task_rows(), rounds=rounds,
            rejection_counts=store.rejection_counts(),
            recent_rejections=store.recent_rejections(HISTORY_REJECTIONS),
            latest_generation=store.latest_answered("generate"),
            open_prompts=store.unfinished_prompts(), tokens=store.token_totals(),
            retries=store.retry_counts(), errors=errors, ids=ids, reviews=store.reviews(),
            open_candidates=store.open_candidate_ids(ids.get("tasks", 0)),
            recent_accepted=store.accepted_since(since),
            recent_answers=store.answered_since(since), pauses=pauses, crash_end=crash_end)


def state_events(old: dict[str, Any], new: dict[str, Any], snapshot_config: RunConfig | None,
                 run_dir: Path, session: dict[str, Any], accepted: int,
                 seeds: int, pauses: list[tuple[float, float | None]] | None = None
                 ) -> list[ev.Event]:
    """The events a change of the `state` meta stands for (what the engine emitted then),
    each at the time the engine recorded (`Event.ts`): a pause at its start, a resume at its
    end, from `pauses` (`RunStore.pauses`; the state's `ts` is rewritten by the heartbeat);
    a session's start at the `session` meta's `started`; an end at the state's `ts`."""
    before, after = old.get("state"), new.get("state")
    new_session = new.get("pid") != old.get("pid")
    if after == before and (after not in (RunState.RUNNING, RunState.PAUSED) or not new_session):
        return []  # (running or paused under a new pid: a crashed run resumed by another one)
    target = snapshot_config.target if snapshot_config else 0
    at = new.get("ts")
    ts = float(at) if isinstance(at, (int, float)) else time.time()
    begun = session.get("started")
    if pauses and after == RunState.PAUSED and pauses[-1][1] is None:
        ts = pauses[-1][0]
        if new_session and isinstance(begun, (int, float)):
            # (a pause an earlier process ended in goes on into a session started paused)
            ts = max(ts, begun)
    elif pauses and before == RunState.PAUSED and \
            after in (RunState.RUNNING, RunState.STOPPING) and \
            pauses[-1][1] is not None:  # (resumed, or stopping, while paused)
        ts = pauses[-1][1]
    # A new pid in a live state is a new session: it started (as the engine emits it, also
    # when it starts paused: the rates and the clock start again, then hold)
    started: list[ev.Event] = [] if snapshot_config is None else [ev.RunStarted.of(
        str(run_dir), snapshot_config, session.get("endpoint") or snapshot_config.base_url,
        accepted, seeds, bool(session.get("resumed")),
        started=begun if isinstance(begun, (int, float)) else None)]
    if after == RunState.PAUSED:
        return (started if new_session else []) + [
            ev.Paused(new.get("reason") or "", bool(new.get("by_errors")),
                      bool(new.get("needs_restart")), ts=ts)]
    if after == RunState.RUNNING:
        return [ev.Resumed(ts=ts)] if before == RunState.PAUSED and not new_session \
            else started
    if after == RunState.STOPPING:
        return [ev.Stopping(ts=ts)]
    if after in (RunState.FINISHED, RunState.STOPPED, RunState.ERROR, RunState.FAILED):
        reason = new.get("finish_reason") or {"finished": "target",
                                              "error": "error"}.get(after, "stopped")
        return [ev.Finished(ev.FinishReason(reason), accepted, target,
                            str(new.get("message") or ""), ts=ts)]
    return []


class StoreFollower:
    """Polls the store for rows committed after a snapshot and emits them as engine events."""

    def __init__(self, snapshot: RunSnapshot, emit: Callable[[ev.Event], None],
                 interval: float = 0.05) -> None:
        self.run_dir = snapshot.run_dir
        self.emit = emit
        self.interval = interval
        self.config = snapshot.config
        self.target = snapshot.config.target if snapshot.config else 0
        self.last = dict(snapshot.ids)
        self.waiting = set(snapshot.open_candidates)  # see RunSnapshot.open_candidates
        self.open_prompts = {p.id for p in snapshot.open_prompts}
        self.finished_rounds = {r.round for r in snapshot.rounds if r.status != "running"}
        self.state = dict(snapshot.state_meta)
        # (state, pid) of the process last found gone (`Crashed` emitted), not to say it twice
        self.lost: tuple[Any, Any] | None = (
            (self.state.get("state"), self.state.get("pid"))
            if snapshot.state == RunState.CRASHED else None)
        self.session = dict(snapshot.session)
        self.endpoints: Any = None
        self.accepted: int | None = None
        self.seen_changes: set[tuple[int, str, float]] = set()
        self.last_update = time.time()
        self.batch_updates: dict[int, float] = {}  # batch job id -> its `updated` last emitted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="store-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        store = RunStore(self.run_dir, readonly=True)
        try:
            while not self._stop.is_set():
                try:
                    self.poll(store)
                except Exception:  # a locked or busy database: try again next time
                    pass
                self._stop.wait(self.interval)
        finally:
            store.close()

    def poll(self, store: RunStore) -> None:
        emit = self.emit
        for job in store.batches():  # batch mode: the same progress the engine emits
            if self.batch_updates.get(job.id) != job.updated and (
                    job.pending or job.id in self.batch_updates):
                self.batch_updates[job.id] = job.updated
                emit(ev.BatchProgress(job))
        with store.read_transaction():  # the tasks and the candidates of one moment
            new_tasks = store.tasks(status="active", after_id=self.last.get("tasks", 0))
            if self.waiting:
                new_tasks = store.tasks_by_id(self.waiting) + new_tasks
            mark = max([self.last.get("tasks", 0), *(t.id for t in new_tasks)])
            self.waiting = store.open_candidate_ids(mark)
        changed = store.task_changes(self.last_update - 1)
        # Counting is the one query that grows with the pool: only when something changed.
        if new_tasks or changed or self.accepted is None:
            self.accepted = store.count_tasks("machine")
        accepted = self.accepted
        seeds_changed = False
        for task in new_tasks:
            self.last["tasks"] = max(self.last.get("tasks", 0), task.id)
            if task.origin == "machine":
                emit(ev.TaskAccepted.of(task, accepted, self.target))
            else:
                seeds_changed = True
        if seeds_changed:
            emit(ev.SeedsReplaced(tuple(store.tasks(status="active", origin="seed"))))
        now = time.time()
        for change in changed:
            if change in self.seen_changes:
                continue
            self.seen_changes.add(change)
            task_id, status, _ = change
            if status in ("dropped", "promoted"):
                emit(ev.TaskDropped(task_id, accepted))
            elif status == "active":
                edited = store.task(task_id)
                if edited is not None:
                    emit(ev.TaskEdited(edited))
                    emit(ev.PoolRecounted(accepted))  # an edit, or a demoted seed back
        self.last_update = now
        for rejection in store.rejections_after(self.last.get("rejections", 0)):
            self.last["rejections"] = rejection.id
            emit(ev.CandidateRejected.of(rejection))
        for retry in store.retries_after(self.last.get("retries", 0)):
            self.last["retries"] = retry.id
            emit(ev.RequestRetried.of(retry))
        for error in store.errors_after(self.last.get("errors", 0)):
            self.last["errors"] = error.id
            emit(ev.RequestError.of(error))
        for rnd in store.rounds(since=max(self.finished_rounds, default=0) - 3):
            if rnd.status != "running" and rnd.round not in self.finished_rounds:
                self.finished_rounds.add(rnd.round)
                emit(ev.RoundFinished.of(rnd, self.target))
        for prompt in store.prompts_after(self.last.get("prompts", 0)):
            self.last["prompts"] = prompt.id
            emit(ev.PromptSent.of(prompt))
            if prompt.finished is None:
                self.open_prompts.add(prompt.id)
            else:
                emit(ev.prompt_finished(prompt))
        if self.open_prompts:
            for prompt in store.prompts_by_id(sorted(self.open_prompts)):
                if prompt.finished is not None:
                    self.open_prompts.discard(prompt.id)
                    emit(ev.prompt_finished(prompt))
        self.poll_reviews(store)
        endpoints = store.get_meta("endpoints")  # a pool's figures, saved every few seconds
        if endpoints and endpoints != self.endpoints:
            self.endpoints = endpoints
            emit(ev.EndpointsReported(tuple(EndpointStats.from_dict(d) for d in endpoints)))
        state = store.get_meta("state") or {}
        if (state.get("state"), state.get("pid")) != (self.state.get("state"),
                                                        self.state.get("pid")):
            session = store.get_meta("session") or {}
            # A new session may have changed the safe settings (--target, ...): read them again
            self.config = store.config() or self.config
            self.target = self.config.target if self.config else self.target
            for event in state_events(self.state, state, self.config, self.run_dir, session,
                                      accepted, store.count_tasks("seed"), store.pauses()):
                emit(event)
        self.state = state
        self.check_alive(store)

    def check_alive(self, store: RunStore) -> None:
        """A live state whose process is gone (`status_of`, the rule of `selfinstruct runs`)
        is a `Crashed` event, once per process: nothing else would ever change the state (a
        killed engine records no end) and the UI would show it running forever."""
        key = (self.state.get("state"), self.state.get("pid"))
        if key == self.lost or status_of(self.state)[0] != RunState.CRASHED:
            return
        # Read again now that the process is gone: an engine that recorded its end and exited
        # between the read above and the pid check did not crash (the next poll shows its end).
        again = store.get_meta("state") or {}
        if (again.get("state"), again.get("pid")) != key:
            return
        self.lost = key
        self.emit(ev.Crashed(self.state.get("pid"), store.last_activity()))

    def poll_reviews(self, store: RunStore) -> None:
        """Review records written since the last poll, as one `ReviewUpdated` (what the engine
        or an offline control emitted for them)."""
        changed = store.reviews(after_seq=self.last.get("reviews", 0))
        if changed:
            self.last["reviews"] = max(r.seq for r in changed)
            self.emit(ev.ReviewUpdated(tuple(changed)))
