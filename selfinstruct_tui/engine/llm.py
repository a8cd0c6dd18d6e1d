"""All model traffic: one `AsyncOpenAI` client, so any OpenAI-compatible endpoint works.

The client's own retries are off (max_retries=0); this module retries with exponential backoff and
full jitter, honours Retry-After on 429/5xx, retries timeouts and connection errors, shrinks
max_tokens when the endpoint says the context is too long, keeps requests-per-minute and
tokens-per-minute under optional limits, and lets the engine pause new requests at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field

import openai

from selfinstruct_tui.engine.prompts import ChatRequest, CompletionRequest


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class LLMResponse:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency: float
    attempts: int
    max_tokens: int


class RequestFailed(Exception):
    """A request that failed for good. `fatal` failures (bad key, unknown model) will not heal."""

    def __init__(self, message: str, *, kind: str, fatal: bool = False, attempts: int = 1,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.fatal = fatal
        self.attempts = attempts
        self.status = status


class RequestAbandoned(Exception):
    """The engine is stopping: the request was never sent."""


@dataclass
class ClientSettings:
    base_url: str
    model: str
    api: str = "completions"  # or "chat"
    api_key: str = field(default="", repr=False)
    concurrency: int = 8
    request_timeout: float = 120.0
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


_CONTEXT_RE = re.compile(
    r"context[_ ]length|context window|maximum context|too long|exceeds the (?:model'?s? )?"
    r"(?:context|maximum)|n_ctx|context size", re.IGNORECASE)


_UNSUPPORTED_RE = re.compile(
    r"unsupported (?:parameter|value)|unsupported_(?:parameter|value)|does not support|"
    r"not supported with this model|unrecognized request argument", re.IGNORECASE)


def _context_limit_hint(message: str, max_tokens: int) -> int:
    """The largest max_tokens the endpoint's error message allows, or half the old value."""
    limit = re.search(r"(?:maximum context length|context (?:length|window|size)) (?:is|of) (\d+)",
                      message, re.IGNORECASE)
    prompt = re.search(r"(\d+) (?:tokens )?in (?:your|the) (?:prompt|messages)", message,
                       re.IGNORECASE)
    if limit and prompt:
        return int(limit.group(1)) - int(prompt.group(1)) - 8
    return max_tokens // 2


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class RateLimiter:
    """Sliding one-minute windows for requests and (estimated) tokens."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._events: deque[tuple[float, int]] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._events and now - self._events[0][0] >= 60:
                    self._events.popleft()
                used = sum(t for _, t in self._events)
                ok_rpm = not self.rpm or len(self._events) < self.rpm
                ok_tpm = not self.tpm or not self._events or used + tokens <= self.tpm
                if ok_rpm and ok_tpm:
                    self._events.append((now, tokens))
                    return
                await asyncio.sleep(max(0.01, 60 - (now - self._events[0][0])))


class LLMClient:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._client = openai.AsyncOpenAI(
            api_key=settings.api_key or "not-needed",
            base_url=settings.base_url,
            timeout=settings.request_timeout,
            max_retries=0,
        )
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = False
        self._limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.in_flight = 0
        self.completion_tokens = 0
        self.generation_seconds = 0.0

    # -- control ---------------------------------------------------------------------------------
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def abandon_pending(self) -> None:
        """Stop: requests not yet sent are abandoned; requests in flight finish."""
        self._stopping = True
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds else 0.0

    async def close(self) -> None:
        await self._client.close()

    # -- requests --------------------------------------------------------------------------------
    async def _gate(self) -> None:
        await self._running.wait()
        if self._stopping:
            raise RequestAbandoned()

    async def request(self, req: CompletionRequest | ChatRequest,
                      params: SamplingParams) -> LLMResponse:
        max_tokens = params.max_tokens
        attempt = 0
        shrinks = 0
        while True:
            attempt += 1
            await self._gate()
            estimate = _estimate_tokens(req) + max_tokens
            await self._limiter.acquire(estimate)
            async with self._slots:
                await self._gate()  # pausing stops new requests at once, even queued ones
                self.in_flight += 1
                started = time.monotonic()
                try:
                    resp = await self._send(req, params, max_tokens)
                except openai.BadRequestError as exc:
                    message = _error_text(exc)
                    if _CONTEXT_RE.search(message) and shrinks < 4:
                        new_max = _context_limit_hint(message, max_tokens)
                        if new_max >= 16:
                            shrinks += 1
                            max_tokens = min(new_max, max_tokens - 1)
                            attempt -= 1
                            continue
                    if _UNSUPPORTED_RE.search(message):
                        # Every request carries the same parameters: this will not heal.
                        raise RequestFailed(
                            f"the endpoint rejects a request parameter for model "
                            f"{self.settings.model!r} (400): {message}. Check --api (completions "
                            "vs chat) and --model; some models accept no sampling parameters",
                            kind="bad_request", fatal=True, attempts=attempt, status=400,
                        ) from None
                    raise RequestFailed(f"the endpoint refused the request (400): {message}",
                                        kind="bad_request", attempts=attempt, status=400) from None
                except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                    raise RequestFailed(
                        f"the endpoint refused the API key ({exc.status_code}): check "
                        "OPENAI_API_KEY (or the key_env setting) for this endpoint",
                        kind="auth", fatal=True, attempts=attempt, status=exc.status_code,
                    ) from None
                except openai.NotFoundError as exc:
                    raise RequestFailed(
                        f"the endpoint answered 404 for model {self.settings.model!r} at "
                        f"{self.settings.base_url}: check --model and --base-url (and --api: "
                        f"this is the {self.settings.api} API): {_error_text(exc)}",
                        kind="not_found", fatal=True, attempts=attempt, status=404,
                    ) from None
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    retryable = status == 429 or status >= 500 or status in (408, 409)
                    if not retryable or attempt > self.settings.max_retries:
                        raise RequestFailed(
                            f"HTTP {status} after {attempt} attempt(s): {_error_text(exc)}",
                            kind="http", attempts=attempt, status=status) from None
                    delay = _retry_after(exc)
                except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                    kind = "timeout" if isinstance(exc, openai.APITimeoutError) else "connection"
                    if attempt > self.settings.max_retries:
                        what = (f"no answer within {self.settings.request_timeout:g}s"
                                if kind == "timeout" else
                                f"cannot connect to {self.settings.base_url}")
                        raise RequestFailed(f"{what} after {attempt} attempt(s)", kind=kind,
                                            attempts=attempt) from None
                    delay = None
                except (openai.APIResponseValidationError, ValueError, KeyError,
                        IndexError, TypeError, AttributeError) as exc:
                    if attempt > self.settings.max_retries:
                        raise RequestFailed(f"malformed response from the endpoint: {exc}",
                                            kind="malformed", attempts=attempt) from None
                    delay = None
                else:
                    latency = time.monotonic() - started
                    self.completion_tokens += resp[3]
                    self.generation_seconds += latency
                    return LLMResponse(resp[0], resp[1], resp[2], resp[3], latency, attempt,
                                       max_tokens)
                finally:
                    self.in_flight -= 1
            # Backoff outside the slot so waiting does not hold concurrency.
            if delay is None:
                cap = min(self.settings.backoff_max,
                          self.settings.backoff_base * 2 ** (attempt - 1))
                delay = random.uniform(cap / 2, cap)
            await asyncio.sleep(min(delay, 600.0))

    async def _send(self, req: CompletionRequest | ChatRequest, params: SamplingParams,
                    max_tokens: int) -> tuple[str, str | None, int, int]:
        common = dict(
            model=self.settings.model,
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
        )
        if params.seed is not None:
            common["seed"] = params.seed
        if isinstance(req, CompletionRequest):
            resp = await self._client.completions.create(
                prompt=req.prompt, stop=list(req.stop)[:4] or openai.omit, **common)
            choice = resp.choices[0]
            text = choice.text
        else:
            resp = await self._client.chat.completions.create(
                messages=list(req.messages), **common)
            choice = resp.choices[0]
            text = choice.message.content
        if text is None:
            raise ValueError("the response has no text")
        usage = resp.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0) if usage else 0
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage else 0
        return text, choice.finish_reason, prompt_tokens, completion_tokens


def _estimate_tokens(req: CompletionRequest | ChatRequest) -> int:
    if isinstance(req, CompletionRequest):
        return len(req.prompt) // 4 + 1
    return sum(len(m["content"]) for m in req.messages) // 4 + 1


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error")
        msg = err.get("message") if isinstance(err, dict) else body.get("message")
        if msg:
            return str(msg)[:300]
    return str(exc.message)[:300]
