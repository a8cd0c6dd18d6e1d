"""Sending a request and recording it: the prompt before it leaves (visible while in flight), each
retry with its cause, the answer or the reason there is none, the tokens (estimated when the
endpoint reports no usage), and what the client learned about the endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.batch import Batcher
from selfinstruct_tui.engine.guards import SpendGuard
from selfinstruct_tui.engine.llm import (
    TRUNCATION_CHARS_PER_TOKEN,
    LLMClient,
    LLMResponse,
    RequestAbandoned,
    RequestFailed,
    SamplingParams,
    estimate_tokens,
)
from selfinstruct_tui.engine.prompts import CompletionRequest, Request
from selfinstruct_tui.engine.store import PromptKind, RoundStats, RunStore
from selfinstruct_tui.engine.task import Task

ABANDONED = "abandoned"


@dataclass(frozen=True)
class Asked:
    """A request's outcome: its prompt id, the answer or None, and when None why: a `Cause`
    or "abandoned"."""

    prompt_id: int
    response: LLMResponse | None
    failure: str | None


class RequestRecorder:
    """Sends through one `LLMClient`, records in the store, emits events, counts spend."""

    def __init__(self, client: LLMClient, store: RunStore, bus: ev.EventBus, guard: SpendGuard,
                 on_failure: Callable[[int, RequestFailed], None],
                 on_success: Callable[[], None]) -> None:
        self.client = client
        self.store = store
        self.bus = bus
        self.guard = guard
        self.on_failure = on_failure
        self.on_success = on_success
        self.saved_window: int | None = client.context_window
        self.saved_cap: int | None = None
        self.structured_noted: bool | None = None
        self.cut_noted = False  # a prompt the endpoint cut was said (once a session)
        # batch mode: requests go out as lines of their stage's batch job instead
        self.batcher: Batcher | None = None

    @property
    def structured(self) -> bool:
        """Ask for JSON-schema answers: the style can, and the endpoint has not refused."""
        client = self.client
        return client.settings.structured_output != "off" and client.structured is not False

    async def ask(self, stats: RoundStats, kind: PromptKind, request: Request,
                  params: SamplingParams, *, examples: list[Task] | None = None,
                  task_ref: int | None = None) -> Asked:
        """Send one request of round `stats.round` and record everything about it."""
        text = request.prompt if isinstance(request, CompletionRequest) else \
            json.dumps(list(request.messages), ensure_ascii=False)
        shown = tuple((t.id, t.origin, t.instruction) for t in examples or [])
        record = self.store.add_prompt(round=stats.round, kind=kind, prompt=text,
                                       examples=shown, task_ref=task_ref)
        stats.requests += 1
        self.bus.emit(ev.PromptSent.of(record))
        recorded = self.store.flushes if self.store.pending else None

        async def committed() -> None:
            """Sent once recorded: the group commit scheduled at the iteration's first write
            has run if this task waited for anything since (a concurrency slot, usually);
            otherwise it waits one loop turn for it (the ready queue is FIFO), and commits
            itself if the commit has still not run."""
            nonlocal recorded
            if recorded is not None and self.store.flushes == recorded:
                await asyncio.sleep(0)
                if self.store.flushes == recorded:
                    self.store.flush()
            recorded = None
            if self.store.unwritable is not None:  # its record may not have been committed
                raise RequestAbandoned("before sending")

        def on_retry(cause: str, attempt: int, delay: float, message: str, endpoint: str) -> None:
            stats.retries[cause] = stats.retries.get(cause, 0) + 1
            retry = self.store.add_retry(round=stats.round, prompt_id=record.id, cause=cause,
                                         attempt=attempt, delay=delay, message=message,
                                         endpoint=endpoint)
            self.bus.emit(ev.RequestRetried.of(retry))

        try:
            if self.batcher is not None:
                await committed()
                resp = await self.batcher.request(stats.round, kind, record.id, request, params,
                                                  self.structured)
            else:
                resp = await self.client.request(request, params, on_retry, route=kind,
                                                 ready=committed)
        except asyncio.CancelledError:  # the engine is shutting down around this request
            done = self.store.finish_prompt(record, response=None,
                                            error="abandoned: the engine stopped")
            self.bus.emit(ev.PromptFailed.of(done))
            raise
        except RequestAbandoned as exc:
            if not exc.attempts and exc.job is None:
                stats.unsent += 1
            after = f" after {exc.attempts} attempts" if exc.attempts > 1 else ""
            error = f"abandoned {exc.when}{after} (the run was stopping)"
            if exc.job is not None:  # paid for, and answered at the endpoint in its time
                error = (f"in batch job {exc.job}, which stays pending at the endpoint (the run "
                         "stopped): the next session reads its answer, not sent again")
            done = self.store.finish_prompt(record, response=None, attempts=exc.attempts,
                                            error=error, endpoint=exc.endpoint, model=exc.model,
                                            prompt_tokens=exc.prompt_tokens,
                                            completion_tokens=exc.completion_tokens)
            self._spent_anyway(stats, exc.prompt_tokens, exc.completion_tokens)
            self.bus.emit(ev.PromptFailed.of(done))
            return Asked(record.id, None, ABANDONED)
        except RequestFailed as exc:
            done = self.store.finish_prompt(record, response=None, error=str(exc),
                                            attempts=exc.attempts, endpoint=exc.endpoint,
                                            model=exc.model, prompt_tokens=exc.prompt_tokens,
                                            completion_tokens=exc.completion_tokens)
            self._spent_anyway(stats, exc.prompt_tokens, exc.completion_tokens)
            self.bus.emit(ev.PromptFailed.of(done))
            self.bus.emit(ev.RequestError.of(self.store.add_error(stats.round, exc.kind,
                                                                  str(exc), exc.endpoint)))
            self.on_failure(stats.round, exc)
            return Asked(record.id, None, exc.kind)
        self.on_success()
        p_tok, c_tok = resp.prompt_tokens, resp.completion_tokens
        if not resp.usage_reported:  # estimates keep the spend limits working
            p_tok, c_tok = estimate_tokens(text), estimate_tokens(resp.text)
            stats.usage_missing += 1
        done = self.store.finish_prompt(record, response=resp.text,
                                        finish_reason=resp.finish_reason, latency=resp.latency,
                                        prompt_tokens=p_tok, completion_tokens=c_tok,
                                        attempts=resp.attempts,
                                        usage_reported=resp.usage_reported,
                                        structured=resp.structured,
                                        endpoint=resp.endpoint or None,
                                        model=resp.model or None)
        stats.prompt_tokens += p_tok
        stats.completion_tokens += c_tok
        self.guard.spend(p_tok, c_tok)
        self.bus.emit(ev.ResponseReceived.of(done))
        if resp.prompt_cut:
            stats.prompts_cut += 1
            self._note_cut(resp)
        self._note_client_changes()
        return Asked(record.id, resp, None)

    def _spent_anyway(self, stats: RoundStats, prompt_tokens: int,
                      completion_tokens: int) -> None:
        """Count the usage of answers a failed request was given without a usable text
        (paid for all the same): the round's tokens and the spend limits see it."""
        if prompt_tokens or completion_tokens:
            stats.prompt_tokens += prompt_tokens
            stats.completion_tokens += completion_tokens
            self.guard.spend(prompt_tokens, completion_tokens)

    def _note_cut(self, resp: LLMResponse) -> None:
        """Say once that the endpoint cuts prompts to fit its context, and how to stop it."""
        if self.cut_noted:
            return
        self.cut_noted = True
        self.bus.emit(ev.Notice(
            f"the endpoint read a prompt of {resp.prompt_chars:,} characters as "
            f"{resp.prompt_tokens:,} tokens (a whole one is more than "
            f"{resp.prompt_chars // TRUNCATION_CHARS_PER_TOKEN:,.0f}): it cut the prompt to fit "
            "its context window and answered the rest. Such answers are kept (paid for; the "
            "filters judge them as any other) and counted per round as 'prompts cut'. Give the "
            "server a larger context: Ollama: OLLAMA_CONTEXT_LENGTH=8192 on the server (ollama "
            "serve), or a model created with 'PARAMETER num_ctx 8192' in its Modelfile (its "
            "OpenAI API takes no num_ctx); or fewer examples (num_prompt_instructions)"))

    def _note_client_changes(self) -> None:
        """Persist what the client learned (context window, structured output); say it once."""
        client = self.client
        if client.context_window and client.context_window != self.saved_window:
            self.saved_window = client.context_window
            self.store.set_meta("context_window", client.context_window)
            self.bus.emit(ev.Notice(f"the model's context window is {client.context_window} "
                                    "tokens; later requests ask for at most what fits"))
        if client.completion_cap and client.completion_cap != self.saved_cap:
            self.saved_cap = client.completion_cap
            self.bus.emit(ev.Notice(f"the model writes at most {client.completion_cap} tokens "
                                    "an answer; later requests ask for at most that (lower "
                                    "generation_max_tokens / instance_max_tokens to match)"))
        if client.structured is not None and client.structured != self.structured_noted \
                and client.settings.structured_output != "off":
            self.structured_noted = client.structured
            self.store.set_meta("structured_output",
                                "json_schema" if client.structured else "text")
            self.bus.emit(ev.Notice(
                "structured output: the endpoint accepts JSON schemas; chat answers are JSON"
                if client.structured else
                "structured output: not supported by the endpoint; chat answers are read as text"))
