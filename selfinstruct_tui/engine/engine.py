"""The Self-Instruct bootstrap loop.

A round sends `prompts_per_round` instruction-generation prompts (6 seed + 2 machine examples,
shuffled). Their candidates go through the heuristic filters and the near-duplicate filter in a
fixed order (prompt order, then list order); survivors are reserved in the similarity index (so
later candidates of the same round are compared with them) and get a classification request and
then an instance request. A task that keeps at least one instance joins the pool.

Every candidate is accounted for: when its round is done, candidates = accepted + rejected (by a
named `RejectionReason`, stored with the raw fragment of the answer it came from) + surplus (not
started because the target was already in reach). Finished work is never thrown away: a task that
completes is committed even if the pool passes the target.

Rounds overlap so that the endpoint is never idle between them, yet a run is reproducible for a
deterministic endpoint and a fixed --random-seed:
* round r samples machine examples only from rounds <= r-2, which are final when r is created;
* round r filters its candidates only after round r-1 has filtered its own (the index then holds
  exactly the seeds, the pool and the reservations of rounds < r);
* whether a candidate is surplus depends on reservations, never on which request finished first;
* a reserved candidate that dies at the instance stage leaves the index at a fixed point (before
  round r+2 filters), not whenever its request happens to fail;
* accepted tasks are committed in task-id order, with the other writes of their loop iteration
  (`RunStore.defer_commits`): a crash before that commit leaves their candidates open.

Spend guards: rounds that add nothing back off (1, 2, 4 ... 30 s) and, after
`max_fruitless_requests` requests in a row that added nothing, pause the run with the counts per
reason and the last answer; `max_cost` / `max_tokens` stop it cleanly.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TypeVar, cast

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.batch import (
    Batcher,
    BatchSettings,
    OpenAIBatchTransport,
    answers,
    command_logs,
    custom_id,
    line_response,
    make_transport,
)
from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.control import (
    Command,
    DropTask,
    EditTask,
    Pause,
    ReplaceSeeds,
    Resume,
    ReviewAnswer,
    ReviewCommand,
    ReviewSkip,
    RunState,
    SetReviewSample,
    Stop,
    apply_review,
    decode,
    open_wake_socket,
    seed_set_events,
)
from selfinstruct_tui.engine.endpoints import EndpointChange, EndpointSpec
from selfinstruct_tui.engine.events import USER_PAUSE, FinishReason
from selfinstruct_tui.engine.filters import (
    FilterSettings,
    InstanceDrop,
    RejectionReason,
    check_instruction,
    clean_instances,
)
from selfinstruct_tui.engine.gc_policy import engine_gc
from selfinstruct_tui.engine.guards import FailureWatch, SpendGuard
from selfinstruct_tui.engine.llm import (
    Cause,
    ClientSettings,
    LLMClient,
    LLMResponse,
    RequestFailed,
    SamplingParams,
    estimate_tokens,
)
from selfinstruct_tui.engine.parsing import (
    Fragment,
    ListItem,
    ParsedInstances,
    ParsedList,
    is_reasoning_only,
    parse_classification,
    reasoning_only_detail,
)
from selfinstruct_tui.engine.pool import Pool
from selfinstruct_tui.engine.prompts import PromptStyle, Request, instructions_asked, style_for
from selfinstruct_tui.engine.rates import active_seconds_of
from selfinstruct_tui.engine.requests import ABANDONED, Asked, RequestRecorder
from selfinstruct_tui.engine.seeds import (
    Instance,
    SeedTask,
    seed_from_record,
    seed_to_record,
)
from selfinstruct_tui.engine.similarity import SimilarityResult, make_index
from selfinstruct_tui.engine.store import (
    OPEN_REASONS,
    BatchRecord,
    CandidateRecord,
    PromptKind,
    PromptRecord,
    RejectionRecord,
    RoundStats,
    RunStore,
    seed_tasks_to_pool,
)
from selfinstruct_tui.engine.task import Origin, SimilarTask, Task

log = logging.getLogger(__name__)

CONTROL_POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 2.0
# Round sizes near the end follow the yield of the latest rounds that answered this many
# generation prompts (`_recent_yield`); _totals keeps this many rounds for it.
RECENT_PROMPTS = 32
TOTALS_KEPT = 16
# A round expects the share of its reservations that became tasks before (`_expected_share`)
# once this many were seen, and never less than MIN_SHARE (a few unlucky rounds must not make
# the last one reserve many times what it needs) ...
MIN_RESERVED_FOR_SHARE = 20
MIN_SHARE = 0.25
# ... and reserves at most this share of the target (or MIN_SLACK) beyond it: the most a run
# can end past its target when every reservation becomes a task after all.
OVERSHOOT_SHARE = 0.05
MIN_SLACK = 4
# Before the yield is known, a batch round (a wait of up to a day) asks for this many times the
# prompts that would cover what is still needed if every instruction asked for were kept: the
# early yield is ~40% of those (2.9 tasks of 7 asked per prompt, measured), so one round
# usually covers a small target; with --target 10 a round sent 100 prompts for ~700 candidates.
BATCH_FIRST_ROUNDS_MARGIN = 4
CLASSIFY_RETRY_TOKENS = 32  # a classification answer cut by max_tokens is asked again with this


@dataclass
class _Round:
    number: int
    stats: RoundStats
    filtered: asyncio.Event
    finalized: asyncio.Event
    task_ids: list[int]
    reserved: int = 0  # candidates that passed the filters and were started
    # the share of reservations expected to become tasks (`Engine._expected_share`), fixed when
    # the round is created
    expect: float = 1.0
    unanswered: int = 0  # generation prompts that brought no answer (failed, abandoned)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


P = TypeVar("P", ParsedList, ParsedInstances)
CONTENT_FILTER_DETAIL = ("the endpoint's content filter stopped the answer (finish_reason "
                         "content_filter)")


def cut_short(resp: LLMResponse) -> bool:
    """The answer stopped before the model finished it: the token limit, or a content filter
    (OpenAI, Azure: the text so far, or none)."""
    return resp.finish_reason in ("length", "content_filter")


def filtered(parsed: P, resp: LLMResponse) -> P:
    """`parsed` with what a content filter cut (its cut or unreadable part) named as such,
    not as a layout the parser could not read."""
    if resp.finish_reason != "content_filter":
        return parsed
    parsed.discarded = [
        Fragment(f.text, RejectionReason.CONTENT_FILTER, CONTENT_FILTER_DETAIL)
        if f.reason in (RejectionReason.UNPARSEABLE, RejectionReason.TRUNCATED) else f
        for f in parsed.discarded]
    return parsed


class Engine:
    """Drives one run; a `RunControl`: `send(command)` is thread-safe, as are the shortcuts
    pause, resume, stop and stop_now."""

    def __init__(self, store: RunStore, config: RunConfig, *, api_key: str = "",
                 base_url: str | None = None, index_kind: str = "pruned",
                 routes: dict[str, str] | None = None) -> None:
        self.store = store
        self.config = config
        self.api_key = api_key
        self.base_url = base_url or config.base_url
        self.routes = routes or {}  # request kind -> base URL (the embedded model's processes)
        self.bus = ev.EventBus()
        self.filters = FilterSettings(config.min_words, config.max_words,
                                      reject_non_ascii_start=config.filter_non_ascii,
                                      tokenizer=config.tokenizer)
        self.pool = Pool(make_index(index_kind, config.threshold, config.tokenizer))
        self.style: PromptStyle = style_for(config.api)
        self.state: str = RunState.STARTING
        self.paused: ev.Paused | None = None  # why the run is paused (None: it is not)
        self.start_pause: ev.Paused | None = None  # `start_paused`: the pause the run begins in
        # this session's pauses ((started, ended) epoch seconds; ended None: open), left out of
        # each round's time as the store's are out of the elapsed time
        self._pauses: list[tuple[float, float | None]] = []
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._stop_reason = FinishReason.STOPPED
        self._stop_message = ""
        self._wakeup: asyncio.Event | None = None  # ends the backoff between empty rounds
        self._client: LLMClient | None = None
        self._batcher: Batcher | None = None  # batch mode, or jobs an earlier session left pending
        self._cancelling: asyncio.Task[None] | None = None  # a stop that cancels batch jobs
        self.batch_settings = BatchSettings(
            poll_seconds=config.batch_poll_seconds, command=config.batch_command,
            lost_after_seconds=config.batch_lost_after_seconds)
        self._committed = 0
        self._next_id = 1
        self._rounds: dict[int, _Round] = {}
        self._pending: collections.deque[int] = collections.deque()
        self._resolved: dict[int, Task] = {}  # done, waiting in `_pending` to be committed
        # entries of `_pending` whose candidate was rejected (an id may be queued again when its
        # candidate is taken up): `_flush` drops them when it reaches them, first ones first, as
        # removing each from the middle of the deque did by scanning thousands of ids at C=1024
        self._gone: collections.Counter[int] = collections.Counter()
        self._round_of: dict[int, int] = {}
        self._similar: dict[int, SimilarityResult] = {}
        self._pending_seeds: list[SeedTask] | None = None
        self.guard = SpendGuard(config)
        pool = [e["base_url"] for e in config.endpoint_list()] if len(config.endpoints) > 1 \
            else [self.base_url]
        self.failures = FailureWatch(config.error_pause_seconds, ", ".join(pool),
                                     config.batch_command,
                                     command_logs(store.run_dir))
        self._requests: RequestRecorder | None = None
        self._revivable = True  # open candidates may wait in the store (a stop, a crash)
        self._spent: dict[int, int] = {}  # candidate task id -> requests sent for it
        self._taken: set[int] = set()  # task ids of open candidates taken up this session
        # round -> (generation prompts, accepted) of every round up to it (the yield per prompt)
        self._totals: dict[int, tuple[int, int]] = {}
        # round -> (reserved, accepted) of this session's rounds up to it (the share of started
        # candidates that became tasks)
        self._kept: dict[int, tuple[int, int]] = {}
        self.finished: ev.Finished | None = None

    # -- thread-safe commands (RunControl) ------------------------------------------------------
    def send(self, command: Command) -> None:
        """Queue a command; it is applied on the engine's loop (any thread may call this)."""
        self._commands.put(command)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._drain_commands)
            except RuntimeError:
                pass

    def pause(self) -> None:
        self.send(Pause())

    def resume(self) -> None:
        self.send(Resume())

    def stop(self, reason: FinishReason = FinishReason.STOPPED, message: str = "") -> None:
        """Stop: nothing new is sent; requests in flight get `stop_grace` seconds to finish."""
        self.send(Stop(reason.value, message))

    def stop_now(self) -> None:
        """Stop at once: requests in flight are abandoned (and recorded as abandoned)."""
        self.send(Stop(now=True))

    def record_quit(self, message: str) -> None:
        """The process quits at once (a third Ctrl-C) before the engine could end: record the
        run as stopped by the user with `message`, so that `runs` and attached UIs say that
        instead of "crashed" (a live state whose process is gone). Called from the thread
        that quits, as the process ends; what the engine was doing is abandoned (its requests
        in flight are recovered as interrupted by the next session)."""
        if self.finished is None:
            self.finished = ev.Finished(FinishReason.STOPPED, self._committed,
                                        self.config.target, message)
        at = self._set_state(FinishReason.STOPPED.state)
        self.finished = dataclasses.replace(self.finished, ts=at)
        self.store.flush()

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                self._apply(command)
            except Exception as exc:  # a bad command must not kill the run
                log.exception("command %r failed", command)
                self.bus.emit(ev.RequestError(None, "command", f"{command!r} failed: {exc}"))

    def _apply(self, command: Command) -> None:
        if isinstance(command, Pause):
            self._do_pause()
        elif isinstance(command, Resume):
            self._do_resume()
        elif isinstance(command, Stop):
            if command.cancel_batches and self._batcher is not None and self._loop is not None:
                self._cancelling = self._loop.create_task(self._cancel_batches())
            if command.now:
                self._do_stop_now()
            else:
                self._do_stop(FinishReason(command.reason), command.message)
        elif isinstance(command, ReplaceSeeds):
            self._receive_seeds(command)
        elif isinstance(command, DropTask):
            self._do_drop_task(command.task_id)
        elif isinstance(command, EditTask):
            self._do_edit_task(command.task_id, command.instruction, list(command.instances),
                               command.is_classification)
        elif isinstance(command, (SetReviewSample, ReviewAnswer, ReviewSkip)):
            self._do_review(command)

    def _set_state(self, state: str, at: float | None = None) -> float:
        """Record the run's `state` at `at` (epoch s; None: now) and return that time: the
        `ts` of the event that says it (`Paused`, `Resumed`, `Finished`), the same time the
        store's pauses and state hold, from which every UI takes its time figures."""
        before, self.state = self.state, state
        now = time.time() if at is None else at
        # The pauses, left out of the elapsed time (the store's) and of each round's time (this
        # session's). A pause an earlier process left open (it ended paused) ends when this
        # session starts.
        pausing = state == RunState.PAUSED and before != RunState.PAUSED
        unpausing = state != RunState.PAUSED and before in (RunState.PAUSED, RunState.STARTING)
        if pausing:
            self._pauses.append((now, None))
        elif unpausing and self._pauses and self._pauses[-1][1] is None:
            self._pauses[-1] = (self._pauses[-1][0], max(self._pauses[-1][0], now))
        if self.store.unwritable is None:
            if pausing:
                self.store.start_pause(now)
            elif unpausing:
                self.store.end_pause(now)
        meta = {"state": state, "pid": os.getpid(), "ts": now,
                "reason": self.paused.reason if self.paused else "",
                "by_errors": bool(self.paused and self.paused.by_errors),
                "needs_restart": bool(self.paused and self.paused.needs_restart)}
        if self.finished is not None:
            meta["finish_reason"] = self.finished.reason.value
            meta["message"] = self.finished.message
        if self.store.unwritable is None:  # (else the state stays as last written: resuming
            self.store.set_meta("state", meta)  # the run then recovers it as after a crash)
        return now

    def start_paused(self, paused: ev.Paused | None = None) -> None:
        """Make `run` begin paused (call it before `run`): the run's first state is "paused"
        with `paused`, and no request is sent until a Resume (an attached UI's p). None: the
        pause the run's last process ended in, if it ended paused (its reason, by errors or
        by the user), else a pause by the user. A run detached while paused goes on so: one
        paused by a failing endpoint or a spend guard was said to be "paused by the user",
        which hid why."""
        if paused is None:
            last = self.store.get_meta("state") or {}
            reason = str(last.get("reason") or "")
            paused = ev.Paused(reason, bool(last.get("by_errors")),
                               bool(last.get("needs_restart"))) \
                if reason and last.get("state") != RunState.FAILED else ev.Paused(USER_PAUSE)
        self.start_pause = paused

    def _hold(self, paused: ev.Paused) -> None:
        """Nothing new is sent (requests, batch polls) until `_do_resume`."""
        assert self._client is not None
        self._client.pause()
        if self._batcher is not None:
            self._batcher.pause()
        self.paused = paused

    def _do_pause(self, reason: str = USER_PAUSE, by_errors: bool = False,
                  needs_restart: bool = False) -> None:
        if self._client is None or self.state in (RunState.STOPPING, RunState.FINISHED):
            return
        paused = ev.Paused(reason, by_errors, needs_restart)
        self._hold(paused)
        self.bus.emit(dataclasses.replace(paused, ts=self._set_state(RunState.PAUSED)))

    def _do_resume(self) -> None:
        if self._client is None or self.state != RunState.PAUSED:
            return
        self.failures.success()
        self.guard.reset()
        self.paused = None
        self._client.resume()
        if self._batcher is not None:
            self._batcher.resume()
        self.bus.emit(ev.Resumed(ts=self._set_state(RunState.RUNNING)))

    def _do_stop(self, reason: FinishReason = FinishReason.STOPPED, message: str = "",
                 grace: float | None = None) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        self._stop_reason = reason
        self._stop_message = message
        if self._client is not None:
            self._client.abandon_pending(self.config.stop_grace if grace is None else grace)
        if self._batcher is not None:
            self._batcher.stop()  # submitted batches stay recorded: the next session polls them
        if self._wakeup is not None:
            self._wakeup.set()
        at = self._set_state(RunState.STOPPING) if self.state != RunState.FINISHED else None
        self.bus.emit(ev.Stopping(cancel_batches=self._cancelling is not None,
                                  now=grace == 0.0, **({"ts": at} if at is not None else {})))

    def _do_stop_now(self) -> None:
        if not self._stop_requested:
            self._do_stop(grace=0.0)
        elif self._client is not None:
            self._client.abandon_pending(0.0)

    def _do_drop_task(self, task_id: int) -> None:
        dropped = self.store.drop_task(task_id)
        task = self.pool.drop(task_id)
        if dropped is None or task is None:
            return
        if task.origin == Origin.MACHINE:
            self._committed -= 1
        self.bus.emit(ev.CandidateRejected.of(dropped[1]))
        self.bus.emit(ev.TaskDropped(task_id, self._committed))

    def _do_edit_task(self, task_id: int, instruction: str, instances: list[Instance],
                      is_classification: bool) -> None:
        task = self.store.task(task_id)  # whole: the pool keeps a machine task's text only
        if task is None:
            return
        task.apply_edit(instruction, instances, is_classification)
        if not self.pool.edit(task):
            return
        self.store.update_task(task)
        self.bus.emit(ev.TaskEdited(task))

    def _do_review(self, command: ReviewCommand) -> None:
        """Quality review: the store keeps the sample and the answers; the run is unaffected."""
        event = apply_review(self.store, command)
        if event is not None:
            self.bus.emit(event)

    # -- set-up ---------------------------------------------------------------------------------
    def _load_pool(self) -> None:
        self.pool.load(self.store.iter_tasks())  # one row at a time: the pool keeps little
        self._committed = self.pool.machine_count
        self._load_pending_seeds()

    def _load_totals(self) -> None:
        """The run's totals so far (spent tokens, requests and tasks per round) and the next
        task id, once the pending batch jobs' answers are recorded."""
        self._next_id = self.store.max_used_id() + 1
        self.guard.before = self.store.token_totals()
        prompts = accepted = 0
        unanswered = self.store.unanswered_prompts("generate")
        for r in self.store.rounds():
            prompts += max(0, r.prompts - unanswered.get(r.round, 0))
            accepted += r.accepted
            self._totals[r.round] = (prompts, accepted)

    # -- the seed set ----------------------------------------------------------------------------
    def _receive_seeds(self, command: ReplaceSeeds) -> None:
        """A new seed set: recorded as the store's pending seeds at once (a crash keeps it, and
        every UI edits it from there), applied when the next round is created."""
        self._pending_seeds = list(command.seeds)
        self.store.set_pending_seeds([seed_to_record(s) for s in command.seeds])

    def _load_pending_seeds(self) -> None:
        """A pending seed set left by the last process (it stopped or crashed before the next
        round) is taken up; `run_async` applies it at start-up, before the first round."""
        records = self.store.pending_seeds()
        if records is not None and self._pending_seeds is None:
            self._pending_seeds = [seed_from_record(d) for d in records]

    def _apply_pending_seeds(self) -> None:
        seeds, self._pending_seeds = self._pending_seeds, None
        if seeds is None:
            return
        new = seed_tasks_to_pool(seeds, self._next_id)
        promoted, demoted = self.store.apply_seed_set(new, [seed_to_record(s) for s in seeds])
        # only the seeds the edit inserted took ids (apply_seed_set renumbers them)
        self._next_id = max([self._next_id - 1, *(t.id for t in new)]) + 1
        self.pool.replace_seeds(new)
        for task in promoted:
            if self.pool.drop(task.id) is not None:
                self._committed -= 1
        for task in demoted:
            if self.pool.restore(task):
                self._committed += 1
        for event in seed_set_events(new, promoted, demoted, self._committed):
            self.bus.emit(event)

    def _client_settings(self) -> ClientSettings:
        c = self.config
        window = c.context_window or self.store.get_meta("context_window") or None
        endpoints = self._endpoint_specs()
        # A pool: --rpm is each endpoint's default limit (endpoint_list), not a shared one.
        rpm = None if endpoints else c.requests_per_minute or None
        return ClientSettings(
            base_url=self.base_url, model=c.model, api=c.api, api_key=self.api_key,
            key_env=c.key_env, concurrency=c.concurrency, request_timeout=c.request_timeout,
            connect_timeout=c.connect_timeout,
            max_retries=c.max_retries, requests_per_minute=rpm,
            tokens_per_minute=c.tokens_per_minute or None, context_window=window,
            structured_output=c.structured_output if self.style.supports_structured else "off",
            routes=dict(self.routes), endpoints=endpoints, extra_body=dict(c.extra_body),
            down_after=c.error_pause_seconds)

    # -- a pool of endpoints (engine/endpoints.py) ----------------------------------------------
    def _endpoint_specs(self) -> list[EndpointSpec]:
        """The pool's endpoints, each with the key read from its key_env ([] for one)."""
        c = self.config
        if len(c.endpoints) < 2:
            return []
        return [EndpointSpec(
            e["base_url"], e["model"], e["key_env"], e["concurrency"],
            e["requests_per_minute"] or None,
            api_key=self.api_key if e["key_env"] == c.key_env else
            os.environ.get(e["key_env"], "")) for e in c.endpoint_list()]

    def _on_endpoint_change(self, change: EndpointChange) -> None:
        """An endpoint taken out or dropped is recorded among the errors (named reason); one
        that comes back is a notice. The endpoints' figures are saved at once."""
        if change.what == "back":
            self.bus.emit(ev.Notice(change.message))
        else:
            self.bus.emit(ev.RequestError.of(self.store.add_error(
                None, change.kind, change.message, change.base_url or None)))
        self._report_endpoints()
        if change.what == "all_down" and self.state == RunState.RUNNING:
            self._do_pause(change.message, by_errors=True)

    def _report_endpoints(self) -> None:
        """Per endpoint: in flight, requests/s, errors, median latency (the store's meta
        "endpoints", read by attached UIs, and an `EndpointsReported` event)."""
        if self._client is None or self._client.endpoints is None:
            return
        stats = tuple(self._client.endpoint_stats())
        self.store.set_meta("endpoints", [s.to_dict() for s in stats])
        self.bus.emit(ev.EndpointsReported(stats))

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> ev.Finished:
        """Run to the target (or until stopped) on a fresh event loop in this thread."""
        return asyncio.run(self.run_async())

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="selfinstruct-engine", daemon=True)
        thread.start()
        return thread

    async def run_async(self) -> ev.Finished:
        """Run to the target (or until stopped) on the running loop. While it runs, the young
        garbage-collection threshold is raised (`gc_policy`) and the store groups the commits
        of what may wait for the end of the loop iteration (`RunStore.defer_commits`)."""
        loop = asyncio.get_running_loop()
        with engine_gc():
            self.store.defer_commits(loop.call_soon)
            self.store.on_unwritable = self._store_unwritable
            try:
                return await self._run_async()
            finally:
                self.store.on_unwritable = None
                self.store.defer_commits(None)

    def _store_unwritable(self, message: str) -> None:
        """The store cannot be written (`RunStore.unwritable`: a full disk, an I/O error): the
        run stops at once, as an error with that message. Requests in flight are abandoned and
        none is sent after (an answer that cannot be recorded would be paid for again by the
        next session); what the store holds is resumed as after a crash."""
        loop = self._loop
        if loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if not on_loop:
            loop.call_soon_threadsafe(self._store_unwritable, message)
            return
        self.bus.emit(ev.RequestError(None, "store", message))
        if self._stop_requested:  # a stop already under way: it becomes this one, at once
            self._stop_reason, self._stop_message = FinishReason.ERROR, message
            self._do_stop_now()
        else:
            self._do_stop(FinishReason.ERROR, message, grace=0.0)

    async def _run_async(self) -> ev.Finished:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._client = LLMClient(self._client_settings())
        self._client.on_endpoint_change = self._on_endpoint_change
        self._requests = RequestRecorder(self._client, self.store, self.bus, self.guard,
                                         self._on_failure, self.failures.success)
        if self.config.uses_batch or self.store.batches(pending_only=True):
            # A run resumed out of batch mode (--no-batch) still reads the jobs it sent
            settings = self._client_settings()
            self._batcher = Batcher(self.store, settings, self.batch_settings,
                                    make_transport(settings, self.batch_settings),
                                    self._on_batch_progress, self._on_poll_failed)
            if self.config.uses_batch:
                self._requests.batcher = self._batcher
        reason = FinishReason.STOPPED
        watcher: asyncio.Task[None] | None = None
        try:
            # The pool's tasks do not depend on what pending batch jobs answer: the run is
            # said to have started, and attached UIs are heard, while those jobs are polled
            # (at an endpoint's batch window, hours)
            self._load_pool()
            stale = self._drop_stale_run_commands()  # before any UI can see this session
            resumed = self.store.max_round() > 0
            session_started = time.time()  # (what the store holds from before: earlier ones')
            self.store.set_meta("session", {"endpoint": self.base_url, "resumed": resumed,
                                            "started": session_started, "pid": os.getpid(),
                                            "endpoints": [e["base_url"] for e in
                                                          self.config.endpoint_list()]})
            if self.start_pause is not None:  # paused from its first state: never "running"
                # (from the session's start; the same object: `is engine.start_pause` says so)
                self.start_pause = dataclasses.replace(self.start_pause, ts=session_started)
                self._hold(self.start_pause)
            # (a session started paused is paused from its start: every UI's figures say so)
            self._set_state(RunState.PAUSED if self.paused else RunState.RUNNING,
                            at=session_started)
            self.bus.emit(ev.RunStarted.of(str(self.store.run_dir), self.config, self.base_url,
                                           self._committed, self.pool.seed_count, resumed,
                                           started=session_started))
            if self.paused is not None:
                self.bus.emit(self.paused)
            if stale:
                self.bus.emit(ev.Notice(
                    f"{' and '.join(stale)} sent to an earlier process of this run that ended "
                    "before reading it: not applied, this session runs (pause or stop it "
                    "again if you still want to)"))
            self._drain_commands()
            watcher = asyncio.create_task(self._watch_control())
            if self._batcher is not None:
                await self._read_pending_batches()
            before = self.store.max_ids().get("rejections", 0)
            interrupted = self.store.recover_interrupted(before=session_started)
            self._load_totals()  # what the batch jobs' answers changed: tokens, rounds
            if interrupted:
                # Shown as rounds that ended: their rows, and their candidates kept open (a UI
                # that read the store before this had them as running, and never saw them end)
                for rejection in self.store.rejections_after(before):
                    self.bus.emit(ev.CandidateRejected.of(rejection))
                for stats in self.store.rounds(since=min(interrupted) - 1):
                    if stats.round in interrupted:
                        self.bus.emit(ev.RoundFinished(stats, self._committed,
                                                       self.config.target, earlier=True))
                self.bus.emit(ev.Notice(
                    f"round(s) {', '.join(map(str, interrupted))} were interrupted by the end of "
                    "the last process; their open candidates are taken up again"))
            self._apply_pending_seeds()  # a set the last process recorded and did not apply
            if resumed and self._committed >= self.config.target:
                self.bus.emit(ev.Notice(
                    f"the run already holds {self._committed} machine tasks, at or above its "
                    f"target of {self.config.target}: nothing to generate (give a higher "
                    "--target to go on)"))
            over = self.guard.over_budget()
            if over:
                self._do_stop(FinishReason.LIMIT, over)
            reason = await self._drive()
        except Exception as exc:
            reason = FinishReason.ERROR
            if self.store.unwritable is not None:  # said as it happened
                self.finished = ev.Finished(reason, self._committed, self.config.target,
                                            self.store.unwritable)
            else:
                log.exception("engine failed")
                self.store.add_error(None, "engine", repr(exc))
                self.finished = ev.Finished(reason, self._committed, self.config.target,
                                            f"the engine failed: {exc!r}")
        finally:
            if watcher is not None:
                watcher.cancel()
            try:
                self._report_endpoints()  # the session's last figures, for attached UIs
            except Exception:  # never in the way of a clean end
                log.exception("could not save the endpoints' figures")
            await self._client.close()
            if self._batcher is not None:
                if self._cancelling is not None:
                    await asyncio.wait([self._cancelling], timeout=60)
                await self._batcher.close()
        if self.finished is None:
            message = self._stop_message if reason is self._stop_reason else ""
            if reason is FinishReason.LIMIT:
                # Said again at the end: the requests in flight at the stop were paid too.
                message = self.guard.over_budget() or message
            self.finished = ev.Finished(reason, self._committed, self.config.target, message)
        self.finished = dataclasses.replace(self.finished, ts=self._set_state(reason.state))
        self.store.flush()  # what the end says is in the store before it is said
        self.bus.emit(self.finished)
        self._loop = None
        return self.finished

    # -- batch mode -------------------------------------------------------------------------------
    def _on_batch_progress(self, record: BatchRecord) -> None:
        self.bus.emit(ev.BatchProgress(record))
        if record.state == "lost":
            self.bus.emit(ev.RequestError.of(self.store.add_error(
                record.round, "batch_lost", record.message, self.base_url)))

    def _on_poll_failed(self, record: BatchRecord, cause: str, message: str, count: int,
                        failing_for: float) -> None:
        """A poll of a pending job failed for a reason worth polling again: recorded as a retry
        of the job; polls failing for `error_pause_seconds` pause the run (headless: it stops
        with exit 3) as failing requests do. The job stays pending and is never sent again. A
        404 (cause not_found) does not pause: the Batcher records the job lost once it lasts."""
        assert self._batcher is not None
        retry = self.store.add_retry(round=record.round, prompt_id=None, cause=cause,
                                     attempt=count, delay=self._batcher.settings.poll_seconds,
                                     message=message, endpoint=self.base_url)
        self.bus.emit(ev.RequestRetried.of(retry))
        if cause != Cause.NOT_FOUND and failing_for >= self.config.error_pause_seconds \
                and self.paused is None:
            self._do_pause(f"{message}; polls have failed for {failing_for:.0f}s. The job stays "
                           "pending at the endpoint and is not sent again: resuming polls it",
                           by_errors=True)

    async def _read_pending_batches(self) -> None:
        """Batch jobs an earlier session left pending are polled (never submitted again) and
        their answers written to their requests' records before anything else happens: a
        classification or instance answer is then used when its candidate is taken up, and a
        generation answer's instructions become open candidates of its round."""
        assert self._batcher is not None
        pending = self.store.batches(pending_only=True)
        if not pending:
            return
        self.bus.emit(ev.Notice(f"{len(pending)} batch job(s) of an earlier session are pending: "
                                "polling them (they are not submitted again)"))
        try:
            jobs = await self._batcher.resume_pending()
        except RequestFailed as exc:  # a refused key: the job stays pending for the next session
            self.bus.emit(ev.RequestError.of(self.store.add_error(None, exc.kind, str(exc),
                                                                  self.base_url)))
            if self._batcher.transport.name == OpenAIBatchTransport.name:
                kept = ("The job stays pending at the endpoint and is not sent again: fix that, "
                        "then the same command polls it")
            else:  # the offline command: its files are read, its unanswered requests resent
                kept = ("Fix that, then the same command reads the jobs' output files; requests "
                        "without an answer are sent again")
            self._do_stop(FinishReason.FAILING, f"{exc}. {kept}")
            return
        refused: RequestFailed | None = None  # a line's failure that every request would meet
        for record in jobs:
            if record.state == "lost":  # its requests have no answer: sent again when taken up
                for prompt in self.store.prompts_by_id(list(record.prompt_ids)):
                    if prompt.response is None:  # "abandoned" when the last session stopped
                        self.store.finish_prompt(prompt, response=None, error=record.message,
                                                 endpoint=self._batcher.answered_at(record),
                                                 model=self._batcher.client.model)
                continue
            lines, where = answers(record), self._batcher.answered_at(record)
            touched: set[int] = set()
            for prompt in self.store.prompts_by_id(list(record.prompt_ids)):
                if prompt.response is not None:
                    continue
                try:
                    resp = line_response(lines[custom_id(prompt.kind, prompt.id)],
                                         self._batcher.client, self._batcher.redact, 0, where)
                except RequestFailed as exc:
                    self.store.finish_prompt(prompt, response=None, error=str(exc),
                                             endpoint=exc.endpoint, model=exc.model)
                    if exc.fatal and refused is None:
                        refused = exc
                    continue
                p_tok, c_tok = resp.prompt_tokens, resp.completion_tokens
                if not resp.usage_reported:
                    p_tok, c_tok = estimate_tokens(prompt.prompt), estimate_tokens(resp.text)
                done = self.store.finish_prompt(prompt, response=resp.text,
                                                finish_reason=resp.finish_reason,
                                                prompt_tokens=p_tok, completion_tokens=c_tok,
                                                usage_reported=resp.usage_reported,
                                                endpoint=resp.endpoint, model=resp.model)
                self.bus.emit(ev.ResponseReceived.of(done))
                if prompt.kind == "generate":
                    self._late_candidates(record.id, done, resp)
                    touched.add(prompt.round)
            for number in touched:
                status = self.store.round_status(number)
                if status is not None and status != "running":  # recover_interrupted: running
                    self.store.recount_round(number, status)
            self._batcher.settled(record)
        if refused is not None:
            # As the same answer in this session would (`_on_failure`): a refused key, an unknown
            # model, a batch refused as a whole. Read at resume, it left the run going and the
            # next job was refused alike
            self.bus.emit(ev.RequestError.of(self.store.add_error(None, refused.kind,
                                                                  str(refused), self.base_url)))
            self._do_stop(FinishReason.FAILING, f"{refused}. No further batch job was sent")

    def _late_candidates(self, job: int, prompt: PromptRecord, resp: LLMResponse) -> None:
        """A generation answer read after its round ended: its instructions are recorded as
        open candidates of that round (taken up like any candidate a stop left open), its
        unusable fragments as rejections."""
        parsed = filtered(self.style.read_generation(resp.text, [e[2] for e in prompt.examples],
                                                     truncated=cut_short(resp)), resp)
        running = self.store.round_status(prompt.round) == "running"
        for fragment in parsed.discarded:
            self.store.add_rejection(RejectionRecord(
                0, prompt.round, fragment.text, fragment.reason.value, fragment.detail,
                prompt_id=prompt.id, raw=fragment.text))
        for item in parsed.items:
            tid = self.store.max_used_id() + 1
            self.store.add_candidate(CandidateRecord(tid, prompt.round, prompt.id,
                                                     item.instruction, item.raw))
            if not running:  # a running round's are recorded by recover_interrupted
                self.store.add_rejection(RejectionRecord(
                    0, prompt.round, item.instruction, "interrupted",
                    f"answered by batch job {job} after its session ended; taken up by the "
                    "next session", prompt_id=prompt.id, task_id=tid, raw=item.raw))

    async def _cancel_batches(self) -> None:
        """Cancel every submitted batch job at the endpoint (the user chose so at the stop)."""
        assert self._batcher is not None
        try:
            for record in await self._batcher.cancel_pending():
                self.bus.emit(ev.BatchProgress(record))
        except Exception as exc:  # noqa: BLE001 - said, never fatal: the stop goes on
            self.bus.emit(ev.RequestError(None, "batch", f"cancelling the batch jobs failed: "
                                                         f"{exc}; they stay recorded"))

    def _drop_stale_run_commands(self) -> list[str]:
        """Pause, resume and stop commands left unread in the commands table by an earlier
        process are marked done unapplied; their names are returned (said once the run has
        started). They were meant for a process that is gone (killed before it read them, or
        while an attached UI still showed it running): applied to this session, a pause held a
        fresh run "paused (by you)" with nobody having asked it to. Changes to the run's data
        (seed sets, drops, edits, review answers) are still applied by the control loop."""
        stale: list[str] = []
        for command_id, name, args in self.store.pending_commands():
            try:
                command = decode(name, args)
            except (ValueError, KeyError, TypeError):
                continue  # the control loop logs it and marks it done
            if isinstance(command, (Pause, Resume, Stop)):
                self.store.mark_command_done(command_id)
                what = f"a {name}"
                if what not in stale:
                    stale.append(what)
                log.warning("command %r left by an earlier process: not applied", name)
        return stale

    async def _watch_control(self) -> None:
        """Commands from attached UIs (the store's commands table) and a heartbeat for `runs`.

        The table is read when an attached UI rings (`control.ring`: a datagram on the run's
        wake socket) and every HEARTBEAT_SECONDS; without a wake socket, every
        CONTROL_POLL_SECONDS. Polling 4 times a second cost ~1.3 ms of CPU per second, ~0.3 ms
        per task at 10 requests/s, for commands that come seldom."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        sock = open_wake_socket(self.store.run_dir)
        if sock is not None:
            def rung() -> None:
                try:
                    while sock.recv(64):
                        pass
                except OSError:  # drained (BlockingIOError)
                    pass
                wake.set()

            loop.add_reader(sock.fileno(), rung)
        try:
            await self._control_loop(wake, HEARTBEAT_SECONDS if sock is not None
                                     else CONTROL_POLL_SECONDS)
        finally:
            if sock is not None:
                loop.remove_reader(sock.fileno())
                sock.close()

    async def _control_loop(self, wake: asyncio.Event, interval: float) -> None:
        beat = 0.0
        while True:
            wake.clear()  # a ring during the reads below wakes the next wait at once
            try:
                for command_id, name, args in self.store.pending_commands():
                    try:
                        self.send(decode(name, args))
                    except (ValueError, KeyError, TypeError):
                        log.warning("unreadable command %r %r", name, args)
                    self.store.mark_command_done(command_id)
                now = time.monotonic()
                if now - beat >= HEARTBEAT_SECONDS:
                    beat = now
                    self._set_state(self.state)
                    self._report_endpoints()
            except Exception:  # the control channel must never take the run down
                if self.store.unwritable is None:
                    log.exception("control channel poll failed")
            try:
                await asyncio.wait_for(wake.wait(), interval)
            except TimeoutError:
                pass

    def _in_work(self) -> float:
        """Tasks accepted by finalized rounds plus the tasks the open rounds' reservations are
        expected to become (each round's reservations times its `expect`), but never fewer than
        the reservations less OVERSHOOT_SHARE of the target: a share learnt from a burst of
        failures (an endpoint answering nonsense for a minute) must not reserve far more than
        the target once answers are good again (300 tasks asked for, 478 made).

        Depends only on which candidates passed the filters, never on which request finished
        first: the surplus rule and the decision to start a round stay reproducible.
        """
        open_rounds = [r for r in self._rounds.values() if not r.finalized.is_set()]
        final = self._committed - sum(r.stats.accepted for r in open_rounds)
        reserved = sum(r.reserved for r in open_rounds)
        expected = sum(r.reserved * r.expect for r in open_rounds)
        slack = max(MIN_SLACK, OVERSHOOT_SHARE * self.config.target)
        return final + max(expected, reserved - slack)

    def _expected_share(self, number: int) -> float:
        """The share of round `number`'s reservations expected to become tasks: accepted per
        reserved candidate in this session's rounds up to number-2 (final when it is created),
        once they reserved MIN_RESERVED_FOR_SHARE; 1 before that; at least MIN_SHARE.

        Counting every reservation as a task (1) ended a run with a chain of ever smaller
        rounds, each started only once the last one's failures were known (three latencies
        each): at --concurrency 1024 and 2 s latencies, 33 s of an 80 s run had fewer than 770
        requests in flight and ended with one. Expecting the share seen so far reserves enough
        at once; a run then ends past its target by at most OVERSHOOT_SHARE of it (finished
        work is kept; `_in_work`) or with one small round more."""
        reserved, accepted = self._kept.get(number - 2, (0, 0))
        if reserved < MIN_RESERVED_FOR_SHARE:
            return 1.0
        return min(1.0, max(MIN_SHARE, accepted / reserved))

    async def _drive(self) -> FinishReason:
        number = self.store.max_round() + 1
        running: set[asyncio.Task] = set()
        try:
            while True:
                await self._wait(number - 2, "finalized")
                await self._wait(number - 1, "filtered")
                self._drain_commands()
                if self._stop_requested or self._committed >= self.config.target:
                    break
                if self._in_work() >= self.config.target and running:
                    # Enough is in the works; wait for a round to settle, then look again.
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    running = {t for t in running if not t.done()}
                    continue
                if self.guard.backoff():
                    await self._backoff(self.guard.backoff())
                    self._drain_commands()
                    if self._stop_requested:
                        break
                self._apply_pending_seeds()
                revived = self._take_open_candidates()
                rnd = self._new_round(number, prompts=0 if revived else None)
                task = asyncio.create_task(self._run_round(rnd, revived))
                running.add(task)
                task.add_done_callback(running.discard)
                number += 1
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        finally:
            for task in running:
                task.cancel()
        if self._committed >= self.config.target:
            return FinishReason.TARGET
        return self._stop_reason

    def _round_failed(self, rnd: _Round, exc: Exception) -> None:
        """An unexpected error inside a round: record it and stop the run (the store keeps
        everything so far; the next session takes open candidates up)."""
        if self.store.unwritable is not None:
            return  # the store's failure, said and stopping the run already
        log.exception("round %d failed", rnd.number)
        self.store.add_error(rnd.number, "engine", repr(exc))
        self._do_stop(FinishReason.ERROR, f"round {rnd.number} failed: {exc!r}")

    def _take_up_later(self, task_id: int) -> None:
        """The open candidate `task_id` (kept as surplus, or unanswered) is taken up by a later
        round of this session (`_take_open_candidates`), even if it was taken up before."""
        self._taken.discard(task_id)
        self._revivable = True

    def _take_open_candidates(self) -> list[CandidateRecord]:
        """Open candidates not yet taken up in this session: left by a stop or a crash, or kept
        as surplus. They are paid for, so a round takes them up before new prompts are sent."""
        if not self._revivable:
            return []
        self._revivable = False
        # Open in the store also means in this session's commit queue: in flight, or done and
        # waiting for its turn to be committed. Never taken up twice.
        taken = [c for c in self.store.open_candidates() if c.task_id not in self._taken
                 and c.task_id not in self._round_of]
        self._taken.update(c.task_id for c in taken)
        return taken

    async def _backoff(self, seconds: float) -> None:
        """Wait between rounds that added nothing; a stop ends the wait."""
        assert self._wakeup is not None
        try:
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        except TimeoutError:
            pass

    async def _wait(self, number: int, what: str) -> None:
        """Wait for a round of this session to be filtered/finalized (earlier ones are final)."""
        rnd = self._rounds.get(number)
        if rnd is not None:
            await getattr(rnd, what).wait()

    def _round_size(self, number: int) -> int:
        """Generation prompts for round `number`: the configured size, or fewer near the end.

        When the tasks still needed are fewer than a full round yields (accepted per answered
        generation prompt in the latest rounds up to number-2, which are final, once they
        accepted any: `_recent_yield`), the round asks only for what should cover them, so the
        last rounds do not pay for candidates that could only be surplus. Prompts that brought
        no answer (an outage) are not part of the yield: counted, they made it look low and the
        rounds after an outage asked for more prompts than the target needed.

        Before that yield is known (the first two rounds), a round of the default size (one
        prompt per request in flight) asks for no more prompts than the tasks still needed
        would take if every instruction a prompt asks for (`instructions_asked`, 7) were kept:
        at --concurrency 1024 and --target 1500, round 1 sent 1,024 prompts where 512 covered
        the target, and 1,667 candidates ended as surplus. Batch mode's larger rounds (a job's
        wait is paid whatever its size) take BATCH_FIRST_ROUNDS_MARGIN times that. A size set
        with --prompts-per-round is kept.
        """
        c = self.config
        size = c.effective_prompts_per_round
        per_prompt = self._recent_yield(number - 2)
        needed = c.target - self._in_work()
        if needed <= 0:
            return size
        if per_prompt:
            size = min(size, max(1, math.ceil(needed / per_prompt)))
        elif not c.prompts_per_round:
            most = instructions_asked(c.num_prompt_instructions)
            margin = BATCH_FIRST_ROUNDS_MARGIN if c.uses_batch else 1
            size = min(size, max(1, math.ceil(needed * margin / most)))
        return size

    def _recent_yield(self, last: int) -> float:
        """Tasks accepted per answered generation prompt expected of a round created now, from
        the final rounds up to `last` (0: none accepted yet): the yield of the latest rounds that
        together answered RECENT_PROMPTS prompts, times its fall since the rounds before them,
        twice (the new round comes two after `last`; the fall is taken between 1/2 and 1).

        Not the whole run's average: the yield falls as the pool fills (more near duplicates;
        2.9, 1.9, 1.6, 1.3, 1.2 tasks per prompt in the first five rounds at --concurrency
        1024), so the average sized each last round for about half of what was still needed,
        and a run ended with a chain of rounds each half as large as the one before (7 once
        the pool was 95% full: 30 s of an 81 s run; 4 and 18 s with the latest rounds' yield
        alone)."""
        recent = self._window(last)
        if recent is None:
            return 0.0
        prompts, accepted, first = recent
        if not (prompts and accepted):
            return 0.0
        now = accepted / prompts
        before = self._window(first - 1, prompts)
        if before is None or not (before[0] and before[1]):
            return now
        fall = min(1.0, max(0.5, now / (before[1] / before[0])))
        return now * fall * fall

    def _window(self, last: int, at_least: int = RECENT_PROMPTS) -> tuple[int, int, int] | None:
        """(answered generation prompts, accepted, first round) of the final rounds ending at
        `last` that together answered `at_least` prompts, or all of those kept (None: no
        round `last`)."""
        if last not in self._totals:
            return None
        prompts, accepted = self._totals[last]
        first = last
        while first - 1 in self._totals:
            before = self._totals[first - 1]
            if prompts - before[0] >= at_least:
                return prompts - before[0], accepted - before[1], first
            first -= 1
        return prompts, accepted, first

    def _new_round(self, number: int, prompts: int | None = None) -> _Round:
        stats = RoundStats(round=number, started=time.time(),
                           prompts=self._round_size(number) if prompts is None else prompts,
                           rejected={})
        rnd = _Round(number, stats, asyncio.Event(), asyncio.Event(), [],
                     expect=self._expected_share(number))
        self._rounds[number] = rnd
        for old in [n for n in self._rounds if n < number - 3]:
            del self._rounds[old]
        self.store.start_round(stats)
        return rnd

    async def _run_round(self, rnd: _Round, revived: list[CandidateRecord] | None = None) -> None:
        """Generate, filter and resolve one round; `revived`: open candidates of earlier
        sessions, taken up instead of generating."""
        number, stats = rnd.number, rnd.stats
        rng = random.Random(f"{self.config.random_seed}:{number}")
        gens = []
        for i in range(stats.prompts):
            # Only rounds <= number-2 are final when this round is created (module docstring).
            examples = self.pool.sample_examples(
                rng, total=self.config.num_prompt_instructions,
                machine=self.config.num_machine_instructions, up_to_round=number - 2)
            seed = (self.config.random_seed * 1_000_003 + number * 1_009 + i) % (2**31)
            gens.append(asyncio.create_task(self._generate(rnd, examples, seed)))
        resolving = []
        try:
            await self._wait(number - 1, "filtered")
            await self._wait(number - 2, "finalized")
            self.pool.evict(number - 2)
            for old in revived or []:
                stats.candidates += 1
                item = ListItem(old.instruction, old.raw or old.instruction)
                tid = self._filter_candidate(rnd, old.prompt_id, item, task_id=old.task_id)
                if tid is not None:
                    resolving.append(asyncio.create_task(self._resolve(
                        rnd, tid, item, old.prompt_id,
                        known=self.store.classification_answer(old.task_id),
                        known_instances=self.store.instances_answer(old.task_id))))
            for gen in gens:
                result = await gen
                if result is None:
                    continue  # failed or empty: recorded and counted as it came (`_generate`)
                prompt_id, parsed = result
                self._reject_discarded(rnd, prompt_id, parsed)
                went_on = rnd.reserved + stats.surplus
                for item in parsed.items:
                    stats.candidates += 1
                    tid = self._filter_candidate(rnd, prompt_id, item)
                    if tid is not None:
                        resolving.append(asyncio.create_task(
                            self._resolve(rnd, tid, item, prompt_id)))
                if rnd.reserved + stats.surplus == went_on and not self._stop_requested:
                    self._fruitless(1)  # nothing of this answer went on
        except Exception as exc:  # a bug must end the run, never leave it waiting on this round
            self._round_failed(rnd, exc)
        finally:
            rnd.filtered.set()
        try:
            if resolving:
                await asyncio.gather(*resolving)
            await self._wait(number - 1, "finalized")
            self._flush()
        except Exception as exc:
            self._round_failed(rnd, exc)
        finally:
            stats.finished = time.time()
            # run time: a pause while the round was open is not part of it (the elapsed time's
            # rule, rates.active_seconds_of)
            stats.wall_time = active_seconds_of([(stats.started, stats.finished)], self._pauses,
                                                stats.finished)
            stats.status = "stopped" if self._stop_requested else "done"
            stats.cost = self.guard.cost_of(stats.prompt_tokens, stats.completion_tokens)
            stats.pool_after = self._committed
            try:
                self.store.finish_round(stats)
            except Exception:
                if self.store.unwritable is None:
                    raise  # (else said, and the run stopping; the next session closes it)
            finally:
                # set whatever happened above: the rounds after this one wait for it
                prompts, accepted = self._totals.get(number - 1, (0, 0))
                self._totals[number] = (prompts + stats.prompts - rnd.unanswered,
                                        accepted + stats.accepted)
                self._totals.pop(number - TOTALS_KEPT, None)
                reserved, accepted = self._kept.get(number - 1, (0, 0))
                self._kept[number] = (reserved + rnd.reserved, accepted + stats.accepted)
                self._kept.pop(number - 4, None)
                rnd.finalized.set()
            self._report_endpoints()  # fresh figures beside the round line
            self.bus.emit(ev.RoundFinished.of(stats, self.config.target))
            self.guard.after_round(stats)

    # -- filtering ------------------------------------------------------------------------------
    def _reject(self, rnd: _Round, prompt_id: int | None, candidate: str,
                reason: RejectionReason, detail: str, *, task_id: int | None = None,
                similar: SimilarityResult | None = None, raw: str | None = None) -> None:
        if reason is RejectionReason.SURPLUS:
            rnd.stats.surplus += 1
        else:
            rnd.stats.rejected[reason.value] = rnd.stats.rejected.get(reason.value, 0) + 1
            rnd.reasons[reason.value] += 1
            self.guard.rejected(reason.value, raw or candidate)
            if task_id is not None and reason.value not in OPEN_REASONS:
                self._fruitless(self._spent.pop(task_id, 0))
        match = similar.most_similar if similar else None
        similar_id = cast(int, match.key) if match else None
        record = self.store.add_rejection(RejectionRecord(
            0, rnd.number, candidate, reason.value, detail, prompt_id=prompt_id,
            task_id=task_id, similar_id=similar_id,
            similar_text=self.pool.text(similar_id) if similar_id is not None else None,
            score=match.score if match else None,
            max_score=similar.max_score if similar else None, raw=raw))
        self.bus.emit(ev.CandidateRejected.of(record))

    def _drop_instances(self, rnd: _Round, prompt_id: int | None, task_id: int,
                        drops: list[tuple[str, RejectionReason, str]]) -> None:
        """Record single instances dropped from a task: (fragment, reason, detail) each."""
        for text, reason, detail in drops:
            dropped = rnd.stats.instances_dropped
            dropped[reason.value] = dropped.get(reason.value, 0) + 1
            record = self.store.add_rejection(RejectionRecord(
                0, rnd.number, text, reason.value, detail, prompt_id=prompt_id, task_id=task_id,
                level="instance", raw=text))
            self.bus.emit(ev.CandidateRejected.of(record))

    def _filter_candidate(self, rnd: _Round, prompt_id: int | None, item: ListItem,
                          task_id: int | None = None) -> int | None:
        """The candidate's task id once it passed the filters and was reserved, else None (the
        rejection is recorded). `task_id`: the id a revived candidate already has."""
        instruction = item.instruction
        if task_id is not None:  # taken up again: a reservation it left must not match it
            self.pool.forget_reservation(task_id)
        rejection = check_instruction(instruction, self.filters)
        if rejection is not None:
            self._reject(rnd, prompt_id, instruction, rejection.reason, rejection.detail,
                         task_id=task_id, raw=item.raw)
            return None
        similar = self.pool.query(instruction)
        if similar.is_duplicate:
            match = similar.most_similar
            against = "" if match is None or cast(int, match.key) in self.pool else (
                " against a candidate of this or a recent round (reserved, not in the pool)")
            self._reject(rnd, prompt_id, instruction, RejectionReason.NEAR_DUPLICATE,
                         f"ROUGE-L {similar.max_score:.3f} > {self.config.threshold}{against}",
                         task_id=task_id, similar=similar, raw=item.raw)
            return None
        if self._stop_requested:
            tid = task_id or self._new_id()
            self.store.add_candidate(CandidateRecord(tid, rnd.number, prompt_id, instruction,
                                                     item.raw))
            self._reject(rnd, prompt_id, instruction, RejectionReason.ABANDONED,
                         "the run stopped before this candidate was sent on; the next session "
                         "takes it up", task_id=tid, raw=item.raw)
            return None
        if self._in_work() >= self.config.target:
            # Kept open: if reserved candidates fail, it is taken up before new prompts.
            tid = task_id or self._new_id()
            self.store.add_candidate(CandidateRecord(tid, rnd.number, prompt_id, instruction,
                                                     item.raw))
            self._take_up_later(tid)
            self._reject(rnd, prompt_id, instruction, RejectionReason.SURPLUS,
                         f"the target ({self.config.target}) is already in reach; kept for "
                         "later, not sent on", task_id=tid, similar=similar, raw=item.raw)
            return None
        tid = task_id or self._new_id()
        if task_id is not None and (task_id in self.pool or self.pool.text(task_id)):
            # An id that something else holds now (data written by an older version): the
            # candidate goes on under a new one.
            self.store.settle_candidate(task_id)
            tid = self._new_id()
        self.store.add_candidate(CandidateRecord(tid, rnd.number, prompt_id, instruction,
                                                 item.raw))
        self.pool.reserve(tid, instruction, rnd.number)
        self._pending.append(tid)
        self._round_of[tid] = rnd.number
        rnd.task_ids.append(tid)
        rnd.reserved += 1
        self._similar[tid] = similar
        return tid

    def _new_id(self) -> int:
        tid = self._next_id
        self._next_id += 1
        return tid

    # -- requests ---------------------------------------------------------------------------------
    async def _ask(self, rnd: _Round, kind: PromptKind, request: Request, params: SamplingParams, *,
                   examples: list[Task] | None = None, task_ref: int | None = None) -> Asked:
        assert self._requests is not None
        if task_ref is not None:  # what a candidate costs, counted against it if it fails
            self._spent[task_ref] = self._spent.get(task_ref, 0) + 1
        asked = await self._requests.ask(rnd.stats, kind, request, params, examples=examples,
                                         task_ref=task_ref)
        if asked.response is not None:
            over = self.guard.over_budget()
            if over:
                self._do_stop(FinishReason.LIMIT, over)
        return asked

    def _fruitless(self, requests: int) -> None:
        pause = self.guard.fruitless(requests, self.failures)
        if pause and self.state == RunState.RUNNING:
            self._do_pause(pause, by_errors=True, needs_restart=self.guard.restart_fixes)

    def _on_failure(self, number: int, exc: RequestFailed) -> None:
        pause = self.failures.failure(exc)
        if pause and self.state == RunState.RUNNING:
            self._do_pause(pause, by_errors=True)

    def _structured(self) -> bool:
        return self._requests is not None and self._requests.structured

    async def _generate(self, rnd: _Round, examples: list[Task],
                        seed: int) -> tuple[int, ParsedList] | None:
        c = self.config
        instructions = [t.instruction for t in examples]
        params = SamplingParams(max_tokens=c.generation_max_tokens, temperature=c.temperature,
                                top_p=c.top_p, presence_penalty=c.presence_penalty,
                                frequency_penalty=c.frequency_penalty,
                                seed=seed if c.request_seed else None)
        request = self.style.generation(instructions, structured=self._structured())
        asked = await self._ask(rnd, "generate", request, params, examples=examples)
        resp = asked.response
        if resp is None:
            rnd.unanswered += 1  # not part of the yield per prompt (`_round_size`)
            if not self._stop_requested:
                self._fruitless(1)  # a failed generation request, counted as it fails
            return None
        parsed = filtered(self.style.read_generation(resp.text, instructions,
                                                     truncated=cut_short(resp)), resp)
        if not parsed.items:
            # Nothing to filter (a refusal, an empty list): recorded and counted fruitless now,
            # as the answer arrives. The round filters answers in prompt order, so doing it there
            # would lag behind answers that came early, and the guard would let more out.
            self._reject_discarded(rnd, asked.prompt_id, parsed)
            if not self._stop_requested:
                self._fruitless(1)
            return None
        return asked.prompt_id, parsed

    def _reject_discarded(self, rnd: _Round, prompt_id: int, parsed: ParsedList) -> None:
        """The fragments the parser turned down: each a candidate, rejected with its reason."""
        for fragment in parsed.discarded:
            rnd.stats.candidates += 1
            self._reject(rnd, prompt_id, fragment.text, fragment.reason, fragment.detail,
                         raw=fragment.text)

    async def _resolve(self, rnd: _Round, tid: int, item: ListItem, prompt_id: int | None,
                       known: str | None = None, known_instances: str | None = None) -> None:
        task = await self._complete(rnd, tid, item, prompt_id, known, known_instances)
        if task is None:  # rejected, or left open to be taken up again: out of the queue now
            self.pool.release(tid)
            self._gone[tid] += 1
            del self._round_of[tid]
            self._similar.pop(tid, None)
        else:
            self._resolved[tid] = task
        self._flush()

    def _failed_request(self, rnd: _Round, prompt_id: int | None, item: ListItem, tid: int,
                        failure: str | None, what: str) -> None:
        """Record why a reserved candidate's request brought no answer. Only a request the
        endpoint refused as such (a bad request, a prompt too long) settles the candidate; when
        the endpoint was the problem (down, timing out, 5xx, limits, quota, key) the candidate
        stays open: it is paid for up to here, and is taken up again by a later round of this
        session or by the next session."""
        if failure == ABANDONED:
            self._reject(rnd, prompt_id, item.instruction, RejectionReason.ABANDONED,
                         f"the run stopped before its {what} was done", task_id=tid,
                         raw=item.raw)
        elif failure in (Cause.BAD_REQUEST, Cause.CONTEXT):
            self._reject(rnd, prompt_id, item.instruction, RejectionReason.REQUEST_FAILED,
                         f"the {what} request failed ({failure})", task_id=tid, raw=item.raw)
        else:
            self._reject(rnd, prompt_id, item.instruction, RejectionReason.UNANSWERED,
                         f"the {what} request got no answer ({failure}); kept open, taken up "
                         "again", task_id=tid, raw=item.raw)
            self._take_up_later(tid)

    async def _classify(self, rnd: _Round, tid: int, item: ListItem, prompt_id: int | None,
                        known: str | None = None) -> bool | None:
        """The task's classification flag; None when the task was rejected (recorded).
        `known`: an answer already paid for in an earlier session, used when it reads."""
        if known is not None and (value := parse_classification(known)) is not None:
            return value
        request = self.style.classification(item.instruction)
        max_tokens = self.style.classification_tokens(self.config.classification_max_tokens)
        answer, finish = "", None
        for tokens in (max_tokens, CLASSIFY_RETRY_TOKENS):
            params = SamplingParams(max_tokens=tokens, temperature=0.0)
            asked = await self._ask(rnd, "classify", request, params, task_ref=tid)
            resp = asked.response
            if resp is None:
                self._failed_request(rnd, prompt_id, item, tid, asked.failure, "classification")
                return None
            answer, finish = resp.text, resp.finish_reason
            value = parse_classification(answer)
            if value is not None:
                return value
            if resp.finish_reason != "length" or tokens >= CLASSIFY_RETRY_TOKENS:
                break  # asked again only when the answer was cut off
        if finish == "content_filter":
            self._reject(rnd, prompt_id, item.instruction, RejectionReason.CONTENT_FILTER,
                         CONTENT_FILTER_DETAIL, task_id=tid, raw=answer or "(empty answer)")
            return None
        detail = reasoning_only_detail("classification_max_tokens") \
            if is_reasoning_only(answer) else \
            f"the answer {' '.join(answer.split())[:80]!r} is neither yes nor no"
        self._reject(rnd, prompt_id, item.instruction, RejectionReason.UNKNOWN_CLASSIFICATION,
                     detail, task_id=tid, raw=answer)
        return None

    async def _complete(self, rnd: _Round, tid: int, item: ListItem, prompt_id: int | None,
                        known: str | None = None,
                        known_instances: str | None = None) -> Task | None:
        """`known_instances`: an instance answer already paid for (a batch an earlier session
        left pending), used when the classification answer was known too."""
        c = self.config
        instruction = item.instruction
        is_cls = await self._classify(rnd, tid, item, prompt_id, known)
        if is_cls is None:
            return None
        resp: LLMResponse | None
        if known_instances is not None and known is not None and \
                parse_classification(known) is not None:
            resp = LLMResponse(known_instances, "stop", 0, 0, 0.0, 0, c.instance_max_tokens)
        else:
            inst_req = self.style.instances(instruction, is_cls, structured=self._structured())
            inst_params = SamplingParams(max_tokens=c.instance_max_tokens, temperature=0.0,
                                         presence_penalty=c.instance_presence_penalty)
            asked = await self._ask(rnd, "instances", inst_req, inst_params, task_ref=tid)
            resp = asked.response
            if resp is None:
                self._failed_request(rnd, prompt_id, item, tid, asked.failure, "instance")
                return None
        assert resp is not None
        parsed = filtered(self.style.read_instances(resp.text, is_cls,
                                                    truncated=cut_short(resp)), resp)
        drops = [(f.text, f.reason, f.detail) for f in parsed.discarded]
        raw = [Instance(i.input, i.output) for i in parsed.instances]
        for extra in raw[c.max_instances:]:
            drops.append((f"Input: {extra.input}\nOutput: {extra.output}",
                          RejectionReason.DUPLICATE_INSTANCE if extra in raw[: c.max_instances]
                          else RejectionReason.EXTRA_INSTANCE,
                          f"beyond max_instances ({c.max_instances})"))
        kept, dropped, rejection = clean_instances(raw[: c.max_instances],
                                                   is_classification=is_cls,
                                                   instruction=instruction)
        drops.extend(_drop_row(d) for d in dropped)
        self._drop_instances(rnd, prompt_id, tid, drops)
        if rejection is not None:
            detail = rejection.detail
            if rejection.reason is RejectionReason.NO_VALID_INSTANCES:
                counts = collections.Counter(reason.label for _, reason, _ in drops)
                detail = "no usable example" + (
                    " (" + ", ".join(f"{k} {v}" for k, v in counts.most_common()) + ")"
                    if counts else "")
            self._reject(rnd, prompt_id, instruction, rejection.reason, detail,
                         task_id=tid, raw=resp.text or "(empty answer)")
            return None
        similar = self._similar.pop(tid, None)
        most_similar = []
        if similar is not None:
            keys = [cast(int, m.key) for m in similar.top]  # the engine's keys are task ids
            most_similar = [SimilarTask(k, self.pool.text(k) or "", m.score)
                            for k, m in zip(keys, similar.top, strict=True)]
        return Task(id=tid, origin="machine", instruction=instruction, is_classification=is_cls,
                    instances=kept, round=rnd.number, prompt_id=prompt_id,
                    max_score=similar.max_score if similar else 0.0, most_similar=most_similar,
                    created=time.time())

    def _flush(self) -> None:
        """Commit resolved tasks in id order (with the loop iteration's other writes, see
        `RunStore.defer_commits`).

        Every completed task is kept, even past the target: its requests are paid for.
        """
        while self._pending and (self._pending[0] in self._resolved
                                 or self._pending[0] in self._gone):
            tid = self._pending.popleft()
            if tid in self._gone:
                self._gone[tid] -= 1
                if not self._gone[tid]:
                    del self._gone[tid]
                continue
            task = self._resolved.pop(tid)
            number = self._round_of.pop(tid)
            self._similar.pop(tid, None)
            self.store.insert_task(task)
            self.pool.commit(task)
            self._committed += 1
            self._spent.pop(tid, None)
            self.guard.accepted()
            rnd = self._rounds.get(number)
            if rnd is not None:
                rnd.stats.accepted += 1
            self.bus.emit(ev.TaskAccepted.of(task, self._committed, self.config.target))

    @property
    def accepted(self) -> int:
        return self._committed

    @property
    def tokens(self) -> list[int]:
        """This session's (prompt, completion) tokens."""
        return self.guard.tokens

    @property
    def cost(self) -> float:
        """This session's cost, USD."""
        return self.guard.cost

    @property
    def in_flight(self) -> int:
        return self._client.in_flight if self._client else 0


def _drop_row(drop: InstanceDrop) -> tuple[str, RejectionReason, str]:
    inst = drop.instance
    return f"Input: {inst.input}\nOutput: {inst.output}", drop.reason, drop.detail
