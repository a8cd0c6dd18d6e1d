"""All model traffic: one `AsyncOpenAI` client, so any OpenAI-compatible endpoint works.

The client's own retries are off (max_retries=0); this module decides, in one table
(`map_error`), what each failure means:

* retried with exponential backoff and full jitter: timeouts, connection errors, 5xx, 408/409,
  malformed bodies; 429 (rate limit) and 503 with Retry-After pause *every* request until the
  endpoint's time has passed, then restart them staggered, instead of each worker retrying at
  the same instant;
* permanent, raised at the first answer with their own message (`RequestFailed.fatal`): exhausted
  quota, a bad key (401/403), an unknown model or route (404/405), a request of the wrong API
  (a chat model asked for completions or the reverse), a prompt that cannot fit the context window,
  a parameter the model rejects (or a sampling value out of its range: the setting is named),
  a spent budget, a 501, and a TLS failure (a certificate that cannot be verified, an
  https:// URL whose server speaks plain HTTP);
* context too long: the limit is learned from the endpoint's message (or `context_window`) and
  every later request asks for at most what fits; a max_tokens above the model's output limit
  is lowered to it the same way;
* a server loading its model or with a full queue (503) pauses every request, as a rate limit
  does, under its own cause; a wait said only in an error's words ("try again in 6s") is used
  as its Retry-After.

Every retry is reported to the caller with its cause. Text the endpoint sends back (errors and
answers) passes through a `Redactor`, so the API key never reaches a log, the store or the screen.
A stop abandons requests that are queued or waiting to retry at once and gives requests in flight
a bounded grace (`abandon_pending`).

With two or more endpoints (`ClientSettings.endpoints`) each attempt goes to the endpoint an
`EndpointPool` (engine/endpoints.py) chooses; a failure there is that endpoint's: it may be taken
out (the retry goes at once to another endpoint), cooled down (429) or dropped (refused key,
unknown model, quota) instead of pausing every request or ending the run. One endpoint keeps the
behaviour above unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import functools
import html
import json
import math
import os
import random
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai

try:  # openai 3.x sends through httpx2; earlier versions through httpx
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpx as _httpx  # type: ignore[no-redef]

from selfinstruct_tui.engine.endpoints import (
    DROP_CAUSES,
    Endpoint,
    EndpointChange,
    EndpointPool,
    EndpointSpec,
    EndpointState,
    EndpointStats,
)
from selfinstruct_tui.engine.errors import UserError
from selfinstruct_tui.engine.parsing import json_text, split_reasoning
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
    """One answer. `latency` in seconds (monotonic) for the attempt that answered; tokens as the
    endpoint reported them (`usage_reported` False when the response carried no `usage`)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency: float
    attempts: int
    max_tokens: int
    usage_reported: bool = True
    structured: bool = False
    endpoint: str = ""  # the base URL that answered (never the key)
    model: str = ""  # the model asked for there
    # the usage says the endpoint read less of the prompt than it holds (`prompt_was_cut`);
    # `prompt_chars`: the prompt's characters (its messages' contents for chat)
    prompt_cut: bool = False
    prompt_chars: int = 0


class Cause:
    """Names of failure causes, as stored and shown (retries per cause, errors)."""

    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    MALFORMED = "malformed"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    WRONG_API = "wrong_api"
    CONTEXT = "context"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    BAD_REQUEST = "bad_request"
    HTTP = "http"
    UNANSWERED = "unanswered"  # a batch (or batch command) ended without answering the request
    STRUCTURED_OUTPUT = "structured_output"
    TLS = "tls"
    REDIRECT = "redirect"  # the base URL answers with a redirect (3xx): it is not the API's
    LOADING = "loading"  # the server is up but still loading its model (llama-server's 503)
    OVERLOADED = "overloaded"  # the server is up but its queue is full (503, 529)
    MAX_TOKENS = "max_tokens"  # max_tokens above what the model writes an answer: lowered


