"""Batch inference: each stage of a round (generation, classification, instances) as one job.

Requests are collected per (round, kind) until none joined for `collect_seconds`, then written
as one JSONL file (one line per request: `custom_id`, method, url, body; the body is exactly what
the normal path would POST) and sent through a transport:

* `OpenAIBatchTransport`: the OpenAI Batch API (also SGLang and other servers with /v1/files and
  /v1/batches): upload the file (purpose "batch"), create a batch, poll it, download the output
  and error files;
* `CommandBatchTransport`: an offline command run on the file, e.g. `vllm run-batch -i {input}
  -o {output} --model M`.

Resume rules (nothing paid is lost or paid twice): the job is recorded in the store (`batches`)
before anything is uploaded; the uploaded file id and the batch id are committed as soon as the
endpoint returns them, before the first poll, and an upload or create whose answer was lost is
looked for at the endpoint before it is sent again (`OpenAIBatchTransport.submit`). A later
session polls a recorded batch instead of creating another (`Batcher.resume_pending`); a job
that was recorded but never created is created from the file id it already has. A command is
never run twice: a job whose command an earlier session started (or recorded as starting) is
waited for (found by its pid, or its environment) and then read as its output file is,
complete or not (the requests without a usable line are sent again, as new requests). Answers
are matched by `custom_id` ("<kind>-<prompt id>": the request's record).

Waiting for a job: a stage waits for its job between polls `poll_seconds` apart (30 s), except
that a job whose end this process can see at once wakes it then (`BatchTransport.ended`): a
`--batch-command` this process started is awaited as a child process, and its exit is read at
once (a 1 s command took up to 30 s, each stage of a round). A job this process did not start (a
command an earlier, killed session left running: only its recorded pid is known, and it is no
child of ours to wait for; a batch at an endpoint) is polled every `poll_seconds`.

A batch refused as a whole for a reason every job would meet (`run_wide_refusal`) stops the run.

Not covered: an endpoint that cannot list its batches, when a create's answer is lost: that
batch stays unknown to the run (it carries `metadata.selfinstruct_job` so it can be found in
the provider's dashboard).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import openai

from selfinstruct_tui.engine.config import endpoint_key
from selfinstruct_tui.engine.control import pid_alive
from selfinstruct_tui.engine.fsutil import atomic_write_text
from selfinstruct_tui.engine.llm import (
    Cause,
    ClientSettings,
    LLMResponse,
    Redactor,
    RequestAbandoned,
    RequestFailed,
    SamplingParams,
    error_code,
    error_in_answer,
    error_text,
    http_timeout,
    map_error,
    request_body,
    status_failure,
)
from selfinstruct_tui.engine.prompts import ChatRequest, CompletionRequest
from selfinstruct_tui.engine.store import COMMAND_ENDPOINT, BatchRecord, RunStore

log = logging.getLogger(__name__)

# The endpoint's batch statuses after which nothing changes.
TERMINAL = ("completed", "failed", "expired", "cancelled")

# A batch that ends `failed` was refused as a whole: OpenAI's reference says "the input file has
# failed the validation process" (no line ran, nothing is paid) and gives each reason in
# `errors.data[]` as {code, message, param, line}; it documents that shape, not a closed list of
# codes. A refusal is read as one every job of the run would meet (the jobs differ only in their
# prompts: the same model, endpoint path, body fields, file shape), so the run stops at the first
# instead of sending its requests again in a job refused alike; only these codes, which clear by
# waiting, send them again (as an expired batch's unanswered requests are):
BATCH_ERRORS_THAT_CLEAR = frozenset({
    "token_limit_exceeded",  # the organisation's enqueued-token limit: its other batches end
    "rate_limit_exceeded",
    "server_error",
})
# What to change for the codes OpenAI's batch validation is seen to give (any other code stops
# the run as well, with the generic advice)
_CHECK_MODEL = "check --model: the Batch API may serve fewer models than requests do"
_CHECK_API = "check --api (the batch's endpoint path: /v1/completions or /v1/chat/completions)"
BATCH_ERROR_ADVICE = {
    "model_not_found": _CHECK_MODEL, "invalid_model": _CHECK_MODEL,
    "mismatched_model": "check --model",
    "invalid_url": _CHECK_API, "invalid_endpoint": _CHECK_API,
}
BATCH_ERROR_GENERIC = ("check --model, --api and --extra-body (every line of the file carries "
                       "them), then resume")


@dataclass(frozen=True)
class BatchSettings:
    """`poll_seconds`: seconds between two polls of a pending batch (a command this process
    started is read as soon as it exits, too: `Batcher.follow`); `collect_seconds`: a stage's
    job is sent once no request joined it for this long; `command`: the offline transport's
    command template ({input} and {output} are replaced by the files' quoted paths), "" for the
    Batch API; `completion_window`: the Batch API's window; `files_wait_seconds`: how long a
    batch that ended with answered (or failed) lines is polled for the file it has not named
    yet before it is read without it; `lost_after_seconds` and `lost_after_polls`: a batch (or
    a file of it) the endpoint answers 404 for is recorded lost, its requests sent again, once
    the 404s have lasted this long (seconds from the first, kept across sessions) and this many
    polls in a row, with no other answer between them (a 404 is what a replica that did not
    create the batch, or a provider right after creating it, answers for a batch that exists
    and is paid; wait-and-see is what waiters of eventually consistent APIs do)."""

    poll_seconds: float = 30.0
    collect_seconds: float = 0.2
    command: str = ""
    completion_window: str = "24h"
    files_wait_seconds: float = 600.0
    lost_after_seconds: float = 600.0
    lost_after_polls: int = 3


@dataclass(frozen=True)
class BatchLine:
    """One output (or error-file) line: `status` the HTTP status of the request (None when the
    line carries only an `error`), `body` the response body, `error` the line's error text;
    `readable` False for a line that was not JSON but named its custom_id (`error` says which
    line of which file); `refused` True for a request of a batch refused as a whole for a
    reason every job of the run would meet (`run_wide_refusal`)."""

    custom_id: str
    status: int | None
    body: dict[str, Any] | None
    error: str | None
    readable: bool = True
    refused: bool = False  # no answer: the whole batch was refused for a reason of the run


def custom_id(kind: str, prompt_id: int) -> str:
    return f"{kind}-{prompt_id}"


def endpoint_path(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


@dataclass(frozen=True)
class BatchOutput:
    """A job's output and error files as read: `lines` by custom_id (the job's own requests
    only; a line that could not be read but names its custom_id is there with status None and
    its `error` saying so), `problems` what could not be used, one entry per file, each naming
    the file and its line numbers (empty when every line was fine)."""

    lines: dict[str, BatchLine]
    problems: tuple[str, ...]

    def answered(self, ids: Collection[str]) -> int:
        """How many of `ids` have a readable line (answered or failed)."""
        return sum(1 for cid in ids if cid in self.lines and self.lines[cid].readable)


_CUSTOM_ID = re.compile(r'"custom_id"\s*:\s*"([^"\\]*)"')


def read_lines(ids: Collection[str], *paths: str | None) -> BatchOutput:
    """Output and error files' lines by custom_id (a later line wins, unless an earlier one was
    answered (200) and it is not). Nothing in a file raises: a file that cannot be opened, a
    line that is not JSON (garbled, or cut short by a writer that died), one without a
    custom_id, one for a custom_id not in `ids` (the job's requests) and a custom_id on several
    lines are `problems`; an unreadable line that still names one of `ids` becomes that
    request's line, its error saying which line of which file could not be read."""
    out: dict[str, BatchLine] = {}
    problems: list[str] = []
    wanted = set(ids)
    seen: dict[str, list[int]] = {}
    for path in paths:
        if not path or not os.path.exists(path):
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            problems.append(f"{path} could not be read ({exc.strerror or exc})")
            continue
        unreadable: list[int] = []
        no_id: list[int] = []
        foreign: list[str] = []
        seen.clear()
        for number, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
                unreadable.append(number)
                named = _CUSTOM_ID.search(raw.decode("utf-8", "replace"))
                cid = named.group(1) if named else ""
                if cid in wanted and cid not in out:
                    out[cid] = BatchLine(cid, None, None, f"its line ({number} of {path}) could "
                                         "not be read: not JSON (cut short or garbled)",
                                         readable=False)
                continue
            if not isinstance(parsed, dict) or parsed.get("custom_id") in (None, ""):
                no_id.append(number)
                continue
            cid = str(parsed["custom_id"])
            if cid not in wanted:
                foreign.append(f"{cid} (line {number})")
                continue
            seen.setdefault(cid, []).append(number)
            line = _batch_line(cid, parsed)
            if cid in out and out[cid].status == 200 and line.status != 200:
                continue
            out[cid] = line
        said = []
        if unreadable:
            said.append(f"{len(unreadable)} line(s) not JSON (line {_some(unreadable)})")
        if no_id:
            said.append(f"{len(no_id)} line(s) without a custom_id (line {_some(no_id)})")
        if foreign:
            said.append(f"{len(foreign)} line(s) for no request of this job: {_some(foreign)}")
        twice = [f"{cid} (lines {', '.join(map(str, numbers))})"
                 for cid, numbers in seen.items() if len(numbers) > 1]
        if twice:
            said.append(f"{len(twice)} custom_id(s) on more than one line, the answered (else "
                        f"the last) one used: {_some(twice)}")
        if said:
            problems.append(f"{path}: {'; '.join(said)}")
    return BatchOutput(out, tuple(problems))


def _batch_line(cid: str, data: dict[str, Any]) -> BatchLine:
    response = data.get("response") or {}
    error = data.get("error")
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    message = None
    if error:  # OpenAI's {code, message}, vLLM's ErrorResponse, or a string
        failure = error_in_answer(error)
        message = f"{failure.code}: {failure.text}" if failure.code else failure.text
    if not isinstance(status, int) or isinstance(status, bool):
        status = None
    if status is None and not message:
        message = "its line has no response status_code" if isinstance(body, dict) else \
            "its line has neither a response nor an error"
    return BatchLine(cid, status, body if isinstance(body, dict) else None, message)


def _some(items: list[Any], shown: int = 5) -> str:
    """The first `shown` of `items`, and how many more."""
    head = ", ".join(map(str, items[:shown]))
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _batch_error(error: Any) -> str:
    """One entry of a batch's `errors.data` as "code: message (line N, param P)"."""
    code, text = getattr(error, "code", None), getattr(error, "message", None) or str(error)
    where = ", ".join(f"{k} {v}" for k in ("line", "param")
                      if (v := getattr(error, k, None)) not in (None, ""))
    return (f"{code}: {text}" if code else text) + (f" ({where})" if where else "")


def run_wide_refusal(errors: list[Any], base_url: str, batch_id: str | None) -> str:
    """Why a batch that ended `failed` stops the run, and what to change; "" when every error
    of it (`errors.data`: objects with code, message, param, line) is one that clears by
    waiting (`BATCH_ERRORS_THAT_CLEAR`), or it gives none: its requests are then sent again."""
    codes = [getattr(e, "code", None) or "" for e in errors]
    if all(code in BATCH_ERRORS_THAT_CLEAR for code in codes):
        # (no reason given at all, as some servers end a batch `failed`: nothing says every job
        # would meet it; its requests go out again, as before such refusals were read)
        return ""
    said = "; ".join(_batch_error(e) for e in errors)[:600] or "no reason given"
    advice = next((BATCH_ERROR_ADVICE[c] for c in codes if c in BATCH_ERROR_ADVICE),
                  BATCH_ERROR_GENERIC)
    return (f"{base_url} refused batch {batch_id} as a whole (status failed: {said}); every job "
            f"of this run would be refused alike, so none is sent again: {advice}")


def job_ids(record: BatchRecord) -> list[str]:
    """The custom_ids of a job's requests."""
    return [custom_id(record.kind, prompt_id) for prompt_id in record.prompt_ids]


def answers(record: BatchRecord) -> dict[str, BatchLine]:
    """Every request of a downloaded job by custom_id: its output or error line, or for a
    request the batch did not answer (expired, failed, cancelled, a line missing or unreadable)
    a line saying so (with the job's message: what was wrong with its files)."""
    lines = read_lines(job_ids(record), record.output_path, record.error_path).lines
    why = f"the batch ended {record.status or record.state} without an answer to this request"
    if record.message:
        why += f": {record.message}"
    for cid in job_ids(record):
        lines.setdefault(cid, BatchLine(cid, None, None, record.refusal or why,
                                        refused=bool(record.refusal)))
    return lines


def line_response(line: BatchLine | None, settings: ClientSettings, redact: Redactor,
                  max_tokens: int, where: str) -> LLMResponse:
    """An output line as the normal path's answer, answered at `where` (`Batcher.answered_at`)
    by `settings.model`. Raises RequestFailed (kind a `Cause`; `endpoint` and `model` set) for a
    missing line, a failed line (its reason in the message; `fatal` where the same answer to a
    request would be: a refused key, an unknown model, a refused --extra-body field, and for
    every request of a batch refused as a whole for a reason of the run) or a body without
    text."""
    try:
        return _line_response(line, settings, redact, max_tokens, where)
    except RequestFailed as exc:
        exc.endpoint, exc.model = where, settings.model
        raise


def _line_response(line: BatchLine | None, settings: ClientSettings, redact: Redactor,
                   max_tokens: int, where: str) -> LLMResponse:
    if line is None:
        raise RequestFailed("the batch finished without a line for this request",
                            kind=Cause.MALFORMED)
    if line.status != 200 or line.body is None:
        status = line.status
        text = line.error or ""
        if line.body is not None:
            text = error_text(_BodyError(line.body)) or text
        if line.refused:  # the batch refused as a whole: every later job would be too
            raise RequestFailed(redact(text), kind=Cause.BAD_REQUEST, fatal=True)
        if not status:  # no answer at all: the batch (or the command) ended without one
            raise RequestFailed(redact(text or "the batch ended without an answer to this "
                                               "request"), kind=Cause.UNANSWERED)
        kind = Cause.HTTP
        if status >= 400:
            # One reading of the status for both questions, as for a request: fatal (a refused
            # key, an unknown model) stops the run; transient (429, 5xx, 408) leaves the
            # request unanswered, its candidate taken up again; the rest settles it as refused.
            failure = status_failure(status, text or "no reason given", settings,
                                     code=error_code(line.body))
            if failure.fatal:
                raise RequestFailed(redact(f"the batch line failed: {failure.message}"),
                                    kind=failure.cause, fatal=True, status=status)
            kind = failure.cause if failure.retry else Cause.BAD_REQUEST
        raise RequestFailed(redact(f"the batch line failed ({status}): "
                                   f"{text or 'no reason given'}"), kind=kind, status=status)
    if not line.body.get("choices") and line.body.get("error"):
        # a 200 whose body is an error (a proxy's): read by its code, as the request would be
        refused = error_in_answer(line.body["error"])
        return _line_response(BatchLine(line.custom_id, refused.status, line.body,
                                        refused.text),
                              settings, redact, max_tokens, where)
    try:
        choice = line.body["choices"][0]
        if settings.api == "chat":
            message = choice.get("message") or {}
            answer = message.get("content")
            if answer is None:
                answer = message.get("refusal")
        else:
            answer = choice.get("text")
        if not isinstance(answer, str):
            raise TypeError("no text")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise RequestFailed(f"malformed batch line: {exc}", kind=Cause.MALFORMED) from None
    usage = line.body.get("usage") or {}
    p_tok = int(usage.get("prompt_tokens") or 0)
    c_tok = int(usage.get("completion_tokens") or 0)
    return LLMResponse(redact(answer), choice.get("finish_reason"), p_tok, c_tok, 0.0, 1,
                       max_tokens, usage_reported=p_tok > 0 or c_tok > 0, endpoint=where,
                       model=settings.model)


class _BodyError(Exception):
    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("")
        self.body = body


class BatchTransport(Protocol):
    """Sends a recorded job and brings its answers home; each step commits what it learned."""

    name: str

    async def submit(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        """Upload and create (or start) the job; returns it `submitted` or `downloaded`."""

    async def poll(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        """One look at a submitted job; returns it `downloaded` once its files are saved."""

    async def cancel(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        """Ask the endpoint to cancel; returns it `cancelled`, or still `submitted` when what it
        answered before the cancel can be read by polling it (the Batch API)."""

    def ended(self, record: BatchRecord) -> Awaitable[object] | None:
        """Something that completes when the submitted job ends (the next poll then reads it),
        for a job whose end this process can see at once; None for one it can only poll. Once
        it has completed, the poll after it must end the job or forget the process (else the
        wait between polls would not wait)."""


# How many times an upload or a create is sent (`OpenAIBatchTransport._once`), and how far the
# endpoint's clock may be behind ours (s) when its list is searched back to a job's creation
SEND_ATTEMPTS = 4
CLOCK_SKEW = 600.0


class SubmitUncertain(Exception):
    """An upload or create whose answer was lost, and the endpoint's list could not be read to
    learn whether it was made (the connection failed again, 5xx, 429): the job keeps its mark
    (`what`: "uploading" or "creating") and must not be sent again, nor marked abandoned, until
    a look answers (`Batcher` looks again; a later session does)."""

    def __init__(self, what: str, cause: Exception) -> None:
        super().__init__(f"could not learn whether the batch job's {what.removesuffix('ing')} "
                         f"reached the endpoint: {error_text(cause)}")
        self.what, self.cause = what, cause


def upload_name(record: BatchRecord, data: bytes) -> str:
    """The name a job's file is uploaded under: its own name and a digest of the job's identity
    (its number and creation time) and of its bytes, so that a file listed at the endpoint under
    it is this job's upload and no other run's (`OpenAIBatchTransport._find_upload`)."""
    digest = hashlib.sha256(f"{record.id}:{record.created!r}\n".encode() + data).hexdigest()
    return f"{Path(record.input_path).name.removesuffix('.jsonl')}-{digest[:24]}.jsonl"


@contextlib.contextmanager
def _no_list() -> Iterator[None]:
    """An endpoint that refuses to list (404, 405, any 4xx but 408 and 429) has no list to look
    in: the look finds nothing. A look that failed otherwise (the connection, 408, 429, 5xx)
    raises: the job may still be there."""
    try:
        yield
    except openai.APIStatusError as exc:
        if exc.status_code in (408, 429) or exc.status_code >= 500:
            raise


class OpenAIBatchTransport:
    """The OpenAI Batch API (/v1/files, /v1/batches) through the `openai` client."""

    name = "openai"

    def __init__(self, settings: ClientSettings, batch: BatchSettings) -> None:
        self.settings = settings
        self.batch = batch
        self.redact = Redactor(settings.api_key)
        self.client = openai.AsyncOpenAI(api_key=settings.api_key or "not-needed",
                                         base_url=settings.base_url,
                                         timeout=http_timeout(settings.request_timeout,
                                                              settings.connect_timeout),
                                         max_retries=3)
        self._unnamed: dict[int, float] = {}  # job -> monotonic s its files were first missing

    async def submit(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        """Upload the job's file and create its batch, each at most once. Both POSTs create
        something at the endpoint before it answers, and an answer can be lost (the connection
        closed, the session killed): sent again, they stored a second file and created a second
        batch, paid twice. So each is marked in the store before it is sent (`status`
        "uploading", "creating"); a POST whose answer was lost (in this session, or in a killed
        one: the mark says so) is first looked for at the endpoint (`_find_upload`,
        `_find_batch`) and only sent again when the endpoint does not have it. Looked up, not
        recorded before: the id is the endpoint's, known only from the answer. An endpoint that
        cannot list files or batches (a 404 for the list) is sent the POST again: a second file
        is only storage, a batch is only created from the one file id recorded."""
        if record.input_file_id is None:
            data = Path(record.input_path).read_bytes()
            name = upload_name(record, data)
            uploaded = await self._once(
                store, record, "uploading",
                lambda: self.client.with_options(max_retries=0).files.create(
                    file=(name, data), purpose="batch"),
                lambda: self._find_upload(record, name, len(data)))
            record = store.update_batch(record, input_file_id=uploaded.id, status="")
        file_id = record.input_file_id or ""
        created = await self._once(
            store, record, "creating",
            lambda: self.client.with_options(max_retries=0).batches.create(
                input_file_id=file_id,
                endpoint=endpoint_path(self.settings.api),  # type: ignore[arg-type]
                completion_window=self.batch.completion_window,  # type: ignore[arg-type]
                metadata={"selfinstruct_job": str(record.id)}),
            lambda: self._find_batch(record, file_id))
        return store.update_batch(record, batch_id=created.id, state="submitted",
                                  status=created.status, total=len(record.prompt_ids),
                                  endpoint=self.settings.base_url)

    async def _once(self, store: RunStore, record: BatchRecord, marking: str,
                    send: Callable[[], Awaitable[Any]],
                    find: Callable[[], Awaitable[Any | None]]) -> Any:
        """What `send` creates (the endpoint's File or Batch object), sent at most once unless
        `find` (a look in the endpoint's list) says the endpoint does not have it: the record is
        marked `marking` first, and one already so marked (an earlier session sent it and died)
        is looked for before it is sent. A send without an answer, or answered 408, 409, 429 or
        5xx, is looked for, then sent again (SEND_ATTEMPTS in all). Raises openai's exception
        for a refusal (any other status: nothing was created) or the last failure after a look
        that found nothing, and SubmitUncertain when a look cannot be made (the job may exist:
        it is neither sent again nor given up)."""
        found = await self._look(find, marking) if record.status == marking else None
        if found:
            return found
        store.update_batch(record, status=marking)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await send()
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                if isinstance(exc, openai.APIStatusError) and \
                        exc.status_code not in (408, 409, 429) and exc.status_code < 500:
                    raise
                found = await self._look(find, marking)  # created before its answer was lost?
                if found:
                    return found
                if attempt >= SEND_ATTEMPTS:
                    raise
            await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))

    @staticmethod
    async def _look(find: Callable[[], Awaitable[Any | None]], marking: str) -> Any | None:
        """`find()`, or SubmitUncertain when the endpoint does not answer the look (its
        connection failed, 408, 429, 5xx)."""
        try:
            return await find()
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            raise SubmitUncertain(marking, exc) from exc

    async def _find_upload(self, record: BatchRecord, name: str, size: int) -> Any | None:
        """The endpoint's File object for the job's upload (`name`, `size` bytes, purpose
        batch, uploaded since the job was recorded), or None (none, or no list to look in)."""
        with _no_list():
            async for file in self.client.files.list(purpose="batch", order="desc", limit=100):
                if file.filename == name and file.bytes == size:
                    return file
                if file.created_at < record.created - CLOCK_SKEW:
                    break
        return None

    async def _find_batch(self, record: BatchRecord, file_id: str) -> Any | None:
        """The endpoint's Batch object created for the job (from its file `file_id`, its
        metadata naming the job, created since the job was recorded), or None (none, or no
        list to look in)."""
        with _no_list():
            async for batch in self.client.batches.list(limit=100):
                if batch.input_file_id == file_id and \
                        (batch.metadata or {}).get("selfinstruct_job") == str(record.id):
                    return batch
                if batch.created_at < record.created - CLOCK_SKEW:
                    break
        return None

    async def poll(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        # One attempt: a failed poll is the Batcher's to count and time (the client's own
        # retries made one poll that timed out take 4 x --timeout)
        got = await self.client.with_options(max_retries=0).batches.retrieve(
            record.batch_id or "")
        counts = got.request_counts
        record = store.update_batch(
            record, status=got.status, total=counts.total if counts else record.total,
            completed=counts.completed if counts else 0, failed=counts.failed if counts else 0,
            output_file_id=got.output_file_id, error_file_id=got.error_file_id)
        if got.status not in TERMINAL:
            return record
        unnamed = ""
        if counts and (counts.completed and not got.output_file_id
                       or counts.failed and not got.error_file_id):
            # Providers say "completed" a moment before they name its files: read now, its
            # answered requests would be sent again (and paid twice). Polled again instead.
            waited = time.monotonic() - self._unnamed.setdefault(record.id, time.monotonic())
            if waited < self.batch.files_wait_seconds:
                return store.update_batch(record, message="waiting for the endpoint to name "
                                          "its output file")
            unnamed = (f"the endpoint counted {counts.completed} answered and {counts.failed} "
                       f"failed lines but named no file for them in {waited:.0f}s")
        self._unnamed.pop(record.id, None)
        stem = record.input_path.removesuffix(".input.jsonl")
        paths: dict[str, str | None] = {"output_path": None, "error_path": None}
        for key, file_id, suffix in (("output_path", got.output_file_id, ".output.jsonl"),
                                     ("error_path", got.error_file_id, ".errors.jsonl")):
            if file_id:
                content = await self.client.files.content(file_id)
                atomic_write_text(Path(stem + suffix), content.text)
                paths[key] = stem + suffix
        message = refusal = ""
        if got.status != "completed":
            data = getattr(getattr(got, "errors", None), "data", None) or []
            message = "; ".join(_batch_error(e) for e in data)[:400]
            message = self.redact(f"batch {got.status}" + (f": {message}" if message else ""))
            if got.status == "failed":
                refusal = run_wide_refusal(data, self.settings.base_url, record.batch_id)
        if unnamed:
            message = f"{message}; {unnamed}" if message else unnamed
        problems = read_lines(job_ids(record), *paths.values()).problems
        message = "; ".join(filter(None, (message, *problems)))
        return store.update_batch(record, state="downloaded", message=message,
                                  refusal=self.redact(refusal), **paths)

    async def cancel(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        """Ask the endpoint to cancel. The job stays `submitted`: what the batch answered before
        the cancel is paid, and the next session polls it to its end and reads that."""
        if record.batch_id:
            got = await self.client.batches.cancel(record.batch_id)
            return store.update_batch(record, status=got.status)
        return store.update_batch(record, state="cancelled")

    def ended(self, record: BatchRecord) -> None:
        """None: a batch at an endpoint is only seen by polling it."""
        return None

    async def close(self) -> None:
        await self.client.close()


class CommandBatchTransport:
    """An offline command run on each job's file (vLLM's `run-batch`, or anything that reads
    the same input lines and writes the same output lines)."""

    name = "command"

    def __init__(self, template: str) -> None:
        self.template = template
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    @staticmethod
    def output_path(record: BatchRecord) -> str:
        return record.input_path.removesuffix(".input.jsonl") + ".output.jsonl"

    @staticmethod
    def log_path(record: BatchRecord) -> str:
        """The command's output for the job (`command_logs` matches every job's)."""
        return record.input_path.removesuffix(".input.jsonl") + ".command.log"

    async def submit(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        """Start the job's command, unless it may have been started before. The intent is
        recorded first (`status` "starting"), and the command runs with SELFINSTRUCT_BATCH_JOB
        (the job's input file) in its environment, which whatever the shell execs in its place
        keeps. So a session killed after starting it, before recording its pid, leaves a job
        whose command is found still running (`_job_pid`: by that variable or its command line;
        waited for), or else read (its output file, complete or not, or none: its requests are
        sent again as new ones): never run twice. The running command is looked for before
        the output file, which a `> {output}` creates as the command starts."""
        pid = _job_pid(record)
        if pid is not None:
            return store.update_batch(record, state="submitted", status="running",
                                      batch_id=f"pid {pid}", total=len(record.prompt_ids))
        if os.path.exists(self.output_path(record)) or record.status == "starting":
            return self.read(store, record, None, "the batch command an earlier session started")
        record = store.update_batch(record, status="starting")
        command = fill_command(self.template, record.input_path, self.output_path(record))
        with open(self.log_path(record), "ab") as log:
            # Its own session: a Ctrl-C or a closed terminal stops the run, not the job (it
            # finishes its file, like a batch at an endpoint; the next session waits for it).
            proc = await asyncio.create_subprocess_shell(
                command, stdout=log, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, JOB_ENV: record.input_path})
        self._procs[record.id] = proc
        return store.update_batch(record, state="submitted", status="running",
                                  batch_id=f"pid {proc.pid}", total=len(record.prompt_ids))

    async def poll(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        """One look at the job: still running, or ended and read (`read`). A command is never
        run again once started: one that exited 0 wrote what it could, and one that died (its
        session killed, or the machine rebooted) may have written part of its file; the lines
        it wrote are used and the requests without one are sent again as new requests."""
        proc = self._procs.get(record.id)
        if proc is None:
            pid = _pid_of(record.batch_id)
            if pid is not None and pid_alive(pid) and _still_the_job(pid, record):
                return record  # started by an earlier session, still running
            return self.read(store, record, None, f"the batch command ({record.batch_id}) an "
                             "earlier session started")
        if proc.returncode is None:
            return record
        self._procs.pop(record.id, None)
        record = self.read(store, record, proc.returncode, "the batch command")
        if proc.returncode in (126, 127) and not record.completed:
            # The shell found no such command (127) or could not run it (126): every later job
            # would fail alike, after a model load each with a real command
            says = "command not found" if proc.returncode == 127 else "not executable"
            raise RequestFailed(f"the batch command could not run: the shell says {says} (exit "
                                f"{proc.returncode}; see {self.log_path(record)}). Check "
                                "--batch-command", kind=Cause.NOT_FOUND, fatal=True)
        return record

    def read(self, store: RunStore, record: BatchRecord, exit_status: int | None,
             who: str) -> BatchRecord:
        """The ended job recorded `downloaded`: its output file's lines are its answers, and
        its message says what was wrong (the exit status, `exit_status` None: not known, the
        command being no child of this process; the lines missing; each problem of the file,
        naming it and its lines; the log), so every request without a usable line fails
        naming it (cause `unanswered`: sent again as a new request)."""
        path, log_path = self.output_path(record), self.log_path(record)
        ids = job_ids(record)
        output = read_lines(ids, path)
        done = output.answered(ids)
        lacking = done < len(ids)
        wrote = f"answered {done} of {len(ids)} lines in {path}" if os.path.exists(path) \
            else f"wrote no output file ({path})"
        said = []
        if exit_status:
            said.append(f"{who} exited with {exit_status}" + (f" and {wrote}" if lacking else ""))
        elif lacking:
            said.append(f"{who} exited with 0 but {wrote}" if exit_status == 0 else
                        f"{who} ended (its exit status is unknown) and {wrote}")
        said.extend(output.problems)
        message = "; ".join(said) + (f" (see {log_path})" if said else "")
        status = ("failed" if exit_status else "completed") if exit_status is not None else \
            "completed" if not lacking else "incomplete"
        return store.update_batch(record, state="downloaded", status=status, completed=done,
                                  failed=len(ids) - done, message=message,
                                  output_path=path if os.path.exists(path) else None,
                                  total=len(ids))

    def ended(self, record: BatchRecord) -> Awaitable[int] | None:
        """The exit of the command this process started for the job (its child: awaited, not
        polled), at once if it has exited; None for a job it did not start (an earlier
        session's, known by its pid only: polled). The poll after it reads the job and forgets
        the process, so it is not awaited twice."""
        proc = self._procs.get(record.id)
        return proc.wait() if proc is not None else None

    async def cancel(self, store: RunStore, record: BatchRecord) -> BatchRecord:
        proc = self._procs.pop(record.id, None)
        pid = proc.pid if proc is not None and proc.returncode is None else \
            _pid_of(record.batch_id) if proc is None else None  # (an earlier session's job)
        if pid is not None:
            # The job's whole process group (it leads its own session): the shell alone left
            # the command it ran going. A command that has just ended is gone already.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid and (proc is not None or
                                               _runs_job(pid, record) is True):
                    os.killpg(pid, signal.SIGTERM)
        return store.update_batch(record, state="cancelled", status="cancelled")

    async def close(self) -> None:
        """Nothing to do: a running command finishes its file (the next session reads it)."""


def fill_command(template: str, input_path: str, output_path: str) -> str:
    """The --batch-command for a job: {input} and {output} replaced by the quoted paths; a
    placeholder in quotes of its own ("{input}", '{input}', a shell habit) with its quotes, which
    would otherwise be part of the path (or split it at a space)."""
    paths = {"input": shlex.quote(input_path), "output": shlex.quote(output_path)}
    return re.sub(r"""(["']?)\{(input|output)\}\1""", lambda m: paths[m.group(2)], template)


# The environment variable a job's command runs with: the job's input file (`_runs_job`)
JOB_ENV = "SELFINSTRUCT_BATCH_JOB"


def _runs_job(pid: int, record: BatchRecord) -> bool | None:
    """Whether process `pid` is still running `record`'s command: its environment holds
    JOB_ENV set to the job's input file (the shell, or what it exec'd in its place), or its
    command line names that file (a command an older version started): a pid an earlier session
    recorded may belong to another process by now. None where /proc cannot tell (no /proc: not
    Linux)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if record.input_path.encode() in fh.read():
                return True
        tag = f"{JOB_ENV}={record.input_path}".encode()
        with contextlib.suppress(PermissionError), open(f"/proc/{pid}/environ", "rb") as fh:
            return tag in fh.read().split(b"\0")
        return False  # another user's process (its environment cannot be read): not ours
    except FileNotFoundError:
        return False if os.path.isdir("/proc/self") else None
    except OSError:
        return None


def _still_the_job(pid: int, record: BatchRecord) -> bool:
    """Whether the live process `pid` an earlier session recorded for `record` may still be its
    command: the leader of its own session (as the job's shell is, and a command it ran in its
    place, `< {input}` naming no file in its arguments, stays) or a process whose command line
    names the job's input file. False for a pid the system has given to another process (after
    a reboot): waiting for it would wait forever."""
    with contextlib.suppress(OSError):
        if os.getsid(pid) == pid:
            return True
    return _runs_job(pid, record) is not False


def _job_pid(record: BatchRecord) -> int | None:
    """The running shell of the job's command: a session leader (the command runs in its own
    session) whose command line names the job's input file; None if there is none (or no /proc
    to look in). A viewer of the file (less, tail) leads no session of its own."""
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                if os.getsid(pid) == pid and _runs_job(pid, record) and pid_alive(pid):
                    return pid
    return None


def _pid_of(batch_id: str | None) -> int | None:
    if batch_id and batch_id.startswith("pid "):
        try:
            return int(batch_id[4:])
        except ValueError:
            return None
    return None


@dataclass
class _Pending:
    prompt_id: int
    body: dict[str, Any]
    max_tokens: int
    future: asyncio.Future[tuple[BatchLine | None, str]]  # the line, where it was answered


@dataclass
class _Group:
    round: int
    kind: str
    items: list[_Pending] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


# (job, failure cause, message, failed polls in a row, seconds since the first of them)
PollFailed = Callable[[BatchRecord, str, str, int, float], None]


class Batcher:
    """Collects a stage's requests into one job, sends it, polls it, hands out the answers.

    `on_progress(record)` is called after every change of a job (submitted, each poll,
    downloaded, lost); `on_poll_failed` after each poll that failed for a reason worth polling
    again (the job is polled again after `poll_seconds`, never given up or sent again by
    itself), a 404 included (cause `not_found`) until it has lasted long enough for the job to
    be recorded lost (`BatchSettings.lost_after_seconds`). Use from one event loop.
    """

    def __init__(self, store: RunStore, client: ClientSettings, settings: BatchSettings,
                 transport: BatchTransport,
                 on_progress: Callable[[BatchRecord], None] | None = None,
                 on_poll_failed: PollFailed | None = None) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.transport = transport
        self.on_progress = on_progress or (lambda record: None)
        self.on_poll_failed = on_poll_failed or (lambda *args: None)
        self._poll_failures: dict[int, tuple[float, int]] = {}  # job -> (monotonic s, count)
        self.redact = Redactor(client.api_key)
        self._groups: dict[tuple[int, str], _Group] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._running = asyncio.Event()  # cleared while the run is paused: no job leaves
        self._running.set()
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()  # set by `stop`: a poll in flight is not waited for
        self._dir = batches_dir(store.run_dir)

    async def request(self, round: int, kind: str, prompt_id: int,
                      req: CompletionRequest | ChatRequest, params: SamplingParams,
                      structured: bool) -> LLMResponse:
        """The answer to one request, sent as a line of its stage's job. Raises RequestFailed
        (a failed or missing line) or RequestAbandoned (the run stopped: a submitted job stays
        recorded and the next session reads it)."""
        if self._stopping:
            raise RequestAbandoned()
        loop = asyncio.get_running_loop()
        group = self._groups.setdefault((round, kind), _Group(round, kind))
        body = request_body(self.client.model, req, params, params.max_tokens, structured,
                            self.client.extra_body)
        pending = _Pending(prompt_id, body,
                           params.max_tokens, loop.create_future())
        group.items.append(pending)
        if group.timer is not None:
            group.timer.cancel()
        group.timer = loop.call_later(self.settings.collect_seconds, self._send, (round, kind))
        try:
            line, where = await pending.future
        except RequestFailed as exc:  # the whole job failed (or is lost): where it went
            if exc.endpoint is None:
                exc.endpoint, exc.model = self.answered_at(None), self.client.model
            raise
        return line_response(line, self.client, self.redact, pending.max_tokens, where)

    def answered_at(self, record: BatchRecord | None) -> str:
        """Where a job's lines were answered, as its requests record it: the base URL that
        holds the batch (`record`, else this session's), or `command: <--batch-command>` (the
        offline transport)."""
        if self.transport.name == CommandBatchTransport.name:
            return self.redact(COMMAND_ENDPOINT + getattr(self.transport, "template", ""))
        return (record.endpoint if record else None) or self.client.base_url

    def _send(self, key: tuple[int, str]) -> None:
        group = self._groups.pop(key, None)
        if group is None or not group.items:
            return
        job = asyncio.get_running_loop().create_task(self._job(group))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def _write_input(self, group: _Group) -> str:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        n = len(self.store.batches()) + 1
        path = self._dir / f"job{n:05d}-r{group.round}-{group.kind}.input.jsonl"
        url = endpoint_path(self.client.api)
        atomic_write_text(path, "".join(
            json.dumps({"custom_id": custom_id(group.kind, p.prompt_id), "method": "POST",
                        "url": url, "body": p.body}, ensure_ascii=False) + "\n"
            for p in group.items))
        return str(path)

    async def _job(self, group: _Group) -> None:
        futures = {custom_id(group.kind, p.prompt_id): p.future for p in group.items}
        try:
            await self._running.wait()
            if self._stopping:
                raise RequestAbandoned()
            record = self.store.add_batch(round=group.round, kind=group.kind,
                                          transport=self.transport.name,
                                          prompt_ids=[p.prompt_id for p in group.items],
                                          input_path=self._write_input(group))
            try:
                record = await self._submit(record)
            except RequestAbandoned:  # stopped while it could not learn: kept for the next one
                raise
            except Exception:
                # Never created, nothing paid: its requests fail now, so no later session may
                # submit it.
                record = self.store.update_batch(record, state="abandoned")
                raise
            self.on_progress(record)
            record = await self.follow(record)
            if record.state == "lost":  # its requests are sent again, as unanswered ones are
                raise RequestFailed(record.message, kind=Cause.NOT_FOUND)
            if record.state != "downloaded":  # the run stopped; the job stays pending
                raise RequestAbandoned("in flight", job=record.id)
            lines, where = answers(record), self.answered_at(record)
            for cid, future in futures.items():
                if not future.done():
                    future.set_result((lines[cid], where))
            await asyncio.sleep(0)  # the waiting requests record their answers first
            self.store.update_batch(record, state="settled")
        except (RequestAbandoned, RequestFailed) as exc:
            _fail_all(futures, exc)
        except Exception as exc:  # noqa: BLE001 - an upload or create that failed
            _fail_all(futures, self.job_failure(exc))

    async def _submit(self, record: BatchRecord) -> BatchRecord:
        """The transport's submit. While it cannot learn whether an upload or create whose
        answer was lost reached the endpoint (SubmitUncertain), the job keeps its mark and is
        looked for again every `poll_seconds` (each failure reported as a failed poll is, so a
        run whose endpoint stays away pauses), never sent again nor given up: marked abandoned,
        a batch the endpoint did create ran unread and its requests were paid for again in a
        new job. A stop leaves it so for the next session (RequestAbandoned with the job)."""
        since, count = time.monotonic(), 0
        while True:
            try:
                return await self.transport.submit(self.store, record)
            except SubmitUncertain as exc:
                count += 1
                failure = map_error(exc.cause, self.client)
                self.on_poll_failed(record, failure.cause, self.redact(
                    f"batch job {record.id}: {exc}; it is looked for again, not sent again"),
                    count, time.monotonic() - since)
            # (the transport marked it in the store: the next look starts from that mark)
            record = next(b for b in self.store.batches() if b.id == record.id)
            await self._sleep(self.settings.poll_seconds)
            if self._stopping:
                raise RequestAbandoned("in flight", job=record.id)

    def job_failure(self, exc: BaseException) -> RequestFailed:
        """An upload or create that failed, as the failure of each of its requests: fatal when
        no later job can succeed (a refused key, an endpoint without the Batch API)."""
        failure = map_error(exc, self.client)
        message, fatal = self.redact(failure.message), failure.fatal
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        said = self.redact(error_text(exc)) if isinstance(exc, Exception) else str(exc)
        if status in (404, 405):
            message = (f"{self.client.base_url} does not implement the Batch API (/v1/files, "
                       f"/v1/batches): {said}. Use --batch-command to "
                       "run batch files offline, or run without --batch")
            fatal = True
        elif status in (400, 413, 422) and not fatal:
            # The upload or the create refused as such: every job sends the same kind of file
            # to the same endpoint path with the same window, and would be refused alike
            advice = ("fewer lines per job: lower --prompts-per-round" if status == 413 else
                      f"check --api (the batch's endpoint path {endpoint_path(self.client.api)}"
                      f") and --model")
            message = (f"{self.client.base_url} refused the batch job ({status}: {said}); "
                       "every job of this run would be "
                       f"refused alike: {advice}, then resume")
            fatal = True
        return RequestFailed(f"the batch job failed: {message}", kind=failure.cause,
                             fatal=fatal, status=failure.status)

    async def follow(self, record: BatchRecord) -> BatchRecord:
        """Poll a submitted job every `poll_seconds`, and at once when the transport sees it
        end (`BatchTransport.ended`: a command this process started exits), until its files are
        saved (returned `downloaded`), the endpoint no longer knows it (`lost`) or the run stops
        (returned as it is). Raises RequestFailed (fatal) for a poll no later one can fix (a
        refused key)."""
        while record.state == "submitted" and not self._stopping:
            await self._sleep(self.settings.poll_seconds, self.transport.ended(record))
            if self._stopping:
                break
            record = await self._poll(record)
        return record

    async def _poll(self, record: BatchRecord) -> BatchRecord:
        """One look at a submitted job. A failure worth trying again (the endpoint down, 5xx, a
        timeout) is reported to `on_poll_failed` and the job returned as it was; a 404 for its
        batch or one of its files too (`_not_found`), until the 404s have lasted
        `lost_after_seconds` and `lost_after_polls`: the job is then recorded `lost` (deleted,
        or another server, organisation or key than the one that created it) and its requests
        are sent again. Raises RequestFailed (fatal) for anything else."""
        if held_elsewhere(record, self.client.base_url):
            raise RequestFailed(
                f"batch job {record.id} ({record.batch_id}) was created at {record.endpoint}, and "
                f"this session sends batch requests to {self.client.base_url}: give --base-url "
                f"{record.endpoint} (alone, or first) until its answers are read; it is not sent "
                "again", kind=Cause.NOT_FOUND, fatal=True)
        polled = asyncio.ensure_future(self.transport.poll(self.store, record))
        stopped = asyncio.ensure_future(self._stopped.wait())
        await asyncio.wait((polled, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not polled.done():  # a stop does not wait for an answer: the job stays pending
            polled.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await polled
            return record
        try:
            record = polled.result()
        except RequestFailed:  # the transport's own words (a batch command that cannot run)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes through map_error
            if isinstance(exc, openai.APIStatusError) and exc.status_code == 404:
                return self._not_found(record, exc)
            if isinstance(exc, openai.APIStatusError):  # an answer other than 404
                record = self._found(record)
            failure = map_error(exc, self.client)
            message = self.redact(f"polling batch job {record.id} ({record.batch_id}) failed: "
                                  f"{failure.message}")
            if failure.retry:
                # A 404 between failed polls neither ends nor restarts this count: polls
                # alternating 5xx and 404 still pause the run
                since, count = self._poll_failures.get(record.id, (time.monotonic(), 0))
                self._poll_failures[record.id] = (since, count + 1)
                self.on_poll_failed(record, failure.cause, message, count + 1,
                                    time.monotonic() - since)
                return record
            raise RequestFailed(message, kind=failure.cause, fatal=True,
                                status=failure.status) from exc
        self._poll_failures.pop(record.id, None)
        record = self._found(record)
        self.on_progress(record)
        return record

    def _found(self, record: BatchRecord) -> BatchRecord:
        """An answer other than 404: the 404s in a row (if any) end, in the store too."""
        if not record.not_found_polls:
            return record
        return self.store.update_batch(record, not_found_since=None, not_found_polls=0)

    def _not_found(self, record: BatchRecord, exc: openai.APIStatusError) -> BatchRecord:
        """A poll answered 404 (for the batch, or one of its files). Counted in the store (the
        first 404's epoch time and the count, so a stop and resume goes on counting; the time
        between the sessions counts, as no answer but 404 came in it) and reported to
        `on_poll_failed` (cause `not_found`): the job is polled again. Once the 404s have lasted
        `lost_after_seconds` and `lost_after_polls`, the job is recorded `lost` instead (its
        requests are sent again)."""
        now = time.time()
        since = record.not_found_since if record.not_found_polls and \
            record.not_found_since is not None else now
        polls = record.not_found_polls + 1
        url = str(exc.request.url) if exc.request is not None else ""
        what = f"batch {record.batch_id}"
        if "/files/" in url:  # the batch is known: one of its files is not
            file_id = url.split("/files/", 1)[1].split("/", 1)[0]
            what = f"the file {file_id} of batch {record.batch_id} (deleted, or expired)"
        said = (f"{self.client.base_url} does not know {what} (404: {error_text(exc)}; "
                f"{polls} poll(s) in a row over {now - since:.0f}s)")
        rule = self.settings
        if polls >= rule.lost_after_polls and now - since >= rule.lost_after_seconds:
            record = self.store.update_batch(
                record, state="lost", not_found_since=since, not_found_polls=polls,
                message=self.redact(
                    f"{said}: its requests are sent again. If it was created at another "
                    "--base-url or with another key, its answers there are not read"))
            self._poll_failures.pop(record.id, None)
            self.on_progress(record)
            return record
        record = self.store.update_batch(record, not_found_since=since, not_found_polls=polls)
        self.on_poll_failed(record, Cause.NOT_FOUND, self.redact(
            f"polling batch job {record.id}: {said}. Polled again; it is recorded lost, and its "
            f"requests sent again, once 404s last {rule.lost_after_seconds:.0f}s and "
            f"{rule.lost_after_polls} polls"), polls, now - since)
        return record

    async def _sleep(self, seconds: float, ended: Awaitable[object] | None = None) -> None:
        """Wait `seconds`, or less: until `stop`, or until `ended` (a job's end) completes."""
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())}
        if ended is not None:
            waits.add(asyncio.ensure_future(ended))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def resume_pending(self) -> list[BatchRecord]:
        """Every job an earlier session left unread, brought to its answers: recorded but not
        created (created now from its recorded file), submitted (polled, never resubmitted),
        downloaded (read from disk). Returns the jobs whose answers are on disk (`answers`
        reads them) and those the endpoint no longer knows (`lost`); jobs still pending when the
        run stops stay recorded. Raises RequestFailed (fatal) as `follow` does."""
        out = []
        for record in self.store.batches(pending_only=True):
            if record.transport != self.transport.name:
                continue  # sent by the other transport; read when the run uses it again
            if record.state == "preparing":
                try:
                    record = await self.transport.submit(self.store, record)
                except SubmitUncertain as exc:  # it may exist: kept, never given up
                    raise RequestFailed(self.redact(
                        f"batch job {record.id}: {exc}. The job is kept (not sent again): run "
                        "the same command once the endpoint answers, and it looks again"),
                        kind=map_error(exc.cause, self.client).cause, fatal=True) from exc
                except Exception as exc:  # noqa: BLE001 - never created: nothing to read
                    self.store.update_batch(record, state="abandoned",
                                            message=str(self.job_failure(exc)))
                    continue
                self.on_progress(record)
            if record.state == "submitted":
                if self._stopping:
                    break
                record = await self._poll(record)
                record = await self.follow(record)
            if record.state in ("downloaded", "lost"):
                out.append(record)
        return out

    def settled(self, record: BatchRecord) -> None:
        self.store.update_batch(record, state="settled")

    def pause(self) -> None:
        """No new job leaves until `resume` (submitted jobs are still polled)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        """Stop polling: requests not yet in a job are abandoned; submitted jobs stay recorded
        (the next session polls them)."""
        self._stopping = True
        self._running.set()
        self._wake.set()
        self._stopped.set()
        for group in self._groups.values():
            if group.timer is not None:
                group.timer.cancel()
            _fail_all({str(i): p.future for i, p in enumerate(group.items)},
                      RequestAbandoned())
        self._groups.clear()

    async def cancel_pending(self) -> list[BatchRecord]:
        """Cancel every submitted job at the endpoint (its requests are then abandoned; a Batch
        API job stays submitted, and the next session reads what it answered)."""
        done = []
        for record in self.store.batches(pending_only=True):
            if record.state == "submitted":
                done.append(await self.transport.cancel(self.store, record))
        self.stop()
        return done

    async def close(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        close = getattr(self.transport, "close", None)
        if close is not None:
            await close()


def _fail_all(futures: dict[str, asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures.values():
        if not future.done():
            future.set_exception(exc)


def batches_dir(run_dir: Path) -> Path:
    """Where a run keeps its jobs' files: jobNNNNN-rR-KIND.input.jsonl, .output.jsonl,
    .errors.jsonl, and .command.log for the offline command."""
    return Path(run_dir) / "batches"


def command_logs(run_dir: Path) -> str:
    """A glob of every job's command log in the run (`CommandBatchTransport.log_path`)."""
    return str(batches_dir(run_dir) / "job*.command.log")


def held_elsewhere(record: BatchRecord, base_url: str) -> bool:
    """A Batch API job created at another endpoint than `base_url`: its batch id means
    nothing there (a 404 would send its requests again while it runs, and is paid, where it
    was created)."""
    return bool(record.endpoint) and endpoint_key(record.endpoint) != endpoint_key(base_url)


def make_transport(client: ClientSettings, settings: BatchSettings) -> BatchTransport:
    if settings.command:
        return CommandBatchTransport(settings.command)
    return OpenAIBatchTransport(client, settings)


def kept_note(jobs: int, command: bool = False) -> str:
    """What a stop that keeps `jobs` submitted batch jobs says about them (`command`: jobs of
    the offline --batch-command)."""
    if command:
        return (f"{jobs} batch command job(s) keep running on their own: the same command reads "
                "their output files (they are not run again)")
    return (f"{jobs} batch job(s) stay pending at the endpoint: the same command resumes by "
            "polling them (they are not submitted again)")


def progress_line(record: BatchRecord) -> str:
    """A pending job as one line: its stage, the endpoint's status and request counts."""
    counts = f"{record.completed}/{record.total} done" + (
        f", {record.failed} failed" if record.failed else "")
    return (f"batch job {record.id} (round {record.round}, {record.kind}): "
            f"{'lost' if record.state == 'lost' else record.status or record.state} {counts}" +
            (f"; {record.message}" if record.message else ""))
