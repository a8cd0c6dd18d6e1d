"""The Self-Instruct bootstrap loop.

A round sends `prompts_per_round` instruction-generation prompts (6 seed + 2 machine examples,
shuffled). Their candidates go through the heuristic filters and the near-duplicate filter in a fixed
order (prompt order, then list order); survivors are reserved in the similarity index (so later
candidates of the same round are compared with them) and get a classification request and then an
instance request. A task that keeps at least one instance joins the pool.

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
* accepted tasks are committed in task-id order, each in its own transaction, before they count.

Spend guards: rounds that add nothing back off (1, 2, 4 ... 30 s) and, after
`max_fruitless_requests` requests in a row that added nothing, pause the run with the counts per
reason and the last answer; `max_cost` / `max_tokens` stop it cleanly.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.control import (
    Command,
    DropTask,
    EditTask,
    Pause,
    ReplaceSeeds,
    Resume,
    Stop,
    decode,
)
from selfinstruct_tui.engine.events import FinishReason
from selfinstruct_tui.engine.filters import (
    FilterSettings,
    InstanceDrop,
    RejectionReason,
    check_instruction,
    clean_instances,
)
from selfinstruct_tui.engine.llm import (
    Cause,
    ClientSettings,
    LLMClient,
    LLMResponse,
    RequestAbandoned,
    RequestFailed,
    SamplingParams,
    estimate_tokens,
)
from selfinstruct_tui.engine.parsing import ListItem, ParsedList, parse_classification
from selfinstruct_tui.engine.seeds import Instance, SeedTask
from selfinstruct_tui.engine.pool import Pool
from selfinstruct_tui.engine.prompts import CompletionRequest, PromptStyle, Request, style_for
from selfinstruct_tui.engine.similarity import SimilarityResult, make_index
from selfinstruct_tui.engine.store import (
    RejectionRecord,
    RoundStats,
    RunStore,
    seed_tasks_to_pool,
)
from selfinstruct_tui.engine.task import Origin, SimilarTask, Task

log = logging.getLogger(__name__)

CONTROL_POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 2.0
EMPTY_ROUND_BACKOFF_MAX = 30.0  # seconds between rounds that keep adding nothing
CLASSIFY_RETRY_TOKENS = 32  # a classification answer cut by max_tokens is asked again with this
CONNECTIVITY_CAUSES = (Cause.CONNECTION, Cause.TIMEOUT)


@dataclass
class _Round:
    number: int
    stats: RoundStats
    filtered: asyncio.Event
    finalized: asyncio.Event
    task_ids: list[int]
    reserved: int = 0  # candidates that passed the filters and were started
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


class Engine:
    """Drives one run; a `RunControl`: `send(command)` is thread-safe, as are the shortcuts
    pause, resume, stop and stop_now."""

    def __init__(self, store: RunStore, config: RunConfig, *, api_key: str = "",
                 base_url: str | None = None, index_kind: str = "pruned") -> None:
        self.store = store
        self.config = config
        self.api_key = api_key
        self.base_url = base_url or config.base_url
        self.bus = ev.EventBus()
        self.filters = FilterSettings(config.min_words, config.max_words,
                                      reject_non_ascii_start=config.filter_non_ascii,
                                      tokenizer=config.tokenizer)
        self.pool = Pool(make_index(index_kind, config.threshold, config.tokenizer))
        self.style: PromptStyle = style_for(config.api)
        self.state = "starting"
        self.pause_reason = ""
        self.paused_by_errors = False
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._stop_reason = FinishReason.STOPPED
        self._stop_message = ""
        self._wakeup: asyncio.Event | None = None  # ends the backoff between empty rounds
        self._client: LLMClient | None = None
        self._committed = 0
        self._next_id = 1
        self._rounds: dict[int, _Round] = {}
        self._pending: collections.deque[int] = collections.deque()
        self._resolved: dict[int, Task | None] = {}
        self._round_of: dict[int, int] = {}
        self._similar: dict[int, SimilarityResult] = {}
        self._pending_seeds: list[SeedTask] | None = None
        self._last_success = time.monotonic()
        self._failures_in_a_row = 0
        self._failure_kinds: collections.Counter[str] = collections.Counter()
        # spend guards
        self._empty_rounds = 0
        self._fruitless_requests = 0
        self._fruitless_reasons: collections.Counter[str] = collections.Counter()
        self._last_answer = ""
        self._tokens_before = (0, 0)
        self._saved_window: int | None = None
        self._structured_noted: bool | None = None
        # round -> (generation prompts, accepted) of every round up to it (the yield per prompt)
        self._totals: dict[int, tuple[int, int]] = {}
        self.finished: ev.Finished | None = None
        self.tokens = [0, 0]  # this session's (prompt, completion) tokens
        self.cost = 0.0  # this session's cost, USD

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
            if command.now:
                self._do_stop_now()
            else:
                self._do_stop(FinishReason(command.reason), command.message)
        elif isinstance(command, ReplaceSeeds):
            self._pending_seeds = list(command.seeds)  # applied when the next round is created
        elif isinstance(command, DropTask):
            self._do_drop_task(command.task_id)
        elif isinstance(command, EditTask):
            self._do_edit_task(command.task_id, command.instruction, list(command.instances),
                               command.is_classification)

    def _set_state(self, state: str) -> None:
        self.state = state
        meta = {"state": state, "pid": os.getpid(), "ts": time.time(),
                "reason": self.pause_reason, "by_errors": self.paused_by_errors}
        if self.finished is not None:
            meta["finish_reason"] = self.finished.reason.value
            meta["message"] = self.finished.message
        self.store.set_meta("state", meta)

    def _do_pause(self, reason: str = "paused by the user", by_errors: bool = False) -> None:
        if self._client is None or self.state in ("stopping", "finished"):
            return
        self._client.pause()
        self.pause_reason = reason
        self.paused_by_errors = by_errors
        self._set_state("paused")
        self.bus.emit(ev.Paused(reason, by_errors))

    def _do_resume(self) -> None:
        if self._client is None or self.state != "paused":
            return
        self._last_success = time.monotonic()
        self._failures_in_a_row = 0
        self._failure_kinds.clear()
        self._empty_rounds = 0
        self._fruitless_requests = 0
        self._fruitless_reasons.clear()
        self.pause_reason = ""
        self.paused_by_errors = False
        self._client.resume()
        self._set_state("running")
        self.bus.emit(ev.Resumed())

    def _do_stop(self, reason: FinishReason = FinishReason.STOPPED, message: str = "",
                 grace: float | None = None) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        self._stop_reason = reason
        self._stop_message = message
        if self._client is not None:
            self._client.abandon_pending(self.config.stop_grace if grace is None else grace)
        if self._wakeup is not None:
            self._wakeup.set()
        if self.state != "finished":
            self._set_state("stopping")
        self.bus.emit(ev.Stopping())

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
        task = self.pool.edit(task_id, instruction, instances, is_classification)
        if task is None:
            return
        self.store.update_task(task)
        self.bus.emit(ev.TaskEdited(task))

    # -- set-up ---------------------------------------------------------------------------------
    def _load_pool(self) -> None:
        self.pool.load(self.store.tasks(status="active"))
        self._committed = self.pool.machine_count
        self._next_id = self.store.max_task_id() + 1
        self._tokens_before = self.store.token_totals()
        prompts = accepted = 0
        for r in self.store.rounds():
            prompts, accepted = prompts + r.prompts, accepted + r.accepted
            self._totals[r.round] = (prompts, accepted)

    def _apply_pending_seeds(self) -> None:
        seeds, self._pending_seeds = self._pending_seeds, None
        if seeds is None:
            return
        new = seed_tasks_to_pool(seeds, self._next_id)
        self._next_id += len(new)
        self.store.replace_seeds(new)
        self.pool.replace_seeds(new)
        self.bus.emit(ev.SeedsReplaced(tuple(new)))

    def _client_settings(self) -> ClientSettings:
        c = self.config
        window = c.context_window or self.store.get_meta("context_window") or None
        self._saved_window = window
        return ClientSettings(
            base_url=self.base_url, model=c.model, api=c.api, api_key=self.api_key,
            key_env=c.key_env, concurrency=c.concurrency, request_timeout=c.request_timeout,
            max_retries=c.max_retries, requests_per_minute=c.requests_per_minute or None,
            tokens_per_minute=c.tokens_per_minute or None, context_window=window,
            structured_output=c.structured_output if self.style.supports_structured else "off")

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> ev.Finished:
        """Run to the target (or until stopped) on a fresh event loop in this thread."""
        return asyncio.run(self.run_async())

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="selfinstruct-engine", daemon=True)
        thread.start()
        return thread

    async def run_async(self) -> ev.Finished:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._client = LLMClient(self._client_settings())
        reason = FinishReason.STOPPED
        try:
            self._load_pool()
            resumed = self.store.max_round() > 0
            self.store.set_meta("session", {"endpoint": self.base_url, "resumed": resumed,
                                            "started": time.time(), "pid": os.getpid()})
            self._set_state("running")
            self.bus.emit(ev.RunStarted.of(str(self.store.run_dir), self.config, self.base_url,
                                           self._committed, self.pool.seed_count, resumed))
            self._drain_commands()
            over = self._over_budget()
            if over:
                self._do_stop(FinishReason.LIMIT, over)
            watcher = asyncio.create_task(self._watch_control())
            try:
                reason = await self._drive()
            finally:
                watcher.cancel()
        except Exception as exc:
            log.exception("engine failed")
            self.store.add_error(None, "engine", repr(exc))
            reason = FinishReason.ERROR
            self.finished = ev.Finished(reason, self._committed, self.config.target,
                                        f"the engine failed: {exc!r}")
        finally:
            await self._client.close()
        if self.finished is None:
            message = self._stop_message if reason is self._stop_reason else ""
            self.finished = ev.Finished(reason, self._committed, self.config.target, message)
        self._set_state(reason.state)
        self.bus.emit(self.finished)
        self._loop = None
        return self.finished

    async def _watch_control(self) -> None:
        """Commands from attached UIs (the store's commands table) and a heartbeat for `runs`."""
        beat = 0.0
        while True:
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
            except Exception:  # the control channel must never take the run down
                log.exception("control channel poll failed")
            await asyncio.sleep(CONTROL_POLL_SECONDS)

    def _in_work(self) -> int:
        """Tasks accepted by finalized rounds plus the reservations of the rounds still open.

        Depends only on which candidates passed the filters, never on which request finished
        first: the surplus rule and the decision to start a round stay reproducible.
        """
        open_rounds = [r for r in self._rounds.values() if not r.finalized.is_set()]
        final = self._committed - sum(r.stats.accepted for r in open_rounds)
        return final + sum(r.reserved for r in open_rounds)

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
                if self._empty_rounds:
                    await self._backoff(min(EMPTY_ROUND_BACKOFF_MAX,
                                            2.0 ** (self._empty_rounds - 1)))
                    self._drain_commands()
                    if self._stop_requested:
                        break
                self._apply_pending_seeds()
                rnd = self._new_round(number)
                task = asyncio.create_task(self._run_round(rnd))
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

        When the tasks still needed are fewer than a full round yields (accepted per prompt in
        the rounds up to number-2, which are final), the round asks only for what should cover
        them, so the last rounds do not pay for candidates that could only be surplus.
        """
        size = self.config.effective_prompts_per_round
        prompts, accepted = self._totals.get(number - 2, (0, 0))
        needed = self.config.target - self._in_work()
        if prompts >= size and accepted > 0 and needed > 0:
            per_prompt = accepted / prompts
            size = min(size, max(1, math.ceil(needed / per_prompt)))
        return size

    def _new_round(self, number: int) -> _Round:
        stats = RoundStats(round=number, started=time.time(),
                           prompts=self._round_size(number), rejected={})
        rnd = _Round(number, stats, asyncio.Event(), asyncio.Event(), [])
        self._rounds[number] = rnd
        for old in [n for n in self._rounds if n < number - 3]:
            del self._rounds[old]
        self.store.start_round(stats)
        self.bus.emit(ev.RoundStarted.of(stats))
        return rnd

    async def _run_round(self, rnd: _Round) -> None:
        number, stats = rnd.number, rnd.stats
        started = time.monotonic()
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
            for gen in gens:
                result = await gen
                if result is None:
                    continue
                prompt_id, parsed = result
                for fragment in parsed.discarded:
                    stats.candidates += 1
                    self._reject(rnd, prompt_id, fragment.text, fragment.reason,
                                 fragment.detail, raw=fragment.text)
                for item in parsed.items:
                    stats.candidates += 1
                    tid = self._filter_candidate(rnd, prompt_id, item)
                    if tid is not None:
                        resolving.append(asyncio.create_task(
                            self._resolve(rnd, tid, item, prompt_id)))
        finally:
            rnd.filtered.set()
        try:
            if resolving:
                await asyncio.gather(*resolving)
            await self._wait(number - 1, "finalized")
            self._flush()
        finally:
            stats.finished = time.time()
            stats.wall_time = time.monotonic() - started
            stats.status = "stopped" if self._stop_requested else "done"
            stats.cost = self._cost(stats.prompt_tokens, stats.completion_tokens)
            stats.pool_after = self._committed
            self.store.finish_round(stats)
            prompts, accepted = self._totals.get(number - 1, (0, 0))
            self._totals[number] = (prompts + stats.prompts, accepted + stats.accepted)
            self._totals.pop(number - 4, None)
            rnd.finalized.set()
            self.bus.emit(ev.RoundFinished.of(stats, self.config.target))
            self._guard_after_round(rnd)

    def _guard_after_round(self, rnd: _Round) -> None:
        """Count rounds that added nothing; pause after `max_fruitless_requests` of their
        requests in a row (a refusal-only or duplicate-only endpoint stops by itself)."""
        stats = rnd.stats
        if stats.status != "done":
            return
        if stats.accepted or stats.surplus:
            self._empty_rounds = 0
            self._fruitless_requests = 0
            self._fruitless_reasons.clear()
            return
        self._empty_rounds += 1
        self._fruitless_requests += stats.requests
        self._fruitless_reasons.update(rnd.reasons)
        limit = self.config.max_fruitless_requests
        if limit and self._empty_rounds >= 2 and self._fruitless_requests >= limit \
                and self.state == "running":
            reasons = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in
                                self._fruitless_reasons.most_common()) or "no candidates"
            errors = ", ".join(f"{k} {v}" for k, v in self._failure_kinds.most_common())
            last = " ".join(self._last_answer.split())[:300]
            self._do_pause(
                f"{self._empty_rounds} rounds in a row added nothing to the pool "
                f"({self._fruitless_requests} requests). Rejected: {reasons}"
                + (f"; request errors: {errors}" if errors else "")
                + (f". Last answer: {last!r}" if last else ". No answer came back")
                + ". Check --model, --api and the endpoint (see the rejections), then resume",
                by_errors=True)

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.config.price_input_per_1k
                + completion_tokens * self.config.price_output_per_1k) / 1000

    def _over_budget(self) -> str:
        """Why the run is at a spend limit, or "" when it is not."""
        c = self.config
        p_tok = self._tokens_before[0] + self.tokens[0]
        c_tok = self._tokens_before[1] + self.tokens[1]
        if c.max_tokens and p_tok + c_tok >= c.max_tokens:
            return (f"the run has used {p_tok + c_tok:,} tokens, at or above --max-tokens "
                    f"{c.max_tokens:,}; resume with a higher --max-tokens")
        cost = self._cost(p_tok, c_tok)
        if c.max_cost and cost >= c.max_cost:
            return (f"the run has cost ${cost:.4f}, at or above --max-cost {c.max_cost:g}; "
                    "resume with a higher --max-cost")
        return ""

    # -- filtering ------------------------------------------------------------------------------
    def _reject(self, rnd: _Round, prompt_id: int | None, candidate: str,
                reason: RejectionReason, detail: str, *, task_id: int | None = None,
                similar: SimilarityResult | None = None, raw: str | None = None) -> None:
        if reason is RejectionReason.SURPLUS:
            rnd.stats.surplus += 1
        else:
            rnd.stats.rejected[reason.value] = rnd.stats.rejected.get(reason.value, 0) + 1
            rnd.reasons[reason.value] += 1
        match = similar.most_similar if similar else None
        similar_id = int(match.key) if match else None  # type: ignore[call-overload]
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

    def _filter_candidate(self, rnd: _Round, prompt_id: int, item: ListItem) -> int | None:
        instruction = item.instruction
        rejection = check_instruction(instruction, self.filters)
        if rejection is not None:
            self._reject(rnd, prompt_id, instruction, rejection.reason, rejection.detail,
                         raw=item.raw)
            return None
        similar = self.pool.query(instruction)
        if similar.is_duplicate:
            self._reject(rnd, prompt_id, instruction, RejectionReason.NEAR_DUPLICATE,
                         f"ROUGE-L {similar.max_score:.3f} > {self.config.threshold}",
                         similar=similar, raw=item.raw)
            return None
        if self._stop_requested:
            self._reject(rnd, prompt_id, instruction, RejectionReason.ABANDONED,
                         "the run stopped before this candidate was sent on", raw=item.raw)
            return None
        if self._in_work() >= self.config.target:
            self._reject(rnd, prompt_id, instruction, RejectionReason.SURPLUS,
                         f"the target ({self.config.target}) is already in reach; not sent on",
                         similar=similar, raw=item.raw)
            return None
        tid = self._next_id
        self._next_id += 1
        self.pool.reserve(tid, instruction, rnd.number)
        self._pending.append(tid)
        self._round_of[tid] = rnd.number
        rnd.task_ids.append(tid)
        rnd.reserved += 1
        self._similar[tid] = similar
        return tid

    # -- requests ---------------------------------------------------------------------------------
    async def _ask(self, rnd: _Round, kind: str, request: Request,
                   params: SamplingParams, *, examples: list[Task] | None = None,
                   task_ref: int | None = None) -> tuple[int, LLMResponse | None, str | None]:
        """Send one request and record it, its retries and its tokens.

        Returns (prompt id, response or None, failure kind: a `Cause` or "abandoned").
        """
        assert self._client is not None
        if isinstance(request, CompletionRequest):
            text = request.prompt
        else:
            text = json.dumps(list(request.messages), ensure_ascii=False)
        shown = tuple((t.id, t.origin, t.instruction) for t in examples or [])
        record = self.store.add_prompt(round=rnd.number, kind=kind, prompt=text, examples=shown,
                                       task_ref=task_ref)
        prompt_id = record.id
        rnd.stats.requests += 1
        self.bus.emit(ev.PromptSent.of(record))

        def on_retry(cause: str, attempt: int, delay: float, message: str) -> None:
            rnd.stats.retries[cause] = rnd.stats.retries.get(cause, 0) + 1
            retry = self.store.add_retry(round=rnd.number, prompt_id=prompt_id, cause=cause,
                                         attempt=attempt, delay=delay, message=message)
            self.bus.emit(ev.RequestRetried.of(retry))

        try:
            resp = await self._client.request(request, params, on_retry)
        except RequestAbandoned as exc:
            done = self.store.finish_prompt(
                record, response=None, error=f"abandoned {exc.when} (the run was stopping)")
            self.bus.emit(ev.PromptFailed.of(done))
            return prompt_id, None, "abandoned"
        except RequestFailed as exc:
            done = self.store.finish_prompt(record, response=None, error=str(exc),
                                            attempts=exc.attempts)
            self.bus.emit(ev.PromptFailed.of(done))
            self._on_failure(rnd.number, exc)
            return prompt_id, None, exc.kind
        self._last_success = time.monotonic()
        self._failures_in_a_row = 0
        self._failure_kinds.clear()
        p_tok, c_tok = resp.prompt_tokens, resp.completion_tokens
        if not resp.usage_reported:  # estimates keep the spend limits working
            p_tok, c_tok = estimate_tokens(text), estimate_tokens(resp.text)
            rnd.stats.usage_missing += 1
        done = self.store.finish_prompt(record, response=resp.text,
                                        finish_reason=resp.finish_reason, latency=resp.latency,
                                        prompt_tokens=p_tok, completion_tokens=c_tok,
                                        attempts=resp.attempts,
                                        usage_reported=resp.usage_reported,
                                        structured=resp.structured)
        rnd.stats.prompt_tokens += p_tok
        rnd.stats.completion_tokens += c_tok
        self.tokens[0] += p_tok
        self.tokens[1] += c_tok
        self.cost += self._cost(p_tok, c_tok)
        self.bus.emit(ev.ResponseReceived.of(done))
        self._note_client_changes()
        over = self._over_budget()
        if over:
            self._do_stop(FinishReason.LIMIT, over)
        return prompt_id, resp, None

    def _note_client_changes(self) -> None:
        """Persist what the client learned (context window, structured output) and say it once."""
        client = self._client
        assert client is not None
        if client.context_window and client.context_window != self._saved_window:
            self._saved_window = client.context_window
            self.store.set_meta("context_window", client.context_window)
            self.bus.emit(ev.Notice(f"the model's context window is {client.context_window} "
                                    "tokens; later requests ask for at most what fits"))
        if client.structured is not None and client.structured != self._structured_noted \
                and client.settings.structured_output != "off":
            self._structured_noted = client.structured
            mode = "json_schema" if client.structured else "text"
            self.store.set_meta("structured_output", mode)
            self.bus.emit(ev.Notice(
                "structured output: the endpoint accepts JSON schemas; chat answers are JSON"
                if client.structured else
                "structured output: not supported by the endpoint; chat answers are read as text"))

    def _on_failure(self, number: int, exc: RequestFailed) -> None:
        self._failures_in_a_row += 1
        self._failure_kinds[exc.kind] += 1
        self.bus.emit(ev.RequestError.of(self.store.add_error(number, exc.kind, str(exc))))
        if self.state != "running":
            return
        quiet_for = time.monotonic() - self._last_success
        if exc.fatal:
            self._do_pause(f"{exc} - fix it, then resume", by_errors=True)
        elif quiet_for >= self.config.error_pause_seconds and self._failures_in_a_row >= 3:
            if exc.kind in CONNECTIVITY_CAUSES or exc.status in (502, 503, 504):
                advice = f"Check that {self.base_url} is up, then resume"
            else:
                advice = "The endpoint is up but keeps failing; fix the cause, then resume"
            kinds = ", ".join(f"{k} {v}" for k, v in self._failure_kinds.most_common())
            self._do_pause(
                f"every request has failed for {quiet_for:.0f}s ({self._failures_in_a_row} in a "
                f"row: {kinds}); last error: {exc}. {advice}", by_errors=True)

    def _structured(self) -> bool:
        """Ask for JSON-schema answers: the style can, and the endpoint has not refused."""
        client = self._client
        return (client is not None and client.settings.structured_output != "off"
                and client.structured is not False)

    async def _generate(self, rnd: _Round, examples: list[Task],
                        seed: int) -> tuple[int, ParsedList] | None:
        c = self.config
        instructions = [t.instruction for t in examples]
        params = SamplingParams(max_tokens=c.generation_max_tokens, temperature=c.temperature,
                                top_p=c.top_p, presence_penalty=c.presence_penalty,
                                frequency_penalty=c.frequency_penalty, seed=seed)
        request = self.style.generation(instructions, structured=self._structured())
        prompt_id, resp, _ = await self._ask(rnd, "generate", request, params, examples=examples)
        if resp is None:
            return None
        self._last_answer = resp.text
        parsed = self.style.read_generation(resp.text, instructions,
                                            truncated=resp.finish_reason == "length")
        return prompt_id, parsed

    async def _resolve(self, rnd: _Round, tid: int, item: ListItem, prompt_id: int) -> None:
        task = await self._complete(rnd, tid, item, prompt_id)
        self._resolved[tid] = task
        if task is None:
            self.pool.release(tid)
        self._flush()

    def _failed_request(self, rnd: _Round, prompt_id: int, item: ListItem, tid: int,
                        failure: str | None, what: str) -> None:
        if failure == "abandoned":
            self._reject(rnd, prompt_id, item.instruction, RejectionReason.ABANDONED,
                         f"the run stopped before its {what} was done", task_id=tid,
                         raw=item.raw)
        else:
            self._reject(rnd, prompt_id, item.instruction, RejectionReason.REQUEST_FAILED,
                         f"the {what} request failed ({failure})", task_id=tid, raw=item.raw)

    async def _classify(self, rnd: _Round, tid: int, item: ListItem,
                        prompt_id: int) -> bool | None:
        """The task's classification flag; None when the task was rejected (recorded)."""
        request = self.style.classification(item.instruction)
        max_tokens = self.style.classification_tokens(self.config.classification_max_tokens)
        answer = ""
        for tokens in (max_tokens, CLASSIFY_RETRY_TOKENS):
            params = SamplingParams(max_tokens=tokens, temperature=0.0)
            _, resp, failure = await self._ask(rnd, "classify", request, params, task_ref=tid)
            if resp is None:
                self._failed_request(rnd, prompt_id, item, tid, failure, "classification")
                return None
            answer = resp.text
            value = parse_classification(answer)
            if value is not None:
                return value
            if resp.finish_reason != "length" or tokens >= CLASSIFY_RETRY_TOKENS:
                break  # asked again only when the answer was cut off
        self._reject(rnd, prompt_id, item.instruction, RejectionReason.UNKNOWN_CLASSIFICATION,
                     f"the answer {' '.join(answer.split())[:80]!r} is neither yes nor no",
                     task_id=tid, raw=answer)
        return None

    async def _complete(self, rnd: _Round, tid: int, item: ListItem,
                        prompt_id: int) -> Task | None:
        c = self.config
        instruction = item.instruction
        is_cls = await self._classify(rnd, tid, item, prompt_id)
        if is_cls is None:
            return None
        inst_req = self.style.instances(instruction, is_cls, structured=self._structured())
        inst_params = SamplingParams(max_tokens=c.instance_max_tokens, temperature=0.0,
                                     presence_penalty=c.instance_presence_penalty)
        _, resp, failure = await self._ask(rnd, "instances", inst_req, inst_params, task_ref=tid)
        if resp is None:
            self._failed_request(rnd, prompt_id, item, tid, failure, "instance")
            return None
        parsed = self.style.read_instances(resp.text, is_cls,
                                           truncated=resp.finish_reason == "length")
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
                         task_id=tid, raw=resp.text)
            return None
        similar = self._similar.pop(tid, None)
        most_similar = []
        if similar is not None:
            most_similar = [SimilarTask(int(m.key), self.pool.text(int(m.key)) or "", m.score)
                            for m in similar.top]
        return Task(id=tid, origin="machine", instruction=instruction, is_classification=is_cls,
                    instances=kept, round=rnd.number, prompt_id=prompt_id,
                    max_score=similar.max_score if similar else 0.0, most_similar=most_similar,
                    created=time.time())

    def _flush(self) -> None:
        """Commit resolved tasks in id order; each commit happens before the task counts.

        Every completed task is kept, even past the target: its requests are paid for.
        """
        while self._pending and self._pending[0] in self._resolved:
            tid = self._pending.popleft()
            task = self._resolved.pop(tid)
            number = self._round_of.pop(tid)
            self._similar.pop(tid, None)
            if task is None:
                continue
            self.store.insert_task(task)
            self.pool.commit(task)
            self._committed += 1
            rnd = self._rounds.get(number)
            if rnd is not None:
                rnd.stats.accepted += 1
            self.bus.emit(ev.TaskAccepted(task, self._committed, self.config.target))

    @property
    def accepted(self) -> int:
        return self._committed

    @property
    def tokens_per_second(self) -> float:
        return self._client.tokens_per_second if self._client else 0.0

    @property
    def in_flight(self) -> int:
        return self._client.in_flight if self._client else 0


def _drop_row(drop: InstanceDrop) -> tuple[str, RejectionReason, str]:
    inst = drop.instance
    return f"Input: {inst.input}\nOutput: {inst.output}", drop.reason, drop.detail