class RequestFailed(Exception):
    """A request that failed for good. `fatal` failures will not heal: every later request would
    fail the same way, so the run stops at the first one. `endpoint` and `model`: where its last
    attempt went (None when it never left)."""

    def __init__(self, message: str, *, kind: str, fatal: bool = False, attempts: int = 1,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.fatal = fatal
        self.attempts = attempts
        self.status = status
        self.endpoint: str | None = None
        self.model: str | None = None
        # usage that answers without a usable text reported (paid for all the same)
        self.prompt_tokens = 0
        self.completion_tokens = 0


class RequestAbandoned(Exception):
    """The engine is stopping. `when`: "before sending", "waiting to retry" or "in flight";
    `attempts`: how many times the request had been sent; `endpoint`, `model`: where the last
    attempt went (None when it never left); `job`: the batch job (its store id) that holds the
    request and stays pending at the endpoint, so it is not abandoned: the next session reads
    its answer."""

    def __init__(self, when: str = "before sending", attempts: int = 0,
                 job: int | None = None) -> None:
        super().__init__(f"abandoned {when}")
        self.when = when
        self.attempts = attempts
        self.job = job
        self.prompt_tokens = 0  # as RequestFailed's
        self.completion_tokens = 0
        self.endpoint: str | None = None
        self.model: str | None = None


# (cause, attempt, delay s, message, endpoint: the base URL the failed attempt went to)
RetryCallback = Callable[[str, int, float, str, str], None]


@dataclass
class ClientSettings:
    base_url: str
    model: str
    api: str = "completions"  # or "chat"
    api_key: str = field(default="", repr=False)
    key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    request_timeout: float = 120.0
    # seconds to open a connection: an endpoint whose host drops packets fails in this time,
    # not in `request_timeout` (openai-python's own default is 5)
    connect_timeout: float = 5.0
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    context_window: int | None = None
    structured_output: str = "auto"  # auto | on | off (chat requests that carry a schema)
    # a request kind's own base URL (the embedded model's per-family processes); others go to
    # `base_url`
    routes: dict[str, str] = field(default_factory=dict)
    # two or more: a pool of endpoints (engine/endpoints.py) instead of `base_url`; `concurrency`
    # is then their sum
    endpoints: list[EndpointSpec] = field(default_factory=list)
    # fields added to every request's body (RunConfig.extra_body)
    extra_body: dict[str, Any] = field(default_factory=dict)
    # a pool: seconds without an answer, every endpoint out, before the run is told
    # (EndpointChange "all_down"; the run's error_pause_seconds); None: never
    down_after: float | None = None


MIN_REDACTED = 3  # shorter "keys" ("x", for a server that wants any) would blank common text


class RedactAll:
    """A `Redactor` for each of several keys (a pool of endpoints with their own keys)."""

    def __init__(self, keys: list[str]) -> None:
        self._each = [Redactor(k) for k in dict.fromkeys(keys) if k]

    def __call__(self, text: str) -> str:
        for redact in self._each:
            text = redact(text)
        return text


class Redactor:
    """Removes an API key from text: the key itself (of MIN_REDACTED characters or more: a
    local server's short key such as `hunter2` is a secret too) and any piece of it of 8+
    characters (a proxy that echoes `sk-abcd...` in an error still leaks most of it)."""

    def __init__(self, key: str) -> None:
        self.key = key if len(key) >= MIN_REDACTED else ""
        self._grams = {key[i:i + 8] for i in range(len(key) - 7)}

    def __call__(self, text: str) -> str:
        if not self.key or not text:
            return text
        if self.key in text:
            text = text.replace(self.key, "[redacted]")
        if any(g in text for g in self._grams):
            text = re.sub(r"[\w\-.~+/=*]{8,}",
                          lambda m: "[redacted]" if any(g in m.group(0) for g in self._grams)
                          else m.group(0), text)
        return text


# -- reading the endpoint's errors -----------------------------------------------------------

_CONTEXT_RE = re.compile(
    r"context[_ ]length|context window|maximum context|context size|too long|exceeds? the "
    r"(?:model'?s? )?(?:context|maximum)|n_ctx|exceed_context|max_model_len|"
    r"inputs?`? tokens \+ `?max_new_tokens|maximum (?:model|prompt) length", re.IGNORECASE)
_UNSUPPORTED_RE = re.compile(
    r"unsupported (?:parameter|value)|unsupported_(?:parameter|value)|does not support|"
    r"not supported with this model|unrecognized request argument|extra inputs are not permitted",
    re.IGNORECASE)
_STRUCTURED_RE = re.compile(r"response_format|json_schema|guided|grammar|structured output",
                            re.IGNORECASE)
_NEEDS_COMPLETIONS_RE = re.compile(
    r"not a chat model|chat[_ ]template|v1/completions\?|does not support chat|"
    r"no chat template", re.IGNORECASE)
_NEEDS_CHAT_RE = re.compile(
    r"is a chat model|v1/chat/completions\?|only supports? (?:the )?chat|not supported in the "
    r"v1/completions|does not support (?:the )?completions|completions api is not supported",
    re.IGNORECASE)
# a model that writes no text (an embedding model): Ollama's 400 "\"nomic-embed-text\" does not
# support generate" (completions), "... does not support chat" (chat), "does not support
# completion" (its capability check). Both APIs fail alike, so it is not the other API's.
_NO_GENERATION_RE = re.compile(r"\"[^\"]*\" does not support (?:generate|chat)\b|"
                               r"does not support (?:completion|generate)\b", re.IGNORECASE)
# Cloudflare's challenge pages ("Just a moment...", "Attention Required! | Cloudflare")
_CHALLENGE_RE = re.compile(r"^just a moment\b|attention required!? \| cloudflare|"
                           r"cf-chl|checking your browser", re.IGNORECASE)
# a budget or credit spent, as a 400 says it too (LiteLLM's older proxies, Anthropic's "Your
# credit balance is too low"): only these words there; a 400's "billing" may be the prompt's
_SPENT = r"budget has been exceeded|budget_exceeded|credit balance|out of credits"
_QUOTA_400_RE = re.compile(_SPENT, re.IGNORECASE)
_QUOTA_RE = re.compile(r"insufficient_quota|exceeded your current quota|billing|payment required|"
                       + _SPENT, re.IGNORECASE)
# a model the endpoint does not serve, said with a 400 (LiteLLM's proxy: "Invalid model name
# passed in model=m"; others: "model 'm' not found", with the run's model named: `_unknown_model`)
_INVALID_MODEL_RE = re.compile(r"invalid model name|model_not_found", re.IGNORECASE)
_MODEL_MISSING_RE = re.compile(r"\bmodel\b[^.;]{0,80}?\b(?:does not exist|not found)\b",
                               re.IGNORECASE)
# Where an error's text goes on with the request it refused (a proxy's "Received kwargs={...}",
# pydantic's 'input': {...} / input_value=...): the rules that stop a run read the text before
# it only, the endpoint's own words, never the prompt's (a task about "billing" or "the
# temperature must stay below 100 C" is no refusal of the run's settings)
_ECHO_RE = re.compile(r"kwargs\s*=|['\"](?:input|prompt|messages)['\"]\s*:|input_value\s*=|"
                      r"\bprompt\s*:\s*['\"]", re.IGNORECASE)
# a 503 while the model loads (llama-server: "Loading model"), or with a full queue (Ollama:
# "server busy ... maximum pending requests exceeded"; vLLM, SGLang: "The request queue is full")
_LOADING_RE = re.compile(r"loading model|model is (?:still )?loading|loading the model|"
                         r"model (?:is )?not (?:yet )?(?:loaded|ready)", re.IGNORECASE)
_OVERLOADED_RE = re.compile(r"overloaded|server busy|queue is full|maximum pending requests|"
                            r"too many (?:pending|concurrent|queued) requests|at capacity",
                            re.IGNORECASE)
# "try again in 6s" (OpenAI, Groq), "Try again in 60 seconds" (LiteLLM's router), "1m30s"
_DURATION = r"(\d+(?:\.\d+)?)\s*(seconds?|minutes?|ms|h|m|s)(?=\d|\b)"
_TRY_AGAIN_RE = re.compile(rf"(?:try again|retry) (?:in|after) ((?:{_DURATION}\s*)+)",
                           re.IGNORECASE)
# the most tokens the model writes in one answer (OpenAI: "max_tokens is too large: 100000. This
# model supports at most 16384 completion tokens"; Anthropic's: "max_tokens: 64000 > 8192, which
# is the maximum allowed number of output tokens")
_COMPLETION_CAP_RE = (re.compile(r"supports at most (\d+) (?:completion|output) tokens", re.I),
                      re.compile(r"> (\d+), which is the maximum allowed number of output tokens",
                                 re.I))
# The sampling fields every request carries, and the settings that set them: a refusal that
# names one fails every request alike, so the run stops there and names the setting.
SAMPLING_SETTINGS = {
    "presence_penalty": "presence_penalty (generation) and instance_presence_penalty (instances)",
    "frequency_penalty": "frequency_penalty", "top_p": "top_p", "temperature": "temperature",
    "seed": "request_seed (--no-request-seed sends none; --random-seed only changes it)",
}
NO_SEED_FLAG = "--no-request-seed"  # sends no `seed` field (RunConfig.request_seed False)
_SEED_REFUSED = "refuses the field 'seed'"  # in the failure's message (`seed_refused`)
_LIMIT_PATTERNS = (
    re.compile(r"maximum context length is (\d+)", re.I),
    re.compile(r"context (?:length|window|size) (?:is|of) (\d+)", re.I),
    re.compile(r"must be <= (\d+)", re.I),
    re.compile(r"max_model_len(?:=| is | of )(\d+)", re.I),
    re.compile(r"n_ctx\D{0,4}(\d+)", re.I),
    re.compile(r"maximum (?:model|prompt) length (?:of|is) (\d+)", re.I),  # vLLM, xAI
    re.compile(r"context length \((\d+) tokens\)", re.I),  # SGLang, Together
    re.compile(r"(\d+) maximum context length", re.I),  # Mistral
)
_PROMPT_PATTERNS = (
    re.compile(r"(\d+) (?:tokens )?in (?:your|the) (?:prompt|messages)", re.I),
    re.compile(r"request has (\d+) input tokens", re.I),
    re.compile(r"Given: (\d+) `?inputs?`? tokens", re.I),
    re.compile(r"n_prompt_tokens\D{0,4}(\d+)", re.I),
    re.compile(r"prompt (?:is|has|of) (\d+) tokens", re.I),
    re.compile(r"(?:messages|prompt) resulted in (\d+) tokens", re.I),
    re.compile(r"prompt \(length (\d+)\)", re.I),  # vLLM's engine
    re.compile(r"input \((\d+) tokens\)", re.I),  # SGLang, Together
    re.compile(r"(\d+) tokens from the input", re.I),  # SGLang
    re.compile(r"(?:prompt|request) contains (?:at least )?(\d+) (?:input )?tokens", re.I),
)


def context_numbers(message: str, body: object = None) -> tuple[int | None, int | None]:
    """(context window, prompt tokens) named in a context-length error, each None if absent.

    Covers OpenAI and llama-cpp-python ("maximum context length is N ... (P in your prompt"),
    vLLM ("P in the messages", "your request has P input tokens", "The decoder prompt (length P)
    is longer than the maximum model length of N"), SGLang and Together ("The input (P tokens) is
    longer than the model's context length (N tokens)", "P tokens from the input messages"), TGI
    ("must be <= N. Given: P `inputs` tokens"), Mistral, xAI and llama.cpp's server (`n_ctx` and
    `n_prompt_tokens` in the error body).
    """
    limit = prompt = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            limit = _int_or_none(err.get("n_ctx"))
            prompt = _int_or_none(err.get("n_prompt_tokens"))
    for pattern in _LIMIT_PATTERNS:
        if limit is None and (m := pattern.search(message)):
            limit = int(m.group(1))
    for pattern in _PROMPT_PATTERNS:
        if prompt is None and (m := pattern.search(message)):
            prompt = int(m.group(1))
    return limit, prompt


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def error_text(exc: openai.APIStatusError | Exception) -> str:
    """The endpoint's own words for an error: the JSON message, an HTML page's title
    ("504 Gateway Time-out"), or the start of a plain-text body."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) \
            else None
        detail = body.get("detail")
        if not msg and isinstance(detail, str):
            msg = detail
        elif not msg and isinstance(detail, list):  # FastAPI's validation errors (422)
            msg = "; ".join(
                f"{'.'.join(map(str, d.get('loc') or ()))}: {d.get('msg')}" if isinstance(d, dict)
                else str(d) for d in detail)
        if msg:
            return one_line(str(msg))[:400]
    if isinstance(body, (str, bytes)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return html_summary(text)[:400]
    message = str(getattr(exc, "message", exc))
    return html_summary(message)[:400]


def html_summary(text: str) -> str:
    if re.search(r"<(?:html|head|body|title|h1)\b", text, re.IGNORECASE):
        for tag in ("title", "h1", "h2"):
            match = re.search(rf"<{tag}[^>]*>(.*?)</{tag}>", text, re.IGNORECASE | re.DOTALL)
            if match and match.group(1).strip():
                return one_line(html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))))
        return one_line(html.unescape(re.sub(r"<[^>]+>", " ", text)))[:200]
    return one_line(text)


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            if float(ms) > 0:
                return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = parsed.timestamp() - time.time() if parsed else 0.0
    # 0, or a date already past (a clock that differs from the server's): the backoff's own
    # delay, not an immediate retry (7 attempts within 90 ms)
    return seconds if seconds > 0 else None


_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def delay_in_text(text: str) -> float | None:
    """Seconds an error's words ask to wait ("Please try again in 6s", "in 1m30.5s", "Try
    again in 60 seconds"), or None: rate limits often say it only there, without a Retry-After
    header (OpenAI's per-minute limits, LiteLLM's router cooling a deployment down)."""
    found = _TRY_AGAIN_RE.search(text)
    if not found:
        return None
    total = 0.0
    for number, unit in re.findall(_DURATION, found.group(1), re.IGNORECASE):
        unit = unit.lower()
        unit = "ms" if unit == "ms" else "m" if unit.startswith("m") else unit[0]
        total += float(number) * _UNIT_SECONDS[unit]
    return total if total > 0 else None


def completion_cap(text: str) -> int | None:
    """The most tokens the model writes in one answer, as a refusal of a larger max_tokens
    names it, or None."""
    for pattern in _COMPLETION_CAP_RE:
        if found := pattern.search(text):
            return int(found.group(1))
    return None


def own_words(text: str) -> str:
    """An error text up to where it goes on with the request it refused (`_ECHO_RE`): the
    endpoint's own words."""
    echo = _ECHO_RE.search(text)
    return text[:echo.start()] if echo else text


def _unknown_model(text: str, model: str) -> bool:
    """Whether an error's own words say the endpoint does not serve `model`: LiteLLM's
    "Invalid model name", a `model_not_found` code in the text, or "model ... does not exist /
    not found" naming the model itself."""
    if _INVALID_MODEL_RE.search(text):
        return True
    named = re.search(rf"(?<![\w.:/-]){re.escape(model)}(?![\w.:/-])", text, re.IGNORECASE) \
        if model else None
    return named is not None and _MODEL_MISSING_RE.search(text) is not None


def _sampling_field(text: str, strict: bool = False) -> str | None:
    """The sampling field of SAMPLING_SETTINGS an error text names, or None. Loose: quoted,
    after "parameter" or "body.", or heading a sentence. `strict`: only where the text says
    that field's value is refused (vLLM: "presence_penalty must be in [-2, 2], got 3.0";
    OpenAI: "2.5 is greater than the maximum of 2 - 'frequency_penalty'"; pydantic's
    "'loc': ('body', 'top_p')"; "Invalid value for 'temperature'"), not where a 400 about
    something else echoes the request ("{'top_p': 1.0, ...}")."""
    if not strict:
        named = _extra_body_field(text, dict.fromkeys(SAMPLING_SETTINGS))
        if named:
            return named
    for name in SAMPLING_SETTINGS:
        if re.search(rf"(?:^|[.:;]\s+|\(\s*)['\"`]?{name}['\"`]? (?:must|should|is (?:out|not)|"
                     rf"value)|"
                     rf"(?:maximum|minimum) of \S+ - ['\"`]{name}['\"`]|"
                     rf"\(\s*['\"]body['\"],\s*['\"]{name}['\"]\s*\)|"
                     rf"invalid value for ['\"`]?{name}\b", text, re.IGNORECASE):
            return name
    return None


@dataclass(frozen=True)
class Failure:
    """What one failed attempt means: its cause, whether to retry, whether it is permanent."""

    cause: str
    message: str
    retry: bool = False
    fatal: bool = False
    status: int | None = None
    delay: float | None = None  # the endpoint's Retry-After, seconds
    shared: bool = False  # pause every request (rate limits), not only this one


class WrongAPI(Exception):
    """A completions request answered by a chat message, or the reverse."""

    def __init__(self, use: str) -> None:
        super().__init__(use)
        self.use = use


class MalformedResponse(Exception):
    """A 200 answer without a usable text. `prompt_tokens`, `completion_tokens`: the usage it
    reported all the same (paid for, so counted)."""

    def __init__(self, message: str, prompt_tokens: int = 0, completion_tokens: int = 0
                 ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class ErrorInAnswer(Exception):
    """A 200 answer whose body is an error (`{"error": {...}}`, as LiteLLM and OpenRouter send
    one), or whose choice is (OpenRouter: `choices[0].error`, finish_reason "error", when the
    provider failed mid-answer): `status` is the error's own code when it gives one, `text` its
    message, `code` its code as given (None: none); `in_choice`: the choice's. `prompt_tokens`,
    `completion_tokens`: the usage the answer reported all the same (paid for, so counted)."""

    def __init__(self, status: int, text: str, code: str | None, *, in_choice: bool = False,
                 prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        super().__init__(text)
        self.status, self.text, self.code = status, text, code
        self.in_choice = in_choice
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens


# an error code in a 200 answer's body, as the status it stands for
_CODE_STATUS = {"invalid_api_key": 401, "authentication_error": 401, "permission_error": 403,
                "insufficient_quota": 429, "rate_limit_exceeded": 429, "model_not_found": 404,
                "context_length_exceeded": 400, "invalid_request_error": 400}


class NotAnAPI(Exception):
    """The base URL answered 200 with something that is not JSON (a web page, a wrong path).
    `advice`: what to do, when it is not the base URL to check."""

    def __init__(self, what: str, advice: str = "") -> None:
        super().__init__(what)
        self.advice = advice


def map_error(exc: BaseException, s: ClientSettings, *, answered: bool = False) -> Failure:
    """The one table from an exception to its cause and handling. `answered`: the endpoint
    has answered this session (so a dropped connection is not a TLS server's)."""
    if isinstance(exc, WrongAPI):
        other = "completions" if s.api == "chat" else "chat"
        return Failure(Cause.WRONG_API, f"the endpoint answered a {s.api} request with a "
                       f"{other} response: use --api {exc.use}", fatal=True)
    if isinstance(exc, NotAnAPI):
        return Failure(Cause.NOT_FOUND, f"{s.base_url} answered with {exc} instead of the OpenAI "
                       f"API: {exc.advice or 'check --base-url (it usually ends in /v1)'}",
                       fatal=True)
    if isinstance(exc, (openai.APIConnectionError, aiohttp.ClientError)):
        # openai.APITimeoutError is an APIConnectionError; which one it really was is read from
        # the transport's exception underneath (see `openai_client`).
        tls = _tls_failure(exc, s)
        if tls is not None:
            return tls
        undecoded = next((x for x in _chain(exc) if isinstance(x, _httpx.DecodingError)), None)
        if undecoded is not None:
            # A body whose Content-Encoding (gzip, deflate) does not match its bytes: the
            # endpoint answered, so it is not a connection failure (a proxy that labels a body
            # it did not compress does this)
            return Failure(Cause.MALFORMED, f"malformed response from {s.base_url}: the body "
                           f"could not be decompressed as its Content-Encoding says "
                           f"({undecoded})", retry=True)
        if _connect_timed_out(exc):
            # The request timeout bounds the wait for a connection too: the shorter one fired.
            limit, flag = (s.connect_timeout, "--connect-timeout") \
                if s.connect_timeout <= s.request_timeout else (s.request_timeout, "--timeout")
            return Failure(Cause.TIMEOUT, f"could not connect to {s.base_url} within "
                           f"{limit:g}s ({flag}; the host does not answer)", retry=True)
        if _timed_out(exc):
            return Failure(Cause.TIMEOUT, f"no answer within {s.request_timeout:g}s from "
                           f"{s.base_url}", retry=True)
        if _disconnected(exc):
            # A TLS server sent plain HTTP ends the connection without a word (uvicorn, so vLLM
            # and SGLang started with a certificate, do): say so where it may be the cause.
            hint = " (a server that expects HTTPS does this: then use https://)" \
                if s.base_url.startswith("http://") and not answered and \
                _reset_unanswered(exc) else ""
            return Failure(Cause.CONNECTION, f"the connection to {s.base_url} closed before an "
                           f"answer{hint}", retry=True)
        if any(isinstance(link, socket.gaierror) for link in _chain(exc)):
            host = urllib.parse.urlsplit(s.base_url).hostname
            return Failure(Cause.CONNECTION, f"cannot connect to {s.base_url}: the host name "
                           f"{host!r} does not resolve (DNS); check the spelling", retry=True)
        return Failure(Cause.CONNECTION, f"cannot connect to {s.base_url}", retry=True)
    if isinstance(exc, TimeoutError):  # the whole-answer deadline (`LLMClient._request`)
        return Failure(Cause.TIMEOUT, f"no whole answer within {s.request_timeout:g}s from "
                       f"{s.base_url} (--timeout; it came too slowly)", retry=True)
    if isinstance(exc, ErrorInAnswer):
        failure = status_failure(exc.status, exc.text, s, code=exc.code)
        where = (f"the provider's error (code {exc.code or exc.status}) in the answer's "
                 "choices[0].error, answered with HTTP 200") if exc.in_choice else \
            "an error answered with HTTP 200"
        return dataclasses.replace(failure, message=f"{failure.message} ({where})")
    if isinstance(exc, json.JSONDecodeError):  # a JSON content type over a body that is not
        start = one_line(exc.doc[:80]) if isinstance(exc.doc, str) else ""
        return Failure(Cause.MALFORMED, f"malformed response from {s.base_url}: the body is not "
                       f"JSON ({exc}; it starts {start!r})",
                       retry=True)
    if isinstance(exc, (openai.APIResponseValidationError, MalformedResponse, ValueError,
                        KeyError, IndexError, TypeError, AttributeError)):
        return Failure(Cause.MALFORMED, f"malformed response from the endpoint: {exc}", retry=True)
    if not isinstance(exc, openai.APIStatusError):
        return Failure(Cause.HTTP, f"unexpected error: {exc!r}")
    if 300 <= exc.status_code < 400:
        return redirect_failure(exc, s)
    return status_failure(exc.status_code, error_text(exc), s, code=error_code(exc.body),
                          retry_after=_retry_after(exc))


def redirect_failure(exc: openai.APIStatusError, s: ClientSettings) -> Failure:
    """A 3xx answer (never followed, see `openai_client`), fatal: naming where it points and
    the base URL that would reach it. Followed, a 301/302/303 turns the POST into a GET (the
    server then answers 404 or 405) and a redirect to another host drops the Authorization
    header (answered 401): both blamed the model or the key, not the URL."""
    status = exc.status_code
    location = exc.response.headers.get("location") if exc.response is not None else None
    if not location:
        return Failure(Cause.REDIRECT, f"{s.base_url} answered with a redirect ({status}) that "
                       "names no new address: check --base-url", fatal=True, status=status)
    asked = str(exc.request.url) if exc.request is not None else s.base_url
    target = urllib.parse.urljoin(asked, location)
    # the path after the base URL ("/completions"): the same path under the new address
    tail = asked[len(s.base_url.rstrip("/")):] if asked.startswith(s.base_url.rstrip("/")) \
        else ""
    base = target[:-len(tail)] if tail and target.endswith(tail) else None
    advice = f"use --base-url {base}" if base else "check --base-url"
    return Failure(Cause.REDIRECT, f"{s.base_url} redirects requests ({status} to {target}); "
                   f"they are not followed (a redirected request can lose its body or its key): "
                   f"{advice}", fatal=True, status=status)


def status_failure(status: int, text: str, s: ClientSettings, *, code: str | None = None,
                   retry_after: float | None = None) -> Failure:
    """An HTTP error answer's cause and handling: `status`, the endpoint's words `text`
    (`error_text`), the error body's `code` or `type`, the Retry-After wait (s). Shared by
    requests (`map_error`) and a batch's failed lines, so that a line failing for a reason no
    later request can heal (a refused key, an unknown model, a refused --extra-body field) is
    as fatal as the request would be."""
    where = f"{s.base_url} (model {s.model!r}, {s.api} API)"
    own = own_words(text)  # what stops a run is read in the endpoint's words, not an echo
    if retry_after is None and status in (429, 503, 529):
        retry_after = delay_in_text(text)
    if status == 501:
        # Not Implemented: no retry heals it, and it is not the other API's either
        # (llama-server started with --embeddings answers both "This server does not support
        # completions. Start it without `--embeddings`")
        return Failure(Cause.NOT_FOUND, f"the server at {s.base_url} does not implement these "
                       f"requests ({status}: {text}): do what its message says, or check "
                       "--base-url", fatal=True, status=status)
    if status in (400, 404) and _NO_GENERATION_RE.search(own):
        return Failure(Cause.NOT_FOUND, f"this model does not generate text ({status}: {text}; "
                       f"model {s.model!r} at {s.base_url}, an embedding model?): choose a "
                       "generating model with --model", fatal=True, status=status)
    if _NEEDS_COMPLETIONS_RE.search(text) and s.api == "chat":
        return Failure(Cause.WRONG_API, f"the model at {s.base_url} does not take chat requests "
                       f"({status}: {text}): use --api completions", fatal=True, status=status)
    if _NEEDS_CHAT_RE.search(text) and s.api == "completions":
        return Failure(Cause.WRONG_API, f"the model at {s.base_url} does not take completions "
                       f"requests ({status}: {text}): use --api chat", fatal=True, status=status)
    if status in (403, 503) and _CHALLENGE_RE.search(text):
        return Failure(Cause.AUTH, f"{s.base_url} answered with a bot-protection challenge page "
                       f"({status}: {text}), not the API: it is not about the key. Use the "
                       "provider's API URL, or have this machine's address let through",
                       fatal=True, status=status)
    if status in (401, 403) and not s.api_key:
        return Failure(Cause.AUTH, f"the endpoint at {s.base_url} wants an API key and none was "
                       f"sent ({status}: {text}): {s.key_env} is not set. Set it (or key_env to "
                       "the variable that holds the key) and run the same command again",
                       fatal=True, status=status)
    if status in (401, 403):
        return Failure(Cause.AUTH, f"the endpoint refused the API key ({status}: {text}). Check "
                       f"{s.key_env} (or the key_env setting) for {s.base_url}", fatal=True,
                       status=status)
    if status == 404:
        return Failure(Cause.NOT_FOUND, f"the endpoint answered 404 ({text}) for {where}: check "
                       "--model and --base-url", fatal=True, status=status)
    if status == 405:
        return Failure(Cause.NOT_FOUND, f"the endpoint answered 405 ({text}) for {where}: "
                       "--base-url should end where /completions and /chat/completions live "
                       "(usually .../v1)", fatal=True, status=status)
    if status == 402 or status == 429 and _QUOTA_RE.search(text) or status == 400 and \
            _QUOTA_400_RE.search(own) or status in (400, 429) and \
            code in ("insufficient_quota", "budget_exceeded"):
        return Failure(Cause.QUOTA, f"the account's quota is exhausted ({status}: {text}). Add "
                       "credit or raise the limit, then resume", fatal=True, status=status)
    if status == 429:
        return Failure(Cause.RATE_LIMIT, f"rate limited (429: {text})", retry=True,
                       status=status, delay=retry_after, shared=True)
    if status in (400, 413, 422):
        refused = _extra_body_field(text, s.extra_body)
        if refused:
            # One of the user's own request fields: only taking it out helps, so neither a
            # retry nor the generic advice about --api and --model (and in a pool this
            # endpoint is dropped: another server may take the field)
            return Failure(Cause.UNSUPPORTED_PARAMETER, f"the endpoint at {s.base_url} refuses "
                           f"the field {refused!r} {OF_EXTRA_BODY} ({status}: {text}): take it "
                           "out of --extra-body or the config file's [extra_body] table (a "
                           "resumed run takes a new --extra-body, '{}' for none)", fatal=True,
                           status=status)
        if _sampling_field(own, strict=not _UNSUPPORTED_RE.search(own)) == "seed":
            # The generation requests' seed: no value of --random-seed helps, only sending none
            # (OpenAI's reasoning models: "Unsupported parameter: 'seed' ..."; others: "seed is
            # not supported")
            return Failure(Cause.UNSUPPORTED_PARAMETER, f"the endpoint {_SEED_REFUSED} "
                           f"({status}: {text}): it takes no seed. Run with {NO_SEED_FLAG} (or "
                           "request_seed = false in the config file; a resumed run takes it) "
                           "to send none", fatal=True, status=status)
        if completion_cap(text):  # max_tokens above the model's output limit: lowered
            return Failure(Cause.MAX_TOKENS, text, status=status)
        if _CONTEXT_RE.search(text):
            return Failure(Cause.CONTEXT, text, status=status)
        if _STRUCTURED_RE.search(text):
            return Failure(Cause.STRUCTURED_OUTPUT, text, status=status)
        if _unknown_model(own, s.model):
            return Failure(Cause.NOT_FOUND, f"the endpoint does not serve the model ({status}: "
                           f"{text}) for {where}: check --model (its /models lists the names "
                           "it takes)", fatal=True, status=status)
        if _UNSUPPORTED_RE.search(own):
            sampling = _sampling_field(own)
            added = (f"; or a field of --extra-body ({', '.join(sorted(s.extra_body))}): take "
                     "it out" if s.extra_body else "")
            sent = f" ({sampling} comes from the setting {SAMPLING_SETTINGS[sampling]})" \
                if sampling else ""
            return Failure(Cause.UNSUPPORTED_PARAMETER, f"the endpoint rejects a request "
                           f"parameter for model {s.model!r} ({status}: {text}){sent}. Check "
                           "--api (completions vs chat) and --model; some models accept no "
                           f"sampling parameters{added}", fatal=True, status=status)
        sampling = _sampling_field(own, strict=True)
        if sampling:
            # A value out of the server's range (vLLM: "presence_penalty must be in [-2, 2],
            # got 3.0"): every request carries it, so every one would be refused alike
            return Failure(Cause.UNSUPPORTED_PARAMETER, f"the endpoint refuses the {sampling} "
                           f"this run sends ({status}: {text}): change "
                           f"{SAMPLING_SETTINGS[sampling]} in the config file to a value it "
                           "takes, then resume", fatal=True, status=status)
        if status == 413:  # a proxy's body size limit (nginx's 1 MB default): fixable there
            return Failure(Cause.HTTP, f"the request is too large for the endpoint or a proxy in "
                           f"front of it ({status}: {text}): raise its limit (nginx: "
                           "client_max_body_size), then resume; the candidate stays open",
                           status=status)
        return Failure(Cause.BAD_REQUEST, f"the endpoint refused the request ({status}: {text})",
                       status=status)
    if status == 503 and _LOADING_RE.search(text):
        # Up, and answering: it will serve once the model is in memory. One pause for every
        # request (as a rate limit's), named for what it is, not "check that it is up"
        return Failure(Cause.LOADING, f"{s.base_url} is still loading the model ({status}: "
                       f"{text})", retry=True, status=status, delay=retry_after, shared=True)
    if status == 529 or status >= 500 and _OVERLOADED_RE.search(text):
        return Failure(Cause.OVERLOADED, f"{s.base_url} is overloaded ({status}: {text})",
                       retry=True, status=status, delay=retry_after, shared=True)
    if status >= 500:
        return Failure(Cause.SERVER_ERROR, f"HTTP {status}: {text}", retry=True, status=status,
                       delay=retry_after, shared=retry_after is not None)
    if status in (408, 409):
        return Failure(Cause.HTTP, f"HTTP {status}: {text}", retry=True, status=status,
                       delay=retry_after)
    return Failure(Cause.HTTP, f"HTTP {status}: {text}", status=status)


OF_EXTRA_BODY = "of --extra-body"  # after the refused field's name in the failure's message
_REFUSED_FIELD_RE = re.compile(rf"refuses the field '([^']+)' {OF_EXTRA_BODY}")


def refused_extra_body_field(message: str) -> str | None:
    """The --extra-body field ("a.b") that a failure's message (`map_error`'s) says an
    endpoint refused, or None: the resume command then leaves it out."""
    found = _REFUSED_FIELD_RE.search(message)
    return found.group(1) if found else None


def seed_refused(message: str) -> bool:
    """Whether a failure's message (`map_error`'s) says the endpoint takes no `seed` field:
    the resume command then adds NO_SEED_FLAG."""
    return _SEED_REFUSED in message


def without_field(extra: dict[str, Any], dotted: str) -> dict[str, Any]:
    """`extra` without the field "a.b" (a table left empty by it goes too); a copy."""
    head, _, rest = dotted.partition(".")
    out = dict(extra)
    if rest and isinstance(out.get(head), dict):
        inner = without_field(out[head], rest)
        if inner:
            out[head] = inner
        else:
            del out[head]
    else:
        out.pop(head, None)
    return out


def _extra_body_field(text: str, extra: dict[str, Any], prefix: str = "") -> str | None:
    """The --extra-body field (at any depth, as "a.b"; the deepest one named) that an error text
    names, or None: the fields a user adds are the likeliest cause of a refusal that names
    them. A name like a word of prose ("user", "metadata") counts only where it reads as a
    field: quoted, after a dot (body.user) or after "argument", "parameter", "field" or
    "property" (OpenAI: "Unrecognized request argument supplied: user"); one with "_" or a
    digit in it (top_k) anywhere as a word."""
    for key, value in extra.items():
        if isinstance(value, dict):
            inner = _extra_body_field(text, value, f"{prefix}{key}.")
            if inner:
                return inner
        name = re.escape(key)
        if re.fullmatch(r"[A-Za-z]+", key):
            # quoted, but not as a key of a printed dict: vLLM's validation errors hold
            # pydantic's {'type': ..., 'loc': ('body', 'top_k'), 'input': ...} whatever the field
            named = (rf"(['\"`]){name}\1(?!\s*:)|(?:\.|\b(?:argument|parameter|field|property)s?"
                     rf"(?:\s+supplied)?:?\s+(?:\w+,\s*)*){name}(?!\w)")
        else:
            named = rf"(?<!\w){name}(?!\w)"
        if re.search(named, text, re.IGNORECASE):
            return prefix + key
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions under it (`__cause__`, else `__context__`), outermost first."""
    links: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and all(link is not seen for seen in links):
        links.append(link)
        link = link.__cause__ or link.__context__
    return links


def _timed_out(exc: BaseException) -> bool:
    """Whether a connection-level failure was a timeout. The exception the transport raised
    decides, not the name openai gave it: the aiohttp transport reports a refused or dropped
    connection as a ConnectTimeout (openai.APITimeoutError), with the real error as its cause."""
    chain = _chain(exc)
    if any(isinstance(link, TimeoutError) for link in chain):  # asyncio's, socket's, aiohttp's
        return True
    if len(chain) > 1 and isinstance(chain[-1], (OSError, aiohttp.ClientError)):
        return False  # refused, reset, disconnected, not HTTP
    return isinstance(exc, openai.APITimeoutError)


def _tls_failure(exc: BaseException, s: ClientSettings) -> Failure | None:
    """A TLS handshake that failed for a reason no retry changes, or None. Retrying these only
    made the endpoint look down ("cannot connect"), which hid the fix."""
    # the ssl module's own error underneath (aiohttp's wrappers subclass SSLError too)
    link = next((x for x in _chain(exc) if isinstance(x, ssl.SSLError)
                 and not isinstance(x, aiohttp.ClientError)), None)
    if link is None or isinstance(link, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return None  # the peer hung up mid-handshake: a connection failure, retried
    host = _httpx.URL(s.base_url).host
    if isinstance(link, ssl.SSLCertVerificationError):
        why = getattr(link, "verify_message", "") or link.reason or str(link)
        return Failure(Cause.TLS, f"the TLS certificate of {host} ({s.base_url}) cannot be "
                       f"verified ({why}): if the endpoint uses a private CA or a self-signed "
                       "certificate, set SSL_CERT_FILE to that CA's certificate (PEM) and run "
                       "again", fatal=True)
    if link.reason == "WRONG_VERSION_NUMBER":
        return Failure(Cause.TLS, f"{s.base_url} is https://, but the server there answers "
                       "without TLS: use http:// in --base-url", fatal=True)
    return Failure(Cause.TLS, f"the TLS handshake with {host} ({s.base_url}) failed "
                   f"({link.reason or link}); check the URL's scheme and port", fatal=True)


def _connect_timed_out(exc: BaseException) -> bool:
    """Whether the connection could not be opened in time (aiohttp's sock_connect timeout;
    httpx's ConnectTimeout only when nothing else lies underneath: the aiohttp transport also
    names a refused connection so)."""
    chain = _chain(exc)
    if any(isinstance(link, aiohttp.ConnectionTimeoutError) for link in chain):
        return True
    return isinstance(chain[-1], _httpx.ConnectTimeout)


# What a server that hung up, reset the connection or stopped mid-answer raises (aiohttp, httpx)
_DISCONNECTS = (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionResetError,
                BrokenPipeError, _httpx.RemoteProtocolError, _httpx.ReadError)


def _reset_unanswered(exc: BaseException) -> bool:
    """The server reset the connection or hung up before any byte of an answer."""
    return any(isinstance(link, (ConnectionResetError, aiohttp.ServerDisconnectedError))
               for link in _chain(exc))


def _disconnected(exc: BaseException) -> bool:
    """Whether a connection-level failure came after the connection was made."""
    return any(isinstance(link, _DISCONNECTS) for link in _chain(exc))


def error_code(body: object) -> str | None:
    """An error body's `code` (or `type`): "insufficient_quota" tells a quota from a rate limit.
    A code that is only the status again (LiteLLM: "code": "429", "type": "budget_exceeded")
    gives way to the type."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            named = [str(v) for v in (err.get("code"), err.get("type"))
                     if v is not None and str(v) not in ("", "None")]
            return next((v for v in named if not v.isdigit()), named[0] if named else None)
    return None


class RateLimiter:
    """Paces requests evenly under `rpm` requests and `tpm` (estimated) tokens per minute
    (either None or 0: no limit): one request leaves every 60/rpm s, and a request of n tokens
    holds the next one back 60*n/tpm s; FIFO. This is GCRA (the generic cell rate algorithm)
    with no burst allowance, so any 60 s holds at most rpm + 1 requests and tpm tokens plus one
    request's. Even spacing, not a sliding minute window: a window let a whole minute's
    requests leave at once and then waited, and providers enforce a per-minute limit over
    shorter periods too (OpenAI: "60,000 requests/minute may be enforced as 1,000
    requests/second"), which such a burst exceeds."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._next = 0.0  # monotonic seconds: the earliest the next request may leave
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Wait until a request of `tokens` (estimated prompt + max completion) may leave.
        `sleep(seconds)` waits its turn: the client's own, which a stop ends (RequestAbandoned;
        the turn is not taken) and a pause extends. A low --tpm makes turns minutes apart."""
        if not self.rpm and not self.tpm:
            return
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await sleep(self._next - now)
                now = max(self._next, time.monotonic())
            self._next = now + max(60 / self.rpm if self.rpm else 0.0,
                                   60 * tokens / self.tpm if self.tpm else 0.0)


class LLMClient:
    """Sends requests with the policy above. Not thread-safe: use it from one event loop."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.redact: Callable[[str], str] = Redactor(settings.api_key)
        self._endpoint_settings: dict[str, ClientSettings] = {}
        self._clients: dict[str, openai.AsyncOpenAI] = {
            url: openai_client(url, settings.api_key, settings.request_timeout,
                               settings.concurrency, settings.connect_timeout)
            for url in {settings.base_url, *settings.routes.values()}}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = False
        self._abandoning = False
        self._wake = asyncio.Event()  # set on stop: ends every backoff sleep at once
        self._active: set[asyncio.Task[Any]] = set()
        self._answered: set[str] = set()  # base URLs that answered this session
        self._limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self._cooldown_until = 0.0  # monotonic: no request leaves before this
        self._restart_at = 0.0  # staggered restart after a shared pause
        self._restart_left = 0
        self._stagger = 0.0
        self.context_window: int | None = settings.context_window or None
        # the most tokens the model writes an answer, learned from a refused max_tokens
        self.completion_cap: int | None = None
        self._chars_per_token = 3.0  # conservative until the endpoint reports prompt tokens
        self.structured: bool | None = None if settings.structured_output == "auto" else \
            settings.structured_output == "on"
        self.in_flight = 0
        self.endpoints: EndpointPool | None = None
        self.on_endpoint_change: Callable[[EndpointChange], None] | None = None
        if len(settings.endpoints) > 1:
            self._start_pool(settings)

    # -- a pool of endpoints (engine/endpoints.py); absent for one endpoint ---------------------
    def _start_pool(self, settings: ClientSettings) -> None:
        endpoints = []
        for spec in settings.endpoints:
            client = openai_client(spec.base_url, spec.api_key, settings.request_timeout,
                                   spec.concurrency, settings.connect_timeout)
            endpoint = Endpoint(spec, client, RateLimiter(spec.requests_per_minute, None))
            endpoints.append(endpoint)
            # its own key: a refusal's message says whether a key was sent at all
            self._endpoint_settings[spec.base_url] = ClientSettings(
                base_url=spec.base_url, model=spec.model, api=settings.api,
                api_key=spec.api_key, key_env=spec.key_env,
                request_timeout=settings.request_timeout,
                connect_timeout=settings.connect_timeout, extra_body=settings.extra_body)
        self.endpoints = EndpointPool(endpoints, probe_base=max(0.05, 2 * settings.backoff_base),
                                      probe_max=settings.backoff_max,
                                      down_after=settings.down_after,
                                      on_change=self._endpoint_changed)
        self.redact = RedactAll([settings.api_key, *(s.api_key for s in settings.endpoints)])
        self._slots = asyncio.Semaphore(self.endpoints.concurrency)

    def _endpoint_changed(self, change: EndpointChange) -> None:
        if self.on_endpoint_change is not None:
            self.on_endpoint_change(change)

    def endpoint_stats(self) -> list[EndpointStats]:
        """Per endpoint: in flight, requests/s, errors, median latency; [] for one endpoint."""
        return self.endpoints.stats() if self.endpoints is not None else []

    # -- control ---------------------------------------------------------------------------------
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()
        if self.endpoints is not None:
            self.endpoints.probe_now()

    def abandon_pending(self, grace: float | None = None) -> None:
        """Stop. Requests not yet sent and requests waiting to retry are abandoned now; requests in
        flight get `grace` seconds to finish, then are abandoned too (None: they may finish)."""
        self._stopping = True
        self._running.set()
        self._wake.set()
        if self.endpoints is not None:
            self.endpoints.wake()
        if grace is not None:
            if grace <= 0:
                self._abandon_in_flight()
            else:
                asyncio.get_running_loop().call_later(grace, self._abandon_in_flight)

    def _abandon_in_flight(self) -> None:
        self._abandoning = True
        for task in list(self._active):
            task.cancel()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        for endpoint in self.endpoints.endpoints if self.endpoints is not None else []:
            await endpoint.client.close()

    # -- waiting -----------------------------------------------------------------------------------
    async def _sleep(self, delay: float, when: str = "waiting to retry") -> None:
        if self._stopping:
            raise RequestAbandoned(when)
        if delay > 0:
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
        if self._stopping:
            raise RequestAbandoned(when)

    async def _paced(self, delay: float) -> None:
        """A request's wait for its turn under a rate limit: a stop abandons it (it was never
        sent), and a pause holds it until the run resumes."""
        when = "waiting its turn under the rate limit"
        await self._sleep(delay, when)
        await self._running.wait()
        if self._stopping:
            raise RequestAbandoned(when)

    async def _gate(self, sending: bool = True) -> None:
        """Wait while the client is paused or a shared pause runs. `sending`: the request goes
        out right after this gate, so it takes the next slot of a staggered restart; a request
        still queued for a concurrency slot only waits out the pause (a slot it took there would
        leave unused while it queues)."""
        await self._running.wait()
        if self._stopping:
            raise RequestAbandoned()
        now = time.monotonic()
        if not sending:
            if now < self._cooldown_until:
                await self._sleep(self._cooldown_until - now, "waiting out a rate limit")
                await self._running.wait()
            return
        if now < self._cooldown_until or self._restart_left > 0:
            # After a shared pause requests leave one by one, `_stagger` apart.
            slot = max(self._restart_at, self._cooldown_until, now)
            self._restart_at = slot + self._stagger
            self._restart_left = max(0, self._restart_left - 1)
            await self._sleep(slot - now, "waiting out a rate limit")
            await self._running.wait()

    def _shared_pause(self, delay: float) -> None:
        """Hold every request until `delay` seconds from now, then let the next `concurrency`
        requests leave one by one (slots only move forward, so no two leave together)."""
        until = time.monotonic() + delay
        self._cooldown_until = max(self._cooldown_until, until)
        self._restart_left = self.settings.concurrency
        self._stagger = min(1.0, max(0.02, delay / max(1, self.settings.concurrency)))

    # -- requests --------------------------------------------------------------------------------
    def _prompt_chars(self, req: CompletionRequest | ChatRequest) -> int:
        if isinstance(req, CompletionRequest):
            return len(req.prompt)
        return sum(len(m["content"]) for m in req.messages)

    def _fit(self, chars: int, max_tokens: int) -> int:
        """max_tokens capped to what fits the learned context window beside the prompt."""
        if not self.context_window:
            return max_tokens
        estimate = math.ceil(chars / self._chars_per_token * 1.05) + 8
        return max(16, min(max_tokens, self.context_window - estimate))

    async def request(self, req: CompletionRequest | ChatRequest, params: SamplingParams,
                      on_retry: RetryCallback | None = None, route: str | None = None,
                      ready: Callable[[], Awaitable[None]] | None = None) -> LLMResponse:
        """Send one request, retrying as the module docstring says. `ready`, if given, is
        awaited once a concurrency slot is held and before each attempt leaves (the engine
        waits there for the request's record to be committed: the wait for a slot usually
        covers it, which saves the request an event-loop turn of its own).

        Raises RequestFailed (kind = a `Cause`; `fatal` when no later request can succeed) or
        RequestAbandoned (the client was stopped).
        """
        sent = [0, 0, 0]  # attempts sent; usage of answers that had no usable text
        url = self.settings.routes.get(route or "", self.settings.base_url)
        tried: list[ClientSettings] = []  # where the last attempt went
        try:
            return await self._request(req, params, on_retry, sent, self._clients[url], url,
                                       ready, tried)
        except (RequestFailed, RequestAbandoned) as exc:
            if tried:
                exc.endpoint = url if tried[-1] is self.settings else tried[-1].base_url
                exc.model = tried[-1].model or None
            exc.prompt_tokens, exc.completion_tokens = sent[1], sent[2]
            if isinstance(exc, RequestFailed):
                raise
            exc.attempts = sent[0]
            if sent[0] and exc.when == "before sending":
                exc.when = "waiting to retry"
            raise

    async def _request(self, req: CompletionRequest | ChatRequest, params: SamplingParams,
                       on_retry: RetryCallback | None, sent: list[int],
                       client: openai.AsyncOpenAI, url: str,
                       ready: Callable[[], Awaitable[None]] | None = None,
                       tried: list[ClientSettings] | None = None) -> LLMResponse:
        chars = self._prompt_chars(req)
        max_tokens = self._fit(chars, params.max_tokens)
        if self.completion_cap is not None:
            max_tokens = min(max_tokens, self.completion_cap)
        attempt = 0
        context_retries = 0
        task = asyncio.current_task()
        while True:
            attempt += 1
            await self._gate(sending=False)
            await self._slots.acquire()
            try:
                if ready is not None:
                    await ready()
                await self._gate()  # pausing stops new requests at once, even queued ones
                # paced here, next to sending: paced before the slot, requests queued for
                # slots and left together when answers freed them
                await self._limiter.acquire(chars // 4 + 1 + max_tokens, self._paced)
                endpoint = await self._take_endpoint()  # None: one endpoint
                if endpoint is not None:
                    try:  # its own --rpm turn, before it counts as in flight
                        await endpoint.limiter.acquire(1, self._paced)
                    except BaseException:
                        self._pool().release(endpoint)
                        raise
                where = self.settings if endpoint is None else \
                    self._endpoint_settings[endpoint.base_url]
                at = url if endpoint is None else endpoint.base_url  # where this attempt goes
                self.in_flight += 1
                if tried is not None:
                    tried.append(where)
                started = time.monotonic()
                structured = bool(isinstance(req, ChatRequest) and req.schema
                                  and self.structured is not False)
                if task is not None:
                    self._active.add(task)
                sent[0] += 1
                try:
                    # the whole answer within the timeouts: the transport's read timeout starts
                    # again at every byte, so an answer that trickles in (a proxy's keep-alive
                    # newlines) was waited for without end
                    async with asyncio.timeout(where.request_timeout + where.connect_timeout):
                        text, finish, p_tok, c_tok, usage = await self._send(
                            client if endpoint is None else endpoint.client, req, params,
                            max_tokens, structured, where.model)
                except asyncio.CancelledError:
                    if self._abandoning and task is not None and task.cancelling():
                        task.uncancel()
                        raise RequestAbandoned("in flight") from None
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure goes through map_error
                    error: BaseException = exc
                    failure = map_error(exc, where, answered=at in self._answered)
                    if isinstance(exc, (MalformedResponse, ErrorInAnswer)):  # usage is paid
                        sent[1] += exc.prompt_tokens
                        sent[2] += exc.completion_tokens
                else:
                    latency = time.monotonic() - started
                    self._answered.add(at)
                    if endpoint is not None:
                        self._pool().succeeded(endpoint, latency)
                    cut = usage and prompt_was_cut(chars, p_tok)
                    if usage and p_tok > 0 and not cut:
                        self._chars_per_token = min(self._chars_per_token, max(1.0, chars / p_tok))
                    if structured and finish != "length":
                        # Some servers accept response_format and ignore it: only a JSON answer
                        # shows that the schema was applied.
                        structured = _is_json(text)
                        if self.settings.structured_output == "auto":
                            self.structured = structured
                    if sent[1] or sent[2]:  # earlier answers without a usable text
                        p_tok, c_tok, usage = p_tok + sent[1], c_tok + sent[2], True
                    return LLMResponse(self.redact(text), finish, p_tok, c_tok, latency, attempt,
                                       max_tokens, usage, structured,
                                       at, where.model, cut, chars)
                finally:
                    self.in_flight -= 1
                    if endpoint is not None:
                        self._pool().release(endpoint)
                    if task is not None:
                        self._active.discard(task)
            finally:
                self._slots.release()
            message = self.redact(failure.message)
            if failure.cause == Cause.STRUCTURED_OUTPUT and structured:
                if self.settings.structured_output == "on":
                    raise RequestFailed(
                        f"the endpoint does not accept structured output ({message}); run with "
                        "--structured-output off", kind=Cause.STRUCTURED_OUTPUT, fatal=True,
                        attempts=attempt, status=failure.status)
                self.structured = False  # detected once; every later request sends plain text
                attempt -= 1
                continue
            if failure.cause == Cause.CONTEXT:
                new_max = self._learn_context(error, failure, chars, max_tokens, attempt)
                if new_max is not None and context_retries < 4:
                    context_retries += 1
                    max_tokens = new_max
                    if on_retry is not None:
                        on_retry(Cause.CONTEXT, attempt, 0.0, f"max_tokens lowered to {new_max} "
                                 f"(context window {self.context_window or '?'})", at)
                    attempt -= 1
                    continue
                raise RequestFailed(f"the endpoint refused the request ({failure.status}): "
                                    f"{message}", kind=Cause.BAD_REQUEST, attempts=attempt,
                                    status=failure.status)
            cap = completion_cap(failure.message) if failure.cause == Cause.MAX_TOKENS else None
            if cap is not None and 0 < cap < max_tokens and context_retries < 4:
                # Asked again at once with what the model can write (the refusal cost nothing);
                # every later request asks for at most that
                context_retries += 1
                self.completion_cap = min(cap, self.completion_cap or cap)
                if on_retry is not None:
                    on_retry(Cause.MAX_TOKENS, attempt, 0.0, f"max_tokens lowered from "
                             f"{max_tokens} to {cap}: the model writes at most {cap} tokens "
                             "an answer", at)
                max_tokens = cap
                attempt -= 1
                continue
            if failure.cause in (Cause.STRUCTURED_OUTPUT, Cause.MAX_TOKENS):
                # not ours to fix: a plain bad request
                raise RequestFailed(f"the endpoint refused the request ({failure.status}): "
                                    f"{message}", kind=Cause.BAD_REQUEST, attempts=attempt,
                                    status=failure.status)
            if endpoint is not None and failure.fatal and failure.cause in DROP_CAUSES:
                if self._pool().drop(endpoint, failure.cause, message):
                    if on_retry is not None:  # the endpoint is wrong, not the request
                        on_retry(failure.cause, attempt, 0.0, f"{message}; {endpoint.base_url} "
                                 "dropped, the request goes to another endpoint", at)
                    attempt -= 1
                    continue
                # The last endpoint: the run stops on its failure; name the others' too, so
                # that fixing this one does not only lead to the next.
                earlier = self._pool().dropped_reasons(but=endpoint)
                if earlier:
                    message += "; dropped earlier: " + "; ".join(earlier)
            if endpoint is not None and not failure.fatal:
                if not failure.retry:  # the request's own failure: counted, not the endpoint's
                    endpoint.errors += 1
                elif attempt > self.settings.max_retries:
                    # The endpoint's failure counts (and takes it out) though this request is
                    # not tried again (a retry counts in `_endpoint_retry`): with --max-retries 0
                    # a failing endpoint was never taken out and showed 0 errors
                    self._endpoint_failed(endpoint, failure,
                                          failure.delay or self.settings.backoff_base, message)
            if failure.fatal or not failure.retry:
                raise RequestFailed(message, kind=failure.cause, fatal=failure.fatal,
                                    attempts=attempt, status=failure.status)
            if attempt > self.settings.max_retries:
                tries = f"after {attempt} attempts" if self.settings.max_retries else \
                    "not retried: --max-retries 0"
                raise RequestFailed(f"{message} ({tries})", kind=failure.cause,
                                    attempts=attempt, status=failure.status)
            delay = failure.delay
            if delay is None:
                cap = min(self.settings.backoff_max,
                          self.settings.backoff_base * 2 ** (attempt - 1))
                delay = random.uniform(cap / 2, cap)
            delay = min(delay, 600.0)
            if endpoint is not None:  # a pool: the failure is this endpoint's, not every request's
                delay, message = self._endpoint_retry(endpoint, failure, delay, message)
                if on_retry is not None:
                    on_retry(failure.cause, attempt, delay, message, at)
                await self._sleep(delay)
                continue
            if on_retry is not None:
                on_retry(failure.cause, attempt, delay, message, at)
            if failure.shared:
                self._shared_pause(delay)
                continue  # the gate waits out the shared pause
            # Backoff outside the slot so waiting does not hold concurrency.
            await self._sleep(delay)

    def _pool(self) -> EndpointPool:
        assert self.endpoints is not None
        return self.endpoints

    async def _take_endpoint(self) -> Endpoint | None:
        """The pool's endpoint for the next attempt (None without a pool); waits while every
        endpoint is full or out. Raises RequestAbandoned on a stop."""
        if self.endpoints is None:
            return None
        try:
            return await self.endpoints.acquire(lambda: self._stopping)
        except InterruptedError:
            raise RequestAbandoned() from None

    def _endpoint_retry(self, endpoint: Endpoint, failure: Failure, delay: float,
                        message: str) -> tuple[float, str]:
        """A retryable failure at one endpoint of a pool: it may be taken out (or cooled down
        after a rate limit); the retry then goes at once to another endpoint that is in.
        Returns (seconds to wait before the retry, the message to record)."""
        pool = self._pool()
        out = self._endpoint_failed(endpoint, failure, delay, message)
        if out is not None and pool.any_in():
            return 0.0, (f"{message}; {endpoint.base_url} is out for {out:.0f}s, the request "
                         "goes to another endpoint")
        if endpoint.state in (EndpointState.OUT, EndpointState.DROPPED) and pool.any_in():
            return 0.0, f"{message}; the request goes to another endpoint"  # already out
        return delay, message

    def _endpoint_failed(self, endpoint: Endpoint, failure: Failure, delay: float,
                         message: str) -> float | None:
        """Record a retryable failure at one endpoint of a pool: a rate limit cools it down for
        `delay` seconds, another failure may take it out. Returns the seconds it is out for
        because of this failure, else None."""
        pool = self._pool()
        if failure.shared:  # a rate limit: only this endpoint waits it out
            pool.cool(endpoint, delay, failure.cause)
            return delay
        return pool.failed(endpoint, failure.cause, message)

    def _learn_context(self, exc: BaseException, failure: Failure, chars: int,
                       max_tokens: int, attempt: int) -> int | None:
        """The max_tokens to retry with after a context error, learning the window; raises
        RequestFailed when the prompt alone cannot fit."""
        limit, prompt = context_numbers(failure.message, getattr(exc, "body", None))
        if limit:
            self.context_window = limit
        if prompt:
            self._chars_per_token = min(self._chars_per_token, max(1.0, chars / prompt))
        if limit and prompt:
            if prompt + 16 > limit:
                raise RequestFailed(
                    f"the prompt is {prompt} tokens and the model's context window is {limit} "
                    "tokens: it cannot fit. Use a model with a larger context window (or start "
                    "the server with a larger one); generation prompts also shrink with fewer "
                    "or shorter examples (num_prompt_instructions, shorter seed tasks)",
                    kind=Cause.CONTEXT, fatal=True, attempts=attempt, status=failure.status)
            return min(max_tokens - 1, limit - prompt - 8)
        if limit:
            fitted = self._fit(chars, max_tokens)
            return fitted if fitted < max_tokens else max_tokens // 2
        return max_tokens // 2 if max_tokens // 2 >= 16 else None

    async def _send(self, client: openai.AsyncOpenAI, req: CompletionRequest | ChatRequest,
                    params: SamplingParams, max_tokens: int,
                    structured: bool, model: str = "") -> tuple[str, str | None, int, int, bool]:
        body = request_body(model or self.settings.model, req, params, max_tokens, structured,
                            self.settings.extra_body)
        # client.post with a plain JSON body and `cast_to=object` (openai's documented way to make
        # a request the typed methods cover too, answered with the decoded JSON): the typed
        # methods walk every parameter through their TypedDict transform and build a pydantic
        # model of the answer, ~1 ms of CPU per request for two fields we read.
        chat = not isinstance(req, CompletionRequest)
        resp = await client.post("/chat/completions" if chat else "/completions",
                                 cast_to=object, body=body)
        return read_answer(resp, chat)


def openai_client(base_url: str, api_key: str | None, timeout: float,
                  connections: int, connect_timeout: float) -> openai.AsyncOpenAI:
    """The `AsyncOpenAI` client for one base URL, its own retries off (this module retries), with
    `connections` connections kept alive. `timeout`: seconds for reading, writing and waiting
    for a connection; `connect_timeout`: seconds to open one.

    It sends through openai's aiohttp transport (`DefaultAioHttpClient`, the `openai[aiohttp]`
    extra; openai's README recommends it "for improved concurrency performance"). httpx's own
    pool scans every connection and polls each idle socket on every request and every release:
    measured here at C=256 that scan was a quarter of the engine's CPU, and the whole client cost
    1.1-1.5 ms of CPU per request at C=32..1024 against 0.7-0.8 ms through aiohttp. The transport
    reports some failures under other names than httpx does (a refused connection as a timeout,
    a garbled status line as aiohttp's own error); `map_error` reads the cause underneath.
    """
    return openai.AsyncOpenAI(
        api_key=api_key or "not-needed", base_url=base_url, max_retries=0,
        timeout=http_timeout(timeout, connect_timeout),
        http_client=openai.DefaultAioHttpClient(
            verify=ssl_context(), follow_redirects=False, limits=_httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections)))


def http_timeout(request_timeout: float, connect_timeout: float) -> Any:
    """The `timeout` for an openai client: `connect_timeout` seconds to open a connection,
    `request_timeout` seconds for the rest (an `httpx.Timeout`)."""
    return _httpx.Timeout(request_timeout, connect=connect_timeout)


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One TLS context (httpx's default: system or certifi roots, SSL_CERT_FILE honoured) for
    every HTTP client of the process: each client building its own loads the roots again,
    ~20 ms of CPU each. Raises UserError (exit 2) naming SSL_CERT_FILE / SSL_CERT_DIR when the
    file or directory it names cannot be read as CA certificates."""
    try:
        return _httpx.create_ssl_context()
    except (OSError, ssl.SSLError) as exc:
        culprit = _bad_ca_setting()
        if culprit is None:
            raise
        name, why = culprit
        raise UserError(f"{name}={os.environ[name]}: no CA certificates could be read from it "
                        f"({why}); point it at the CA's certificate file (PEM) or unset it"
                        ) from exc


def _bad_ca_setting() -> tuple[str, str] | None:
    """(variable, why) for the SSL_CERT_FILE or SSL_CERT_DIR that holds no readable CA
    certificates, or None."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        value = os.environ.get(name)
        if not value:
            continue
        try:
            if name == "SSL_CERT_FILE":
                ssl.create_default_context(cafile=value)
            else:
                ssl.create_default_context(capath=value)
        except ssl.SSLError:
            return name, "no PEM certificate in it"
        except OSError as exc:
            return name, exc.strerror or str(exc)
    return None


def request_body(model: str, req: CompletionRequest | ChatRequest, params: SamplingParams,
                 max_tokens: int, structured: bool,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of a completions or chat request (also a batch line's `body`);
    `structured`: a chat request with a schema asks for JSON-schema output; `extra`: fields
    added as they are (`RunConfig.extra_body`, which holds none of the fields set here)."""
    body: dict[str, Any] = dict(extra or (), model=model, max_tokens=max_tokens,
                                temperature=params.temperature, top_p=params.top_p,
                                presence_penalty=params.presence_penalty,
                                frequency_penalty=params.frequency_penalty)
    if params.seed is not None:
        body["seed"] = params.seed
    if isinstance(req, CompletionRequest):
        body["prompt"] = req.prompt
        if req.stop:
            body["stop"] = list(req.stop)[:4]
    else:
        body["messages"] = list(req.messages)
        if structured and req.schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": req.schema}
    return body


def read_answer(resp: object, chat: bool) -> tuple[str, str | None, int, int, bool]:
    """(text, finish_reason, prompt tokens, completion tokens, whether usage was reported) of a
    decoded completions (`chat` False) or chat completions answer; the shapes are the OpenAI
    API reference's `Completion` and `ChatCompletion` objects. A chat message that holds only a
    `refusal` gives the refusal's text; one with only a reasoning model's `reasoning_content`
    (or `reasoning`), its content null or blank, gives it as "<think>" and the reasoning, never
    ended (no answer came).

    Raises NotAnAPI (the 200 answer was not JSON), WrongAPI (the other API's shape) or
    MalformedResponse (no choices, or no text)."""
    resp = _check_api(resp)
    choices = resp.get("choices") if isinstance(resp, dict) else None
    usage = resp.get("usage") if isinstance(resp, dict) else None
    if not isinstance(usage, dict):
        usage = None
    prompt_tokens = _count(usage, "prompt_tokens")
    completion_tokens = _count(usage, "completion_tokens")
    if not choices and isinstance(resp, dict) and resp.get("error"):
        raise error_in_answer(resp["error"])
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise MalformedResponse("the response has no choices", prompt_tokens, completion_tokens)
    choice = choices[0]
    finish = choice.get("finish_reason")
    message = choice.get("message")
    if choice.get("error") or finish == "error":
        # The provider failed mid-answer (OpenRouter: the choice's `error` {code, message},
        # finish_reason "error"; its text, empty or cut, is no answer): the provider's error
        raise error_in_answer(choice.get("error") or "the answer ended with finish_reason "
                              "'error' and no error message", in_choice=True,
                              prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    if chat:
        if not isinstance(message, dict) and isinstance(choice.get("text"), str):
            raise WrongAPI("completions")
        text = message.get("content") if isinstance(message, dict) else None
        if text is None and isinstance(message, dict) and isinstance(message.get("refusal"), str):
            text = message["refusal"]
        if (not text or not text.strip()) and isinstance(message, dict):
            # A reasoning model that wrote no answer (out of tokens while thinking): vLLM, SGLang
            # and DeepSeek's API return the reasoning apart (reasoning_content; "reasoning" on
            # some servers), the content null, empty or the blank lines after the thinking.
            # Given as an unended <think> block, the parsers name it for what it is, instead of
            # a malformed answer asked again at full price.
            thought = message.get("reasoning_content") or message.get("reasoning")
            if isinstance(thought, str) and thought.strip():
                text = "<think>" + thought
    else:
        text = choice.get("text")
        if text is None and message is not None:
            raise WrongAPI("chat")
    if text is None and finish == "content_filter":
        text = ""  # the filter took it all (Azure, Gemini): named as such, not asked again
    if text is None:
        raise MalformedResponse("the response has no text", prompt_tokens, completion_tokens)
    reported = usage is not None and (prompt_tokens > 0 or completion_tokens > 0)
    return str(text), finish if isinstance(finish, str) else None, prompt_tokens, \
        completion_tokens, reported


def error_in_answer(error: object, *, in_choice: bool = False, prompt_tokens: int = 0,
                    completion_tokens: int = 0) -> ErrorInAnswer:
    """The failure an `error` object stands for (see ErrorInAnswer): a 200 answer's (or its
    choice's: `in_choice`, with the usage the answer reported), or a batch line's (vLLM's
    run-batch nests its message under "error")."""
    err: dict[str, Any] = error if isinstance(error, dict) else {"message": error}
    inner = err.get("error")
    if isinstance(inner, dict) and not err.get("message"):
        err = inner
    text = one_line(str(err.get("message") or err))[:400]
    raw_code = err.get("code") or err.get("type")
    code = raw_code if isinstance(raw_code, str) else None
    status = int(raw_code) if isinstance(raw_code, int) or (
        isinstance(raw_code, str) and raw_code.isdigit()) else _CODE_STATUS.get(code or "", 502)
    shown = code if code is not None else str(raw_code) if raw_code is not None else None
    return ErrorInAnswer(status if 400 <= status < 600 else 502, text,
                         shown if in_choice else code, in_choice=in_choice,
                         prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def _count(usage: dict[str, Any] | None, key: str) -> int:
    value = usage.get(key) if usage else None
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _check_api(resp: object) -> object:
    """The decoded answer. The openai client returns the raw text when a 200 answer's content
    type is not JSON: JSON sent as text/plain is read all the same; otherwise NotAnAPI."""
    if isinstance(resp, (str, bytes)):
        text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
        if text.lstrip()[:1] == "{":
            try:
                return json.loads(text)
            except ValueError:
                pass
        if text.lstrip().startswith("data:"):
            raise NotAnAPI("a streamed answer (server-sent 'data:' events) though no stream was "
                           "asked for", "a proxy in front of the endpoint streams every answer; "
                           "turn that off for this client or give the endpoint's own URL")
        kind = "an HTML page" if "<html" in text[:2000].lower() else "text that is not JSON"
        title = html_summary(text)[:80]
        raise NotAnAPI(f"{kind} ({title!r})" if title else kind)
    return resp


def _is_json(text: str) -> bool:
    """The answer is JSON (in a code fence or not), after a reasoning model's <think> part."""
    try:
        json.loads(json_text(split_reasoning(text)[0]))
    except ValueError:
        return False
    return True


# A prompt longer than the context window that the endpoint cut and answered all the same:
# Ollama does so without an error (a prompt over num_ctx keeps its first num_keep tokens and
# its end, about num_ctx / 2 tokens in all), and its usage then counts the cut prompt. Real
# tokenizers give this project's prompts 3.2-4.5 characters a token (measured with Gemma 3's
# 262k vocabulary, the largest common one: generation and instance prompts, English and code
# alike) and no tokenizer reads English at 6; a prompt cut to half its tokens or less reads at
# 6.4 or more. Prompts under TRUNCATION_MIN_CHARS (~1,000 tokens) are not judged: no default
# context is that small, and a server that counts only the tokens its cache did not hold
# (older Ollama) would make short prompts with a shared head look cut.
TRUNCATION_CHARS_PER_TOKEN = 6.0
TRUNCATION_MIN_CHARS = 4096


def prompt_was_cut(chars: int, prompt_tokens: int) -> bool:
    """Whether an answer's usage (`prompt_tokens`, > 0) counts fewer tokens than a prompt of
    `chars` characters can hold whole (fewer than 1 a TRUNCATION_CHARS_PER_TOKEN characters):
    the endpoint cut the prompt to fit its context window and answered the rest."""
    return chars >= TRUNCATION_MIN_CHARS and 0 < prompt_tokens < \
        chars / TRUNCATION_CHARS_PER_TOKEN


def estimate_tokens(text: str) -> int:
    """A rough token count (4 characters a token) for endpoints that report no usage."""
    return (len(text) + 3) // 4
