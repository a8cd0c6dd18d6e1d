"""The Self-Instruct bootstrap loop.

A round sends `prompts_per_round` instruction-generation prompts (6 seed + 2 machine examples,
shuffled). Their candidates go through the heuristic filters and the near-duplicate filter in a fixed
order (prompt order, then list order); survivors are reserved in the similarity index (so later
candidates of the same round are compared with them) and get a classification request and then an
instance request. A task that keeps at least one instance joins the pool.

Rounds overlap so that the endpoint is never idle between them, yet a run is reproducible for a
deterministic endpoint and a fixed --random-seed:
* round r samples machine examples only from rounds <= r-2, which are final when r is created;
* round r filters its candidates only after round r-1 has filtered its own (the index then holds
  exactly the seeds, the pool and the reservations of rounds < r);
* a reserved candidate that dies at the instance stage leaves the index at a fixed point (before
  round r+2 filters), not whenever its request happens to fail;
* accepted tasks are committed in task-id order, each in its own transaction, before they count.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import json
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine import prompts as P
from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.filters import (
    FilterSettings,
    RejectionReason,
    check_instruction,
    clean_instances,
)
from selfinstruct_tui.engine.llm import (
    ClientSettings,
    LLMClient,
    LLMResponse,
    RequestAbandoned,
    RequestFailed,
    SamplingParams,
)
from selfinstruct_tui.engine.seeds import Instance, SeedTask
from selfinstruct_tui.engine.similarity import SimilarityIndex, SimilarityResult, make_index
from selfinstruct_tui.engine.store import RoundStats, RunStore, seed_tasks_to_pool
from selfinstruct_tui.engine.task import SimilarTask, Task

log = logging.getLogger(__name__)

NEW_PER_PROMPT = P.STOP_NUMBER - 1  # the model continues the list up to item 15
CONTROL_POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 2.0


@dataclass
class _Round:
    number: int
    stats: RoundStats
    filtered: asyncio.Event
    finalized: asyncio.Event
    task_ids: list[int]


class Engine:
    """Drives one run. Thread-safe commands: pause, resume, stop, replace_seeds, drop_task, edit_task."""

    def __init__(self, store: RunStore, config: RunConfig, *, api_key: str = "",
                 base_url: str | None = None, index_kind: str = "pruned") -> None:
        self.store = store
        self.config = config
        self.api_key = api_key
        self.base_url = base_url or config.base_url
        self.bus = ev.EventBus()
        self.filters = FilterSettings(config.min_words, config.max_words,
                                      reject_non_ascii_start=config.filter_non_ascii)
        self.index: SimilarityIndex = make_index(index_kind, config.threshold, config.tokenizer)
        self.state = "starting"
        self.pause_reason = ""
        self.paused_by_errors = False
        self._commands: queue.SimpleQueue[tuple[str, tuple]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._client: LLMClient | None = None
        self._texts: dict[int, str] = {}
        self._pool: dict[int, Task] = {}
        self._seed_ids: list[int] = []  # in id order
        self._machine_ids: list[int] = []
        self._machine_rounds: list[int] = []
        self._committed = 0
        self._next_id = 1
        self._rounds: dict[int, _Round] = {}
        self._pending: collections.deque[int] = collections.deque()
        self._resolved: dict[int, Task | None] = {}
        self._round_of: dict[int, int] = {}
        self._zombies: list[tuple[int, int]] = []  # (round, task id) to leave the index
        self._similar: dict[int, SimilarityResult] = {}
        self._pending_seeds: list[SeedTask] | None = None
        self._last_success = time.monotonic()
        self._failures_in_a_row = 0
        self.finished: ev.Finished | None = None
        self.tokens = [0, 0]
        self.cost = 0.0

    # -- thread-safe commands -------------------------------------------------------------------
    def _command(self, name: str, *args: object) -> None:
        self._commands.put((name, args))
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._drain_commands)
            except RuntimeError:
                pass

    def pause(self) -> None:
        self._command("pause")

    def resume(self) -> None:
        self._command("resume")

    def stop(self) -> None:
        self._command("stop")

    def replace_seeds(self, seeds: list[SeedTask]) -> None:
        self._command("replace_seeds", seeds)

    def drop_task(self, task_id: int) -> None:
        self._command("drop_task", task_id)

    def edit_task(self, task_id: int, instruction: str, instances: list[Instance],
                  is_classification: bool) -> None:
        self._command("edit_task", task_id, instruction, instances, is_classification)

    def _drain_commands(self) -> None:
        while True:
            try:
                name, args = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                getattr(self, f"_do_{name}")(*args)
            except Exception as exc:  # a bad command must not kill the run
                log.exception("command %s failed", name)
                self.bus.emit(ev.RequestError(None, "command", f"{name} failed: {exc}"))

    def _set_state(self, state: str) -> None:
        self.state = state
        self.store.set_meta("state", {"state": state, "pid": os.getpid(), "ts": time.time(),
                                      "reason": self.pause_reason,
                                      "by_errors": self.paused_by_errors})

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
        self.pause_reason = ""
        self.paused_by_errors = False
        self._client.resume()
        self._set_state("running")
        self.bus.emit(ev.Resumed())

    def _do_stop(self) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        if self._client is not None:
            self._client.abandon_pending()
        if self.state != "finished":
            self._set_state("stopping")
        self.bus.emit(ev.Stopping())

    def _do_replace_seeds(self, seeds: list[SeedTask]) -> None:
        self._pending_seeds = seeds  # applied when the next round is created

    def _do_drop_task(self, task_id: int) -> None:
        task = self._pool.pop(task_id, None)
        if task is None:
            return
        if task_id in self.index:
            self.index.remove(task_id)
        self._texts.pop(task_id, None)
        task.status = "dropped"
        self.store.update_task(task)
        rid = self.store.add_rejection(round=task.round, prompt_id=task.prompt_id,
                                       candidate=task.instruction,
                                       reason=RejectionReason.DROPPED_BY_USER.value,
                                       detail="dropped in the inspector", task_id=task_id)
        if task.origin == "machine":
            i = self._machine_ids.index(task_id)
            del self._machine_ids[i]
            del self._machine_rounds[i]
            self._committed -= 1
        else:
            self._seed_ids.remove(task_id)
        self.bus.emit(ev.CandidateRejected(rid, task.round, task.instruction,
                                           RejectionReason.DROPPED_BY_USER.value,
                                           "dropped in the inspector"))
        self.bus.emit(ev.TaskDropped(task_id, self._committed))

    def _do_edit_task(self, task_id: int, instruction: str, instances: list[Instance],
                      is_classification: bool) -> None:
        task = self._pool.get(task_id)
        if task is None:
            return
        task.instruction = instruction.strip()
        task.instances = list(instances)
        task.is_classification = is_classification
        self.store.update_task(task)
        if task_id in self.index:
            self.index.remove(task_id)
        self.index.add(task_id, task.instruction)
        self._texts[task_id] = task.instruction
        self.bus.emit(ev.TaskEdited(task))

    # -- set-up ---------------------------------------------------------------------------------
    def _load_pool(self) -> None:
        for task in self.store.tasks(status="active"):
            self._pool[task.id] = task
            self._texts[task.id] = task.instruction
            self.index.add(task.id, task.instruction)
            if task.origin == "machine":
                self._machine_ids.append(task.id)
                self._machine_rounds.append(task.round)
            else:
                self._seed_ids.append(task.id)
        self._committed = len(self._machine_ids)
        self._next_id = self.store.max_task_id() + 1

    def _apply_pending_seeds(self) -> None:
        seeds, self._pending_seeds = self._pending_seeds, None
        if seeds is None:
            return
        new = seed_tasks_to_pool(seeds, self._next_id)
        self._next_id += len(new)
        self.store.replace_seeds(new)
        for tid in self._seed_ids:
            del self._pool[tid]
            self._texts.pop(tid, None)
            if tid in self.index:
                self.index.remove(tid)
        for task in new:
            self._pool[task.id] = task
            self._texts[task.id] = task.instruction
            self.index.add(task.id, task.instruction)
        self._seed_ids = [t.id for t in new]
        self.bus.emit(ev.SeedsReplaced(len(new)))

    def _client_settings(self) -> ClientSettings:
        c = self.config
        return ClientSettings(
            base_url=self.base_url, model=c.model, api=c.api, api_key=self.api_key,
            concurrency=c.concurrency, request_timeout=c.request_timeout,
            max_retries=c.max_retries, requests_per_minute=c.requests_per_minute or None,
            tokens_per_minute=c.tokens_per_minute or None)

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
        self._client = LLMClient(self._client_settings())
        try:
            self._load_pool()
            resumed = self.store.max_round() > 0
            self._set_state("running")
            self.bus.emit(ev.RunStarted(
                str(self.store.run_dir), self.base_url, self.config.model, self.config.api,
                self.config.target, self._committed,
                sum(1 for t in self._pool.values() if t.is_seed), resumed))
            self._drain_commands()
            watcher = asyncio.create_task(self._watch_control())
            try:
                reason = await self._drive()
            finally:
                watcher.cancel()
        except Exception as exc:
            log.exception("engine failed")
            self.store.add_error(None, "engine", repr(exc))
            reason = "error"
            self.finished = ev.Finished("error", self._committed, self.config.target,
                                        f"the engine failed: {exc!r}")
        finally:
            await self._client.close()
        if self.finished is None:
            self.finished = ev.Finished(reason, self._committed, self.config.target)
        self._set_state("finished" if reason == "target" else
                        "error" if reason == "error" else "stopped")
        self.bus.emit(self.finished)
        self._loop = None
        return self.finished

    async def _watch_control(self) -> None:
        """Commands from attached UIs (the store's commands table) and a heartbeat for `runs`."""
        beat = 0.0
        while True:
            try:
                for command_id, name, args in self.store.pending_commands():
                    self._remote_command(name, args)
                    self.store.mark_command_done(command_id)
                now = time.monotonic()
                if now - beat >= HEARTBEAT_SECONDS:
                    beat = now
                    self._set_state(self.state)
            except Exception:  # the control channel must never take the run down
                log.exception("control channel poll failed")
            await asyncio.sleep(CONTROL_POLL_SECONDS)

    def _remote_command(self, name: str, args: dict) -> None:
        if name in ("pause", "resume", "stop"):
            self._command(name)
        elif name == "replace_seeds":
            seeds = [SeedTask(d["id"], d.get("name") or d["id"], d["instruction"],
                              [Instance(i["input"], i["output"]) for i in d["instances"]],
                              bool(d.get("is_classification")))
                     for d in args["seeds"]]
            self._command("replace_seeds", seeds)
        elif name == "drop_task":
            self._command("drop_task", int(args["task_id"]))
        elif name == "edit_task":
            self._command("edit_task", int(args["task_id"]), args["instruction"],
                          [Instance(i["input"], i["output"]) for i in args["instances"]],
                          bool(args["is_classification"]))
        else:
            log.warning("unknown remote command %r", name)
        self._drain_commands()

    async def _drive(self) -> str:
        number = self.store.max_round() + 1
        running: set[asyncio.Task] = set()
        try:
            while True:
                await self._wait(number - 2, "finalized")
                await self._wait(number - 1, "filtered")
                self._drain_commands()
                if self._stop_requested:
                    break
                if self._committed >= self.config.target:
                    break
                if self._committed + len(self._pending) >= self.config.target:
                    # Enough is in the works; wait for a round to settle, then look again.
                    if running:
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                        running = {t for t in running if not t.done()}
                        continue
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
        return "stopped" if self._stop_requested and self._committed < self.config.target \
            else "target"

    async def _wait(self, number: int, what: str) -> None:
        """Wait for a round of this session to be filtered/finalized (earlier ones are final)."""
        rnd = self._rounds.get(number)
        if rnd is not None:
            await getattr(rnd, what).wait()

    def _new_round(self, number: int) -> _Round:
        stats = RoundStats(round=number, started=time.time(),
                           prompts=self.config.effective_prompts_per_round, rejected={})
        rnd = _Round(number, stats, asyncio.Event(), asyncio.Event(), [])
        self._rounds[number] = rnd
        for old in [n for n in self._rounds if n < number - 3]:
            del self._rounds[old]
        self.store.start_round(stats)
        self.bus.emit(ev.RoundStarted(number, stats.prompts))
        return rnd

    def _examples(self, rng: random.Random, number: int, seeds: list[Task]) -> list[Task]:
        c = self.config
        # Only rounds <= number-2 are final when this round is created (see module docstring).
        eligible = bisect.bisect_right(self._machine_rounds, number - 2)
        machine_ids = self._machine_ids[:eligible]
        k_machine = min(c.num_machine_instructions, len(machine_ids))
        picked = [self._pool[i] for i in rng.sample(machine_ids, k_machine)]
        picked += rng.sample(seeds, min(c.num_prompt_instructions - k_machine, len(seeds)))
        rng.shuffle(picked)
        return picked

    async def _run_round(self, rnd: _Round) -> None:
        number, stats = rnd.number, rnd.stats
        started = time.monotonic()
        rng = random.Random(f"{self.config.random_seed}:{number}")
        gens = []
        seeds = [self._pool[i] for i in self._seed_ids]
        for i in range(stats.prompts):
            examples = self._examples(rng, number, seeds)
            seed = (self.config.random_seed * 1_000_003 + number * 1_009 + i) % (2**31)
            gens.append(asyncio.create_task(self._generate(rnd, examples, seed)))
        try:
            await self._wait(number - 1, "filtered")
            await self._wait(number - 2, "finalized")
            self._evict_zombies(number - 2)
            resolving = []
            for gen in gens:
                result = await gen
                if result is None:
                    continue
                prompt_id, instructions = result
                for instruction in instructions:
                    stats.candidates += 1
                    tid = self._filter_candidate(rnd, prompt_id, instruction)
                    if tid is not None:
                        resolving.append(asyncio.create_task(
                            self._resolve(rnd, tid, instruction, prompt_id)))
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
            self.store.finish_round(stats)
            rnd.finalized.set()
            self.bus.emit(ev.RoundFinished(stats, self._committed, self.config.target))

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.config.price_input_per_1k
                + completion_tokens * self.config.price_output_per_1k) / 1000

    # -- filtering ------------------------------------------------------------------------------
    def _reject(self, rnd: _Round, prompt_id: int | None, candidate: str,
                reason: RejectionReason, detail: str, *, task_id: int | None = None,
                similar: SimilarityResult | None = None) -> None:
        rnd.stats.rejected[reason.value] = rnd.stats.rejected.get(reason.value, 0) + 1
        match = similar.most_similar if similar else None
        similar_id = int(match.key) if match else None
        similar_text = self._texts.get(similar_id) if similar_id is not None else None
        score = match.score if match else None
        rid = self.store.add_rejection(
            round=rnd.number, prompt_id=prompt_id, candidate=candidate, reason=reason.value,
            detail=detail, similar_id=similar_id, similar_text=similar_text, score=score,
            task_id=task_id)
        self.bus.emit(ev.CandidateRejected(rid, rnd.number, candidate, reason.value, detail,
                                           similar_id, similar_text, score,
                                           similar.max_score if similar else None))

    def _filter_candidate(self, rnd: _Round, prompt_id: int, instruction: str) -> int | None:
        rejection = check_instruction(instruction, self.filters)
        if rejection is not None:
            self._reject(rnd, prompt_id, instruction, rejection.reason, rejection.detail)
            return None
        similar = self.index.query(instruction)
        if similar.is_duplicate:
            self._reject(rnd, prompt_id, instruction, RejectionReason.NEAR_DUPLICATE,
                         f"ROUGE-L {similar.max_score:.3f} > {self.config.threshold}",
                         similar=similar)
            return None
        tid = self._next_id
        self._next_id += 1
        self.index.add(tid, instruction)
        self._texts[tid] = instruction
        self._pending.append(tid)
        self._round_of[tid] = rnd.number
        rnd.task_ids.append(tid)
        self._similar[tid] = similar
        return tid

    def _evict_zombies(self, upto_round: int) -> None:
        keep = []
        for number, tid in self._zombies:
            if number <= upto_round:
                if tid in self.index and tid not in self._pool:
                    self.index.remove(tid)
                    self._texts.pop(tid, None)
            else:
                keep.append((number, tid))
        self._zombies = keep

    # -- requests ---------------------------------------------------------------------------------
    async def _ask(self, rnd: _Round, kind: str, request: P.CompletionRequest | P.ChatRequest,
                   params: SamplingParams, *, examples: list[Task] | None = None,
                   task_ref: int | None = None) -> tuple[int, LLMResponse | None, str | None]:
        """Send one request and record it. Returns (prompt id, response or None, failure kind)."""
        assert self._client is not None
        if isinstance(request, P.CompletionRequest):
            text = request.prompt
        else:
            text = json.dumps(list(request.messages), ensure_ascii=False)
        shown = [{"id": t.id, "origin": t.origin, "instruction": t.instruction}
                 for t in examples or []]
        prompt_id = self.store.add_prompt(round=rnd.number, kind=kind, prompt=text,
                                          examples=shown, task_ref=task_ref)
        self.bus.emit(ev.PromptSent(prompt_id, rnd.number, kind, text,
                                    tuple((t.id, t.origin, t.instruction)
                                          for t in examples or []), task_ref))
        try:
            resp = await self._client.request(request, params)
        except RequestAbandoned:
            self.store.finish_prompt(prompt_id, response=None, finish_reason=None, latency=0.0,
                                     prompt_tokens=0, completion_tokens=0, error="abandoned")
            return prompt_id, None, "abandoned"
        except RequestFailed as exc:
            self.store.finish_prompt(prompt_id, response=None, finish_reason=None, latency=0.0,
                                     prompt_tokens=0, completion_tokens=0, error=str(exc))
            self._on_failure(rnd.number, exc)
            return prompt_id, None, exc.kind
        self._last_success = time.monotonic()
        self._failures_in_a_row = 0
        self.store.finish_prompt(prompt_id, response=resp.text, finish_reason=resp.finish_reason,
                                 latency=resp.latency, prompt_tokens=resp.prompt_tokens,
                                 completion_tokens=resp.completion_tokens)
        rnd.stats.prompt_tokens += resp.prompt_tokens
        rnd.stats.completion_tokens += resp.completion_tokens
        self.tokens[0] += resp.prompt_tokens
        self.tokens[1] += resp.completion_tokens
        self.cost += self._cost(resp.prompt_tokens, resp.completion_tokens)
        self.bus.emit(ev.ResponseReceived(prompt_id, rnd.number, kind, resp.text,
                                          resp.finish_reason, resp.latency, resp.prompt_tokens,
                                          resp.completion_tokens))
        return prompt_id, resp, None

    def _on_failure(self, number: int, exc: RequestFailed) -> None:
        self._failures_in_a_row += 1
        self.store.add_error(number, exc.kind, str(exc))
        self.bus.emit(ev.RequestError(number, exc.kind, str(exc)))
        if self.state != "running":
            return
        quiet_for = time.monotonic() - self._last_success
        if exc.fatal:
            self._do_pause(f"{exc} - fix it, then resume", by_errors=True)
        elif quiet_for >= self.config.error_pause_seconds and self._failures_in_a_row >= 3:
            self._do_pause(
                f"every request has failed for {quiet_for:.0f}s ({self._failures_in_a_row} in a "
                f"row); last error: {exc}. Check that {self.base_url} is up, then resume",
                by_errors=True)

    async def _generate(self, rnd: _Round, examples: list[Task],
                        seed: int) -> tuple[int, list[str]] | None:
        c = self.config
        instructions = [t.instruction for t in examples]
        params = SamplingParams(max_tokens=c.generation_max_tokens, temperature=c.temperature,
                                top_p=c.top_p, presence_penalty=c.presence_penalty,
                                frequency_penalty=c.frequency_penalty, seed=seed)
        if c.api == "chat":
            request: P.CompletionRequest | P.ChatRequest = P.generation_chat(
                instructions, NEW_PER_PROMPT - len(instructions))
        else:
            request = P.generation_completion(instructions)
        prompt_id, resp, _ = await self._ask(rnd, "generate", request, params, examples=examples)
        if resp is None:
            return None
        if resp.finish_reason == "length":
            # As in the paper: a list cut off by the token limit is not trusted.
            self._reject(rnd, prompt_id, resp.text[-200:], RejectionReason.TRUNCATED_RESPONSE,
                         f"the response hit max_tokens ({resp.max_tokens}); discarded whole")
            return None
        first = len(instructions) + 1
        items = P.parse_instruction_list(resp.text, first if c.api == "completions" else None)
        return prompt_id, items[: NEW_PER_PROMPT - len(instructions)] if c.api == "chat" else items

    async def _resolve(self, rnd: _Round, tid: int, instruction: str, prompt_id: int) -> None:
        task = await self._complete(rnd, tid, instruction, prompt_id)
        self._resolved[tid] = task
        if task is None:
            self._zombies.append((rnd.number, tid))
        self._flush()

    async def _complete(self, rnd: _Round, tid: int, instruction: str,
                        prompt_id: int) -> Task | None:
        c = self.config
        chat = c.api == "chat"
        cls_req = P.classification_chat(instruction) if chat else \
            P.classification_completion(instruction)
        cls_params = SamplingParams(max_tokens=c.classification_max_tokens, temperature=0.0)
        _, cls_resp, failure = await self._ask(rnd, "classify", cls_req, cls_params, task_ref=tid)
        if cls_resp is None:
            if failure != "abandoned":
                self._reject(rnd, prompt_id, instruction, RejectionReason.REQUEST_FAILED,
                             "the classification request failed", task_id=tid)
            return None
        is_cls = bool(P.parse_classification(cls_resp.text))
        inst_req = P.instances_chat(instruction, is_cls) if chat else \
            P.instances_completion(instruction, is_cls)
        inst_params = SamplingParams(max_tokens=c.instance_max_tokens, temperature=0.0,
                                     presence_penalty=c.instance_presence_penalty)
        _, inst_resp, failure = await self._ask(rnd, "instances", inst_req, inst_params,
                                                task_ref=tid)
        if inst_resp is None:
            if failure != "abandoned":
                self._reject(rnd, prompt_id, instruction, RejectionReason.REQUEST_FAILED,
                             "the instance request failed", task_id=tid)
            return None
        if is_cls:
            raw = P.parse_output_first(inst_resp.text, starts_in_label=not chat)
        else:
            raw = P.parse_input_first(inst_resp.text, starts_in_example=not chat)
        if inst_resp.finish_reason == "length" and raw:
            raw = raw[:-1]  # the last instance was cut off
        kept, rejection = clean_instances(raw[: c.max_instances])
        if rejection is not None:
            self._reject(rnd, prompt_id, instruction, rejection.reason, rejection.detail,
                         task_id=tid)
            return None
        similar = self._similar.pop(tid, None)
        most_similar = []
        if similar is not None:
            most_similar = [SimilarTask(int(m.key), self._texts.get(int(m.key), ""), m.score)
                            for m in similar.top]
        return Task(id=tid, origin="machine", instruction=instruction, is_classification=is_cls,
                    instances=kept, round=rnd.number, prompt_id=prompt_id,
                    max_score=similar.max_score if similar else 0.0, most_similar=most_similar,
                    created=time.time())

    def _flush(self) -> None:
        """Commit resolved tasks in id order; each commit happens before the task counts."""
        while self._pending and self._pending[0] in self._resolved:
            tid = self._pending.popleft()
            task = self._resolved.pop(tid)
            number = self._round_of.pop(tid)
            self._similar.pop(tid, None)
            if task is None:
                continue
            if self._committed >= self.config.target:
                self._zombies.append((number, tid))  # surplus beyond the target
                continue
            self.store.insert_task(task)
            self._pool[tid] = task
            self._machine_ids.append(tid)
            self._machine_rounds.append(task.round)
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
