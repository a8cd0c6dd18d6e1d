"""Endpoint failures as real endpoints send them: the loopback server returns exactly that status
and body, the real engine or CLI runs, and the store, the output and the exit code are checked."""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import shown
from fake_openai import FakeOpenAI
from selfinstruct_tui.engine import prompts as P
from selfinstruct_tui.engine.llm import (
    ClientSettings,
    LLMClient,
    Redactor,
    RequestFailed,
    SamplingParams,
    context_numbers,
)
from test_real_answers import assert_accounted

QUOTA = {"status": 429, "body": {"error": {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}}
CHAT_MODEL_ON_COMPLETIONS = {"status": 404, "body": {"error": {
    "message": "This is a chat model and not supported in the v1/completions endpoint. Did you "
               "mean to use v1/chat/completions?", "type": "invalid_request_error"}}}
NO_CHAT_TEMPLATE = {"status": 400, "body": {"object": "error", "message": (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a "
    "chat template if the tokenizer does not define one."), "type": "BadRequestError"}}
GATEWAY_TIMEOUT = {"status": 504, "content_type": "text/html", "body": (
    "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 "
    "Gateway Time-out</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>")}


def run(run_cli, server, run_dir, *extra, api="completions", env=None):
    return run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                   "--api", api, "--run-dir", str(run_dir), "--target", "10", *extra,
                   env=env, timeout=120)


def ask_once(url: str, retries: list[str] | None = None, **settings) -> None:
    """One generation request through a real LLMClient to `url` (settings: ClientSettings
    fields); each retry's cause is appended to `retries`. Raises what the client raises."""
    async def go() -> None:
        client = LLMClient(ClientSettings(base_url=url, model="m", **settings))
        try:
            await client.request(P.generation_completion(["Name a color."] * 8),
                                 SamplingParams(max_tokens=8),
                                 None if retries is None else lambda c, *_: retries.append(c))
        finally:
            await client.close()

    asyncio.run(go())


def store_rows(run_dir: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_exhausted_quota_stops_at_the_first_answer(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [QUOTA]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "2")
        sent = len(server.log)
    assert proc.returncode == 3
    assert "quota is exhausted" in proc.stderr and "exceeded your current quota" in proc.stderr
    assert sent <= 2  # the requests already in flight; none retried
    assert store_rows(run_dir, "SELECT COUNT(*) FROM retries")[0][0] == 0
    state = json.loads(store_rows(run_dir, "SELECT value FROM meta WHERE key='state'")[0][0])
    assert state["state"] == "stopped"
    assert f"resume it with: {shown('run')}" in proc.stderr


@pytest.mark.parametrize("entry, words", [
    # OpenRouter: out of credits
    ({"status": 402, "body": {"error": {"message": "Insufficient credits. Add more using "
                                                   "https://openrouter.ai/credits", "code": 402}}},
     "Insufficient credits"),
    # LiteLLM and other proxies: the error in a 200 answer's body
    ({"status": 200, "body": {"error": {"message": "Incorrect API key provided: sk-...abcd",
                                        "type": "invalid_request_error",
                                        "code": "invalid_api_key"}}},
     "Incorrect API key provided"),
])
def test_errors_no_retry_can_heal_stop_at_the_first_answer(run_cli, tmp_path, entry, words):
    """A 402 was retried for 61 s before a pause; an error answered with 200 was "malformed:
    the response has no choices" 7 times, the server's words nowhere."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [entry]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1")
        sent = len(server.log)
    assert proc.returncode == 3, proc.stderr
    assert words in proc.stderr and "malformed" not in proc.stderr
    assert sent == 1 and store_rows(run_dir, "SELECT COUNT(*) FROM retries")[0][0] == 0


def test_answers_without_a_usable_text_are_counted_and_a_filtered_one_is_named(tmp_path):
    """A 200 with no choices (but usage) was retried as malformed and its tokens never
    counted; a chat message with null content stopped by the content filter was asked again 7
    times, at full price, uncounted, as "malformed"."""
    from test_real_answers import NEW, machine, rejections, run_engine

    usage = {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000}
    empty = {"status": 200, "body": {"id": "x", "choices": [], "usage": usage}}
    filtered = {"status": 200, "body": {"id": "x", "choices": [{
        "index": 0, "finish_reason": "content_filter",
        "message": {"role": "assistant", "content": None}}], "usage": usage}}
    with FakeOpenAI(script={"generate": [empty, f"1. {NEW[0]}\n2. {NEW[1]}"],
                            "classify": [filtered, "No"], "instances": ["Input: a\nOutput: b"]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1, api="chat",
                                          structured_output="off")
    assert finished.reason == "target"
    [gen] = store_rows(run_dir, "SELECT attempts, prompt_tokens FROM prompts WHERE kind = "
                                "'generate' ORDER BY id LIMIT 1")
    assert gen[0] == 2 and gen[1] > 1000  # the empty answer's 1000 tokens and the real one's
    [cause] = store_rows(run_dir, "SELECT cause FROM retries")
    assert cause[0] == "malformed"
    assert [(r["reason"], r["candidate"]) for r in rejections(run_dir)
            if r["reason"] != "surplus"] == [("content_filter", NEW[0])]
    [cls] = store_rows(run_dir, "SELECT attempts, prompt_tokens, finish_reason FROM prompts "
                                "WHERE kind = 'classify' ORDER BY id LIMIT 1")
    assert tuple(cls) == (1, 1000, "content_filter")  # read once, not asked again
    assert [t["instruction"] for t in machine(run_dir)] == [NEW[1]]
    total = store_rows(run_dir, "SELECT SUM(prompt_tokens) FROM prompts")[0][0]
    assert total >= 2000


def test_a_proxys_413_keeps_the_paid_candidate_open(tmp_path):
    """nginx's 413 (client_max_body_size) settled candidates whose generation and
    classification were paid as request_failed, for good; the pause never named the 413."""
    from test_real_answers import NEW, assert_accounted, machine, rejections, run_engine

    too_large = {"status": 413, "content_type": "text/html", "body": (
        "<html><head><title>413 Request Entity Too Large</title></head><body><center><h1>413 "
        "Request Entity Too Large</h1></center><hr><center>nginx</center></body></html>")}
    with FakeOpenAI(script={"generate": [f" {NEW[0]}", f" {NEW[1]}"], "classify": [" No"],
                            "instances": [too_large]}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 2)
    assert finished.reason == "target"
    [refused] = [r for r in rejections(run_dir) if r["reason"] != "surplus"]
    assert refused["reason"] == "unanswered" and "kept open" in refused["detail"]
    assert refused["task_id"] in {t["id"] for t in machine(run_dir)}  # taken up again
    [error] = store_rows(run_dir, "SELECT message FROM errors")
    assert "(413: 413 Request Entity Too Large)" in error[0]
    assert "client_max_body_size" in error[0]
    assert_accounted(run_dir)


def retry_delays(server: FakeOpenAI, **settings: Any) -> list[float]:
    """The delays (seconds) a client with `settings` reported before each retry of one
    generation request to `server`, which it answers in the end."""
    delays: list[float] = []

    async def go() -> None:
        client = LLMClient(ClientSettings(base_url=server.base_url, model="m", **settings))
        try:
            await client.request(P.generation_completion(["Name a color."] * 8),
                                 SamplingParams(max_tokens=8),
                                 lambda cause, attempt, delay, *_: delays.append(delay))
        finally:
            await client.close()

    asyncio.run(go())
    return delays


def test_a_retry_after_of_zero_or_in_the_past_waits_the_backoff():
    """Retry-After: 0, or a date already past (the server's clock ahead of ours), retried at
    once: 7 attempts within 90 ms, hammering the endpoint that asked to wait."""
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    for header in ({"Retry-After": "0"}, {"Retry-After": past}, {"retry-after-ms": "0"}):
        limited = {"status": 429, "headers": header,
                   "body": {"error": {"message": "slow down", "type": "rate_limit_error"}}}
        with FakeOpenAI(script={"*": [limited, limited]}, repeat_last=False) as server:
            delays = retry_delays(server, backoff_base=0.05, backoff_max=0.1, max_retries=2)
        assert len(delays) == 2 and all(d > 0 for d in delays), (header, delays)


def test_a_validation_error_list_is_quoted():
    """FastAPI's 422 `detail` list read "the endpoint refused the request (422: Error code:
    422)"."""
    invalid = {"status": 422, "body": {"detail": [{
        "loc": ["body", "max_tokens"], "msg": "Input should be less than or equal to 512",
        "type": "less_than_equal"}]}}
    with FakeOpenAI(script={"*": [invalid]}) as server, pytest.raises(RequestFailed) as failed:
        ask_once(server.base_url, max_retries=0)
    assert "body.max_tokens: Input should be less than or equal to 512" in str(failed.value)


COMPLETION = {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [
    {"index": 0, "text": " Name a fruit.", "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}


@pytest.mark.parametrize("entry, outcome", [
    # JSON sent as text/plain: was "answered with text that is not JSON ('{"id": ...')", exit 3
    ({"status": 200, "content_type": "text/plain", "body": json.dumps(COMPLETION)}, None),
    # a proxy that streams every answer: was "check --base-url"
    ({"status": 200, "content_type": "text/event-stream",
      "body": f"data: {json.dumps(COMPLETION)}\n\ndata: [DONE]\n\n"},
     "a streamed answer (server-sent 'data:' events) though no stream was asked for"),
    # Cloudflare's challenge: was "the endpoint refused the API key (403: Just a moment...)"
    ({"status": 403, "content_type": "text/html", "headers": {"cf-mitigated": "challenge"},
      "body": "<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>"},
     "answered with a bot-protection challenge page (403: Just a moment...), not the API"),
])
def test_answers_that_are_not_plain_json_are_read_or_named(entry, outcome):
    with FakeOpenAI(script={"*": [entry]}) as server:
        if outcome is None:
            ask_once(server.base_url, max_retries=0)
            return
        with pytest.raises(RequestFailed) as failed:
            ask_once(server.base_url, max_retries=0)
    assert outcome in str(failed.value) and failed.value.fatal
    assert "refused the API key" not in str(failed.value)


@pytest.mark.parametrize("entry, words", [
    # a body labelled gzip that is not: was "cannot connect to URL" (a connection failure,
    # which after its retries pauses the run with "check that URL is up")
    ({"status": 200, "headers": {"Content-Encoding": "gzip"}, "body": json.dumps(COMPLETION)},
     "the body could not be decompressed as its Content-Encoding says"),
    ({"status": 200, "headers": {"Content-Encoding": "deflate"}, "body": json.dumps(COMPLETION)},
     "the body could not be decompressed as its Content-Encoding says"),
    # JSON cut short under a JSON content type: was "Expecting value: line 1 column 1", no body
    ({"status": 200, "body": '{"id": "cmpl-1", "choices": [{"te'},
     "the body is not JSON (Unterminated string starting at: line 1 column 31 (char 30); it starts "
     "'{\"id\": \"cmpl-1\", \"choices\": [{\"te')"),
])
def test_a_body_that_cannot_be_read_is_malformed_not_a_connection_failure(entry, words):
    retries: list[str] = []
    with FakeOpenAI(script={"*": [entry]}) as server:
        with pytest.raises(RequestFailed) as failed:
            ask_once(server.base_url, retries, max_retries=1)
    assert retries == ["malformed"] and failed.value.kind == "malformed"
    assert words in str(failed.value) and server.base_url in str(failed.value)


def test_a_host_name_that_does_not_resolve_is_named():
    """It was "cannot connect to URL", retried for 152 s, then "check that it is up"."""
    with pytest.raises(RequestFailed) as failed:
        ask_once("http://no-such-host.invalid:8000/v1", max_retries=0)
    assert "the host name 'no-such-host.invalid' does not resolve (DNS)" in str(failed.value)


def test_a_short_key_is_redacted_too():
    """Keys under 8 characters (local servers' "hunter2") were printed and stored as sent."""
    assert Redactor("hunter2")("Invalid API key hunter2 for user") == \
        "Invalid API key [redacted] for user"
    assert Redactor("ab")("a cab") == "a cab"  # too short to be told from text


def test_a_prompt_that_cannot_fit_names_both_numbers(run_cli, tmp_path):
    with FakeOpenAI(context_window=120) as server:
        proc = run(run_cli, server, tmp_path / "run", "--concurrency", "1")
        sent = len(server.log)
    assert proc.returncode == 3
    assert "model's context window is 120 tokens" in proc.stderr
    assert "the prompt is " in proc.stderr and "cannot fit" in proc.stderr
    assert sent == 1


def test_the_context_window_is_learned_once_and_used_for_every_request(tmp_path):
    from test_real_answers import run_engine

    with FakeOpenAI(context_window=1100) as server:
        run_dir, finished, events = run_engine(tmp_path / "learned", server, 10)
        refused = server.statuses.count(400)
        asked = [body["max_tokens"] for _, kind, body in server.log if kind == "generate"]
    assert finished.reason == "target"
    assert refused == 1  # only the first request, before the limit was known
    assert asked[0] == 1024 and all(n < 1024 for n in asked[1:])
    assert store_rows(run_dir, "SELECT value FROM meta WHERE key = 'context_window'") == \
        [("1100",)]
    assert any("context window is 1100" in getattr(e, "message", "") for e in events)
    with FakeOpenAI(context_window=1100) as server:  # known up front: nothing is refused
        run_engine(tmp_path / "given", server, 5, context_window=1100)
        assert server.statuses.count(400) == 0


@pytest.mark.parametrize("api, entry, use", [
    ("completions", CHAT_MODEL_ON_COMPLETIONS, "--api chat"),
    ("completions", {"shape": "chat"}, "--api chat"),
    ("chat", NO_CHAT_TEMPLATE, "--api completions"),
    ("chat", {"shape": "completions"}, "--api completions"),
])
def test_the_wrong_api_is_named_with_the_one_to_use(run_cli, tmp_path, api, entry, use):
    with FakeOpenAI(script={"*": [entry]}) as server:
        proc = run(run_cli, server, tmp_path / "run", "--concurrency", "1", api=api)
        sent = len(server.log)
    assert proc.returncode == 3
    assert f"use {use}" in proc.stderr
    assert sent == 1


@pytest.mark.parametrize("status, message", [
    (401, "Invalid authentication credentials for this organization."),
    (403, "Project proj_abc does not have access to model m."),
    (404, "The model `m` does not exist or you do not have access to it."),
])
def test_auth_and_not_found_carry_the_servers_own_words(run_cli, tmp_path, status, message):
    entry = {"status": status, "body": {"error": {"message": message, "type": "x"}}}
    with FakeOpenAI(script={"*": [entry]}) as server:
        proc = run(run_cli, server, tmp_path / "run", "--concurrency", "1")
    assert proc.returncode == 3
    assert message in proc.stderr
    assert "is up" not in proc.stderr  # the endpoint is up; it said no


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_and_names_the_base_url_to_use(run_cli, tmp_path, status):
    # A base URL that redirects (http -> https, an old host name): followed, a 301/302 POST
    # became a GET (blamed on --model: 404) and a 307/308 to another host lost the key (blamed
    # on the key: 401). Nothing reaches the new address; the message names it as a base URL.
    key = "sk-Vq8Lw2Zr5Tn1Xb7Hc4Md"
    run_dir = tmp_path / "run"
    with FakeOpenAI(api_key=key) as target:
        moved = target.base_url.replace("127.0.0.1", "localhost")  # another host: another origin
        entry = {"status": status, "body": "", "headers": {"Location": moved + "/completions"}}
        with FakeOpenAI(script={"*": [entry]}) as server:
            proc = run(run_cli, server, run_dir, "--concurrency", "1",
                       env={"OPENAI_API_KEY": key})
            asked = len(server.log)
        assert target.log == [] and not target.seen_auth
    assert proc.returncode == 3, proc.stderr
    assert f"redirects requests ({status} to {moved}/completions)" in proc.stderr
    assert f"use --base-url {moved}" in proc.stderr
    # (the URLs left out: a port such as 44045 holds "404")
    said = proc.stderr.splitlines()[0].replace(server.base_url, "URL").replace(moved, "URL")
    assert "API key" not in said and "--model" not in said and "404" not in said
    assert asked == 1  # fatal at the first answer, not retried
    assert store_rows(run_dir, "SELECT COUNT(*) FROM retries")[0][0] == 0
    errors = store_rows(run_dir, "SELECT message FROM errors")
    assert any(f"use --base-url {moved}" in m for (m,) in errors)


def test_a_model_listing_that_redirects_names_the_base_url_to_use(run_cli, tmp_path):
    with FakeOpenAI() as target, FakeOpenAI() as server:
        moved = target.base_url.replace("127.0.0.1", "localhost")
        server.configure(moved=(308, moved))
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--run-dir",
                       str(tmp_path / "run"), "--target", "10", timeout=60)
        assert target.log == [] and not target.seen_auth
    assert proc.returncode == 2, proc.stderr  # before the run starts: a setting to change
    assert f"redirects requests (308 to {moved}/models)" in proc.stderr
    assert f"use --base-url {moved}" in proc.stderr


def test_an_html_error_page_is_reported_by_its_title(run_cli, tmp_path, isolated_env):
    Path(isolated_env["SELFINSTRUCT_CONFIG"]).write_text("error_pause_seconds = 0.2\n")
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [GATEWAY_TIMEOUT]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1", "--max-retries", "1")
    assert proc.returncode == 3
    assert "HTTP 504: 504 Gateway Time-out" in proc.stderr
    assert "<html" not in proc.stderr + proc.stdout
    messages = [r[0] for r in store_rows(run_dir, "SELECT message FROM retries")]
    assert messages and all("504 Gateway Time-out" in m and "<" not in m for m in messages)
    assert f"Check that {server.base_url} is up" in proc.stderr  # a gateway error: down


def test_the_api_key_is_redacted_from_everything_the_endpoint_sends_back(run_cli, tmp_path):
    key = "sk-proj-Q3vX9bT7mK2pL8wN4rJ6"
    echo = {"status": 401, "body": {"error": {
        "message": f"Incorrect API key provided: {key}. Also seen: {key[:14]}****{key[-4:]}",
        "type": "invalid_request_error"}}}
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [echo]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1",
                   env={"OPENAI_API_KEY": key})
        assert f"Bearer {key}" in server.seen_auth
    assert proc.returncode == 3
    assert "[redacted]" in proc.stderr and "Incorrect API key provided" in proc.stderr
    for text in (proc.stdout, proc.stderr):
        assert key not in text and key[:14] not in text
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and key[:14].encode() not in data, path


def test_an_answer_that_echoes_the_key_is_stored_redacted():
    redact = Redactor("sk-live-abcdefghijklmnop")
    assert redact("your key sk-live-abcdefghijklmnop works") == "your key [redacted] works"
    assert "abcdefgh" not in redact("prefix sk-live-abcd****mnop and abcdefghijk")
    assert redact("nothing secret here") == "nothing secret here"


def test_rate_limits_pause_every_request_once_and_restart_staggered(tmp_path):
    """16 requests, 8 in flight; the first answer is a 429 with Retry-After 0.6 s. From the
    moment the client reads it, no request is sent until that time has passed (one shared pause,
    not only the limited request's own), and then they leave one by one, 0.6/8 s apart, instead
    of at one instant. Send times are taken at the client (not at the server, whose thread may
    log an arrival late under load), and only lower bounds on time are asserted: sleeping never
    ends early, whatever the load."""
    limited = {"status": 429, "headers": {"Retry-After": "0.6"},
               "body": {"error": {"message": "Rate limit reached for requests", "type": "x"}}}
    sends: list[float] = []
    seen: list[float] = []

    async def go(server):
        client = LLMClient(ClientSettings(base_url=server.base_url, model="m", concurrency=8))
        send = client._send

        async def timed_send(*args):
            sends.append(time.monotonic())
            return await send(*args)

        client._send = timed_send  # type: ignore[method-assign]
        causes: list[str] = []

        def on_retry(cause, *_):
            seen.append(time.monotonic())
            causes.append(cause)

        req = P.generation_completion([f"Explain topic {i} briefly." for i in range(8)])
        try:
            return await asyncio.gather(*[
                client.request(req, SamplingParams(max_tokens=32), on_retry)
                for _ in range(16)]), causes
        finally:
            await client.close()

    with FakeOpenAI(latency=0.05, script={"*": [limited]}, repeat_last=False) as server:
        answers, causes = asyncio.run(go(server))
    assert len(answers) == 16 and causes == ["rate_limit"]
    assert server.statuses.count(429) == 1
    assert len(sends) == 17  # 16 requests and the one retry
    read_at = seen[0]
    before = [t for t in sends if t <= read_at]
    after = sorted(t for t in sends if t > read_at)
    assert 1 <= len(before) <= 16 and len(after) == 17 - len(before)
    # Nothing leaves before the pause is over; then the first 8 to leave take one slot each,
    # 0.6/8 s apart, so the last of them waits 7 slots more (whichever order they leave in).
    assert all(t - read_at >= 0.6 - 1e-3 for t in after), [t - read_at for t in after]
    slots = min(len(after), 8)
    assert after[-1] - read_at >= 0.6 + (slots - 1) * 0.6 / 8 - 1e-3, [t - read_at for t in after]


def test_retries_are_counted_per_cause_in_the_store_and_the_round_line(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    limited = {"status": 429, "headers": {"Retry-After": "0"},
               "body": {"error": {"message": "Rate limit reached", "type": "x"}}}
    flaky = {"status": 502, "body": "Bad Gateway", "content_type": "text/plain"}
    with FakeOpenAI(script={"*": [limited, limited, flaky]}, repeat_last=False) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1")
    assert proc.returncode == 0, proc.stderr
    assert dict(store_rows(run_dir, "SELECT cause, COUNT(*) FROM retries GROUP BY cause")) == \
        {"rate_limit": 2, "server_error": 1}
    assert "retries 3: rate limit 2, server error 1" in proc.stdout
    retries = json.loads(store_rows(run_dir, "SELECT retries FROM rounds WHERE round = 1")[0][0])
    assert retries == {"rate_limit": 2, "server_error": 1}
    assert_accounted(run_dir)


def test_answers_without_usage_are_estimated_and_say_so(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [{"usage": False}]}) as server:
        proc = run(run_cli, server, run_dir, "--price-in", "0.001", "--price-out", "0.002")
    assert proc.returncode == 0, proc.stderr
    assert "(estimated:" in proc.stdout and "carried no usage" in proc.stdout
    done = next(ln for ln in proc.stdout.splitlines() if ln.startswith("done: "))
    assert "$" in done  # the final line shows the cost
    rows = store_rows(run_dir, "SELECT usage_reported, prompt_tokens, completion_tokens "
                      "FROM prompts WHERE response IS NOT NULL")
    assert rows and all(r[0] == 0 and r[1] > 0 and r[2] > 0 for r in rows)


@pytest.mark.parametrize("message, limit, prompt", [
    ("This model's maximum context length is 4097 tokens, however you requested 5000 tokens "
     "(1000 in your prompt; 4000 for the completion).", 4097, 1000),
    ("This model's maximum context length is 2048 tokens. However, you requested 2100 tokens "
     "(1100 in the messages, 1000 in the completion).", 2048, 1100),
    ("'max_tokens' is too large: 1024. This model's maximum context length is 2048 tokens and "
     "your request has 1500 input tokens (1024 > 2048 - 1500).", 2048, 1500),
    ("Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 "
     "`inputs` tokens and 1000 `max_new_tokens`", 4096, 4000),
    # OpenAI's chat wording: the prompt alone does not fit, and was not read as that
    ("This model's maximum context length is 512 tokens. However, your messages resulted in "
     "900 tokens. Please reduce the length of the messages.", 512, 900),
    # Each of these was read as a context error with neither number: max_tokens was halved and
    # the request sent 4 more times, then settled as a bad request; the prompt never fit.
    # vLLM's engine
    ("The decoder prompt (length 5000) is longer than the maximum model length of 4096. Make "
     "sure that `max_model_len` is no smaller than the number of text tokens.", 4096, 5000),
    # vLLM's OpenAI server (recent)
    ("This model's maximum context length is 4096 tokens. However, you requested 1024 output "
     "tokens and your prompt contains at least 3500 input tokens, for a total of at least 4524 "
     "tokens. Please reduce the length of the input prompt or the number of requested output "
     "tokens.", 4096, 3500),
    # SGLang (and Together)
    ("The input (5000 tokens) is longer than the model's context length (4096 tokens).", 4096,
     5000),
    ("Requested token count exceeds the model's maximum context length of 4096 tokens. You "
     "requested a total of 5000 tokens: 1000 tokens from the input messages and 4000 tokens for "
     "the completion. Please reduce the number of tokens in the input messages or the "
     "completion to fit within the limit.", 4096, 1000),
    # Mistral
    ("Prompt contains 5000 tokens, too large for model with 4096 maximum context length", 4096,
     5000),
])
def test_context_numbers_from_each_servers_wording(message, limit, prompt):
    assert context_numbers(message) == (limit, prompt)
    body = {"error": {"message": "the request exceeds the available context size", "n_ctx": 512,
                      "n_prompt_tokens": 600}}
    assert context_numbers(body["error"]["message"], body) == (512, 600)


def test_structured_output_on_fails_clearly_where_it_is_refused():
    async def go(server):
        client = LLMClient(ClientSettings(base_url=server.base_url, model="m", api="chat",
                                          structured_output="on"))
        try:
            return await client.request(P.generation_chat(["Explain tides."] * 8, 7, True),
                                        SamplingParams(max_tokens=64))
        finally:
            await client.close()

    with FakeOpenAI(structured="reject") as server:
        with pytest.raises(RequestFailed) as info:
            asyncio.run(go(server))
    assert info.value.fatal and "--structured-output off" in str(info.value)


def test_a_base_url_that_serves_a_web_page_is_named(run_cli, tmp_path):
    page = {"status": 200, "content_type": "text/html",
            "body": "<html><head><title>Open WebUI</title></head><body>app</body></html>"}
    with FakeOpenAI(script={"*": [page]}) as server:
        proc = run(run_cli, server, tmp_path / "run", "--concurrency", "1")
        sent = len(server.log)
    assert proc.returncode == 3
    assert "answered with an HTML page ('Open WebUI') instead of the OpenAI API" in proc.stderr
    assert "check --base-url" in proc.stderr
    assert sent == 1  # not retried


def test_an_export_to_a_bad_path_is_an_error_not_a_traceback(run_cli, fake_server, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir), "--target", "3", check=True)
    for target in (tmp_path, "/proc/version"):
        proc = run_cli("export", str(run_dir), "--format", "alpaca", "-o", str(target))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert str(target) in proc.stderr


class _RawServer:
    """A TCP server on loopback that does one wrong thing to every connection (below HTTP, where
    the fake OpenAI server cannot go): `close` reads the request and hangs up, `hang` never
    answers, `not_http` answers a line that is not HTTP, `cut_body` sends a 200 whose body stops
    half way. `refuse`: nothing listens on the port. `blackhole`: a connection cannot even be
    opened, as with a host that drops packets (a firewall, a replica gone from the network): the
    port listens with a full accept queue and never accepts, so the kernel drops new SYNs."""

    def __init__(self, behaviour: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        if behaviour == "refuse":
            self.sock.close()
            return
        if behaviour == "blackhole":
            self.sock.listen(0)
            filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            self.held.append(filler)  # the one queued connection; every later one waits
            return
        self.sock.listen()
        self.behaviour = behaviour
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.behaviour == "hang":
                self.held.append(conn)
                continue
            conn.recv(65536)
            if self.behaviour == "trickle":
                threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()
                continue
            if self.behaviour == "not_http":
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            elif self.behaviour == "cut_body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 400\r\n\r\n{\"choices\": [{\"te")
            conn.close()

    @staticmethod
    def _trickle(conn: socket.socket) -> None:
        """A 200 whose body comes a byte at a time (as keep-alive newlines do from a proxy):
        every byte starts the transport's read timeout again."""
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 4000\r\n\r\n")
            for _ in range(4000):
                conn.sendall(b"\n")
                time.sleep(0.1)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("behaviour, cause", [
    ("refuse", "connection"), ("close", "connection"), ("not_http", "connection"),
    ("cut_body", "connection"), ("hang", "timeout"),
    # headers, then a byte every 0.1 s: waited for without end (400 s here) before the whole
    # answer had a deadline
    pytest.param("trickle", "timeout", marks=pytest.mark.timeout(60)),
    # The mark fails the test if the connect timeout is not applied: the request timeout (and
    # a retry) would take 2 x 60 s.
    pytest.param("blackhole", "timeout", marks=pytest.mark.timeout(40))])
def test_transport_failures_are_named_by_what_happened(behaviour, cause):
    """Below HTTP the transport names failures its own way (aiohttp reports a refused connection
    as a connect *timeout*, and an answer that is not HTTP as its own error type). Each is
    recorded under what really happened, with the message for it, and retried as that cause.
    A connection that cannot be opened fails after the connect timeout (0.5 s here), not the
    request timeout (60 s here)."""
    server = _RawServer(behaviour)
    retries: list[str] = []
    try:
        with pytest.raises(RequestFailed) as failed:
            ask_once(f"http://127.0.0.1:{server.port}/v1", retries, concurrency=2,
                     max_retries=1, request_timeout=60.0 if behaviour == "blackhole" else 1.0,
                     connect_timeout=0.5, backoff_base=0.01, backoff_max=0.02)
    finally:
        server.close()
    assert failed.value.kind == cause and not failed.value.fatal
    assert retries == [cause]  # retried once as that cause, then given up
    expected = {"hang": "no answer within 1s", "refuse": "cannot connect to",
                "close": "closed before an answer", "cut_body": "closed before an answer",
                "not_http": "cannot connect to", "trickle": "no whole answer within 1s",
                "blackhole": "could not connect to http://127.0.0.1:"}[behaviour]
    assert expected in str(failed.value)
    if behaviour == "blackhole":
        assert "within 0.5s (--connect-timeout" in str(failed.value)


def _tls_server(ca, **kw) -> FakeOpenAI:
    """A fake endpoint serving HTTPS with a certificate for 127.0.0.1 issued by test CA `ca`."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return FakeOpenAI(tls=context, **kw)


def test_a_certificate_that_cannot_be_verified_is_named_and_ssl_cert_file_fixes_it(run_cli,
                                                                                    tmp_path):
    """An HTTPS endpoint with a private CA: before, every request was retried as "cannot
    connect" and the run paused as if the endpoint were down. Now the first attempt names the
    certificate problem and the fix, nothing is retried, and the same command with SSL_CERT_FILE
    pointing at the CA resumes the run to its target."""
    import trustme

    ca = trustme.CA()
    run_dir = tmp_path / "run"
    with _tls_server(ca) as server:
        assert server.base_url.startswith("https://")
        failed = run(run_cli, server, run_dir, "--concurrency", "2")
        assert failed.returncode == 3, failed.stderr
        assert "TLS certificate of 127.0.0.1" in failed.stderr
        assert "cannot be verified" in failed.stderr and "SSL_CERT_FILE" in failed.stderr
        assert server.log == []  # no request got through the handshake
        assert store_rows(run_dir, "SELECT COUNT(*) FROM retries")[0][0] == 0
        errors = store_rows(run_dir, "SELECT kind, message FROM errors")
        assert errors and all(kind == "tls" for kind, _ in errors)
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        fixed = run(run_cli, server, run_dir, "--concurrency", "2",
                    env={"SSL_CERT_FILE": str(ca_file)})
    assert fixed.returncode == 0, fixed.stderr
    assert store_rows(run_dir, "SELECT COUNT(*) FROM tasks WHERE origin = 'machine'")[0][0] >= 10
    assert_accounted(run_dir)


def test_an_https_url_for_a_plain_http_server_says_to_use_http():
    """The scheme is wrong, not the endpoint: named at the first attempt, never retried."""
    retries: list[str] = []
    with FakeOpenAI() as server:
        url = server.base_url.replace("http://", "https://")
        with pytest.raises(RequestFailed) as failed:
            ask_once(url, retries, max_retries=3, backoff_base=0.01)
    assert failed.value.kind == "tls" and failed.value.fatal
    assert f"{url} is https://, but the server there answers without TLS: use http://" in \
        str(failed.value)
    assert retries == [] and server.log == []



@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_ssl_cert_file_without_certificates_is_named_before_anything_is_created(
        run_cli, tmp_path, content):
    """Where the TLS message sends a user: a typo in SSL_CERT_FILE (or a file that is not PEM)
    was a traceback after the run directory was made."""
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content)
    run_dir = tmp_path / "run"
    proc = run_cli("run", "--headless", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                   "--run-dir", str(run_dir), "--target", "5",
                   env={"SSL_CERT_FILE": str(ca_file)}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"SSL_CERT_FILE={ca_file}: no CA certificates could be read from it" in proc.stderr
    assert "unset it" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.mark.timeout(40)  # the connect wait is bounded by the shorter --timeout (0.5 s)
def test_a_connect_wait_cut_by_the_request_timeout_names_that_timeout():
    """With --timeout shorter than --connect-timeout, the request timeout ends the wait for a
    connection: the message names the one that fired."""
    hole = _RawServer("blackhole")
    try:
        with pytest.raises(RequestFailed) as failed:
            ask_once(f"http://127.0.0.1:{hole.port}/v1", max_retries=0, request_timeout=0.5,
                     connect_timeout=30.0)
    finally:
        hole.close()
    assert failed.value.kind == "timeout"
    assert "within 0.5s (--timeout; the host does not answer)" in str(failed.value)


def test_plain_http_to_a_tls_server_hints_at_https():
    """A server started with a certificate (uvicorn: vLLM, SGLang) ends a plain-HTTP connection
    without a word; the retried failure says what that may mean."""
    import trustme

    retries: list[str] = []
    with _tls_server(trustme.CA()) as server:
        url = server.base_url.replace("https://", "http://")
        with pytest.raises(RequestFailed) as failed:
            ask_once(url, retries, max_retries=1, backoff_base=0.01, backoff_max=0.02)
    assert failed.value.kind == "connection" and retries == ["connection"]
    assert "closed before an answer (a server that expects HTTPS does this: then use " \
        "https://)" in str(failed.value)


def test_a_plain_http_server_going_away_mid_request_is_not_called_a_tls_server():
    """The HTTPS hint is for an endpoint that never answered: one that answered and then
    closed the connection under a request (a restart, a crash) was told "a server that expects
    HTTPS does this" (fresh-user pass)."""
    server = FakeOpenAI().start()

    async def go() -> str:
        client = LLMClient(ClientSettings(base_url=server.base_url, model="m", max_retries=0))
        request = P.generation_completion(["Name a color."] * 8)
        try:
            await client.request(request, SamplingParams(max_tokens=8))  # it answers
            server.configure(latency=5.0)
            pending = asyncio.ensure_future(client.request(request, SamplingParams(max_tokens=8)))
            await asyncio.sleep(0.5)  # sent, and waiting for its answer
            await asyncio.to_thread(server.close)  # the connection closes under the request
            with pytest.raises(RequestFailed) as failed:
                await pending
            return str(failed.value)
        finally:
            await client.close()

    try:
        message = asyncio.run(go())
    finally:
        server.close()
    assert "closed before an answer" in message, message
    assert "HTTPS" not in message, message


def test_the_round_line_keeps_unanswered_candidates_apart_from_rejected_ones():
    """Candidates whose request got no answer stay open and are taken up again; the round
    line counted them as "rejected 21: unanswered 15, ...", read as paid work lost
    (fresh-user pass). They are now "kept open", and the line still adds up."""
    from selfinstruct_tui.engine.store import RoundStats
    from selfinstruct_tui.headless import round_line

    s = RoundStats(round=4, started=0.0, prompts=3, candidates=30, accepted=9, surplus=2,
                   rejected={"near_duplicate": 4, "unanswered": 12, "abandoned": 3})
    line = round_line(s, 9, 100, priced=False)
    assert "(rejected 4: near duplicate 4; kept open 15: unanswered 12, abandoned 3 (taken up " \
        "again); surplus 2)" in line, line
    clean = RoundStats(round=5, started=0.0, prompts=3, candidates=10, accepted=9, rejected={"too_short": 1})
    assert "(rejected 1: too short 1; surplus 0)" in round_line(clean, 18, 100, priced=False)


def test_headless_prints_every_takeout_past_the_cap_on_request_errors():
    """Only the first 5 request errors are printed; a pool's takeouts counted among them, so
    an endpoint was printed coming "back in the pool" without ever being shown going out."""
    import io

    from rich.console import Console

    from selfinstruct_tui.engine import events as ev
    from selfinstruct_tui.headless import HeadlessPrinter

    out = io.StringIO()
    printer = HeadlessPrinter(Console(file=out, width=300), pool=True)
    for n in range(8):
        printer(ev.RequestError(1, "server_error", f"HTTP 500: boom {n}", "http://a/v1"))
    printer(ev.RequestError(None, "endpoint_taken_out", "http://a/v1 taken out of the pool "
                                                        "(3 failures in a row)", "http://a/v1"))
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("request error") for line in lines) == 5
    assert lines[-1] == ("endpoint change (endpoint_taken_out): http://a/v1 taken out of the "
                         "pool (3 failures in a row)")


LLAMA_SERVER_EMBEDDINGS = {"status": 501, "body": {"error": {
    "code": 501, "message": "This server does not support completions. Start it without "
                            "`--embeddings`", "type": "not_supported_error"}}}


@pytest.mark.parametrize("entry, words", [
    # vLLM: a sampling value outside its range; was a bad request for each candidate (its paid
    # generation settled as request_failed) until a pause "the endpoint is up but keeps failing"
    ({"status": 400, "body": {"object": "error", "message": "presence_penalty must be in [-2, "
                                                            "2], got 2.5.",
                              "type": "BadRequestError", "param": None, "code": 400}},
     "change presence_penalty (generation) and instance_presence_penalty (instances) in the "
     "config file"),
    # OpenAI's wording of the same
    ({"status": 400, "body": {"error": {"message": "2.5 is greater than the maximum of 2 - "
                                                   "'frequency_penalty'",
                                        "type": "invalid_request_error", "param": None,
                                        "code": None}}},
     "change frequency_penalty in the config file"),
    # LiteLLM's proxy: a model it does not route (400); was a bad request, every one
    ({"status": 400, "body": {"error": {
        "message": "{'error': '/completions: Invalid model name passed in model=m. Call "
                   "`/v1/models` to view available models for your key.'}",
        "type": "None", "param": "None", "code": "400"}}},
     "does not serve the model"),
    # LiteLLM's proxy: the key's budget spent (429, "code": "429"); was a rate limit, retried
    ({"status": 429, "body": {"error": {
        "message": "Budget has been exceeded! Key=team-a (sk-...abcd) Current cost: 2.0, Max "
                   "budget: 1.0", "type": "budget_exceeded", "param": None, "code": "429"}}},
     "quota is exhausted"),
    # ... as older versions answer it (400)
    ({"status": 400, "body": {"error": {
        "message": "Budget has been exceeded! Current cost: 10.2, Max budget: 10.0",
        "type": "budget_exceeded", "param": None, "code": "400"}}},
     "quota is exhausted"),
    # llama-server started with --embeddings (501, to both APIs): was retried as a server
    # error, then "check that URL is up"; with --api completions, "use --api chat" (which
    # fails alike)
    (LLAMA_SERVER_EMBEDDINGS, "Start it without `--embeddings`): do what its message says"),
    # SGLang: a prompt that cannot fit; was sent 5 times with max_tokens halved each time
    ({"status": 400, "body": {"object": "error", "message": "The input (5000 tokens) is longer "
                              "than the model's context length (4096 tokens).",
                              "type": "BadRequestError", "param": None, "code": 400}},
     "the prompt is 5000 tokens and the model's context window is 4096 tokens"),
])
def test_real_servers_refusals_stop_at_the_first_answer_naming_the_fix(run_cli, tmp_path,
                                                                      isolated_env, entry,
                                                                      words):
    Path(isolated_env["SELFINSTRUCT_CONFIG"]).write_text("error_pause_seconds = 0.2\n")
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [entry]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1", "--max-retries", "1")
        sent = len(server.log)
    assert proc.returncode == 3, proc.stderr
    assert words in proc.stderr, proc.stderr
    assert "use --api chat" not in proc.stderr and "is up" not in proc.stderr
    assert sent == 1  # stopped at the first answer, nothing retried or asked again
    assert store_rows(run_dir, "SELECT COUNT(*) FROM retries")[0][0] == 0
    assert any(words.split(" (")[0] in m for (m,) in store_rows(run_dir,
                                                                "SELECT message FROM errors"))


def test_a_max_tokens_above_the_models_output_limit_is_lowered_once_for_every_request(
        tmp_path):
    """OpenAI's "max_tokens is too large: 1024. This model supports at most 512 completion
    tokens": was a bad request, the generation lost and every later one refused alike."""
    from test_real_answers import assert_accounted, run_engine

    too_large = {"status": 400, "body": {"error": {
        "message": "max_tokens is too large: 1024. This model supports at most 512 completion "
                   "tokens, whereas you provided 1024.", "type": "invalid_request_error",
        "param": "max_tokens", "code": None}}}
    with FakeOpenAI(script={"generate": [too_large]}, repeat_last=False) as server:
        run_dir, finished, events = run_engine(tmp_path, server, 5)
        asked = [body["max_tokens"] for _, kind, body in server.log]
    assert finished.reason == "target"
    assert asked[0] == 1024 and all(n <= 512 for n in asked[1:]), asked
    assert server.statuses.count(400) == 1
    [retry] = store_rows(run_dir, "SELECT cause, message FROM retries")
    assert retry == ("max_tokens", "max_tokens lowered from 1024 to 512: the model writes at "
                                   "most 512 tokens an answer")
    assert any("writes at most 512 tokens" in getattr(e, "message", "") for e in events)
    assert store_rows(run_dir, "SELECT COUNT(*) FROM errors")[0][0] == 0
    assert_accounted(run_dir)


LOADING = {"status": 503, "body": {"error": {"code": 503, "message": "Loading model",
                                             "type": "unavailable_error"}}}
OLLAMA_BUSY = {"status": 503, "body": {"error": {
    "message": "server busy, please try again.  maximum pending requests exceeded",
    "type": "api_error", "param": None, "code": None}}}
QUEUE_FULL = {"status": 503, "body": {"object": "error", "message": "The request queue is full.",
                                      "type": "ServiceUnavailableError", "code": 503}}


@pytest.mark.parametrize("entry, cause, advice", [
    # llama-server while it loads the model
    (LOADING, "loading", "is up but still loading the model: resume once it answers (to wait "
                         "longer before a pause, raise error_pause_seconds, now 0.2s)"),
    (OLLAMA_BUSY, "overloaded", "is up but overloaded (its queue is full): lower --concurrency"),
    (QUEUE_FULL, "overloaded", "is up but overloaded (its queue is full): lower --concurrency"),
])
def test_a_server_loading_or_overloaded_is_named_and_not_told_to_check_it_is_up(
        run_cli, tmp_path, isolated_env, entry, cause, advice):
    """Each was a server error, retried request by request, and the pause said "Check that
    URL is up" of a server that was up and said why it could not answer yet."""
    Path(isolated_env["SELFINSTRUCT_CONFIG"]).write_text("error_pause_seconds = 0.2\n")
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [entry]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1", "--max-retries", "1")
    assert proc.returncode == 3, proc.stderr
    assert advice in proc.stderr, proc.stderr
    assert "Check that" not in proc.stderr
    causes = {c for (c,) in store_rows(run_dir, "SELECT cause FROM retries")}
    assert causes == {cause}
    kinds = {k for (k,) in store_rows(run_dir, "SELECT kind FROM errors")}
    assert kinds == {cause}


def test_a_loading_server_pauses_every_request_once_then_they_are_answered():
    """Retried as one shared pause (as a rate limit), under its own cause."""
    retries: list[str] = []
    with FakeOpenAI(script={"*": [LOADING, LOADING]}, repeat_last=False) as server:
        ask_once(server.base_url, retries, backoff_base=0.01, backoff_max=0.02)
    assert retries == ["loading", "loading"]


@pytest.mark.parametrize("message, wait", [
    # LiteLLM's router, every deployment cooling down
    ("No deployments available for selected model, Try again in 0.3 seconds. Passed model=m. "
     "pre-call-checks=False", 0.3),
    # OpenAI's per-minute limits (Go durations)
    ("Rate limit reached for m in organization org-x on tokens per min (TPM): Limit 10000, Used "
     "9990, Requested 40. Please try again in 250ms. Visit https://platform.openai.com/account/"
     "rate-limits to learn more.", 0.25),
])
def test_a_rate_limit_that_says_when_to_try_again_only_in_words_waits_that_long(message, wait):
    """Without a Retry-After header the wait was the backoff's (10 ms here): the retries came
    back inside the limit the endpoint named."""
    limited = {"status": 429, "body": {"error": {"message": message, "type": "rate_limit_error",
                                                 "code": "rate_limit_exceeded"}}}
    with FakeOpenAI(script={"*": [limited]}, repeat_last=False) as server:
        delays = retry_delays(server, backoff_base=0.01, backoff_max=0.02)
    assert delays == [wait]


def _ollama_error(message: str) -> dict:
    """Ollama's OpenAI API error body (openai.NewError) for a 400 of its server."""
    return {"status": 400, "body": {"error": {"message": message, "type": "invalid_request_error",
                                              "param": None, "code": None}}}


@pytest.mark.parametrize("api, entry", [
    # Ollama's /v1/completions with an embedding-only model: was "rejects a request parameter"
    ("completions", _ollama_error('"nomic-embed-text" does not support generate')),
    # ... and /v1/chat/completions: was "use --api completions" (which fails the same way)
    ("chat", _ollama_error('"nomic-embed-text" does not support chat')),
    # its capability check's own wording (handleScheduleError)
    ("completions", _ollama_error("does not support completion")),
])
def test_a_model_that_does_not_generate_text_is_named_so(run_cli, tmp_path, api, entry):
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [entry]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1", api=api)
        sent = len(server.log)
    assert proc.returncode == 3, proc.stderr
    assert "this model does not generate text" in proc.stderr, proc.stderr
    assert "choose a generating model with --model" in proc.stderr
    assert "parameter" not in proc.stderr and "use --api" not in proc.stderr
    assert sent == 1
    assert store_rows(run_dir, "SELECT kind FROM errors") == [("not_found",)]


SEED_REFUSALS = [
    # OpenAI's reasoning models: was "check --api and --model" naming --random-seed, whose every
    # value is sent as a seed
    {"status": 400, "body": {"error": {
        "message": "Unsupported parameter: 'seed' is not supported with this model.",
        "type": "invalid_request_error", "param": "seed", "code": "unsupported_parameter"}}},
    # a plain refusal: was "change random_seed in the config file to a value it takes"
    {"status": 400, "body": {"error": {"message": "seed is not supported",
                                       "type": "invalid_request_error"}}},
]


@pytest.mark.parametrize("entry", SEED_REFUSALS)
def test_an_endpoint_that_refuses_seed_is_told_how_to_send_none_and_resumes_so(
        run_cli, tmp_path, entry):
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"generate": [entry]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1")
        assert proc.returncode == 3, proc.stderr
        assert "Run with --no-request-seed (or request_seed = false in the config file" \
            in proc.stderr, proc.stderr
        assert "--random-seed" not in proc.stderr.split("resume it with:")[0]
        resume = proc.stderr.split("resume it with: ", 1)[1].strip()
        assert resume.endswith(" --no-request-seed"), resume
        server.configure(script={})  # (the command leaves the seed out: the server answers)
        server.log.clear()
        args = shlex.split(resume)
        again = run_cli(*args[args.index("run"):], timeout=120)
        sent = [body for _, kind, body in server.log if kind == "generate"]
    assert again.returncode == 0, again.stderr
    assert sent and all("seed" not in body for body in sent)


def test_request_seed_false_sends_no_seed_and_keeps_the_examples_sampling(tmp_path):
    from test_real_answers import run_engine

    with FakeOpenAI() as server:
        run_engine(tmp_path / "a", server, 3)
        seeded = [body for _, kind, body in server.log if kind == "generate"]
        server.log.clear()
        run_engine(tmp_path / "b", server, 3, request_seed=False)
        unseeded = [body for _, kind, body in server.log if kind == "generate"]
    assert all("seed" in body for body in seeded)
    assert all("seed" not in body for body in unseeded)
    # the same random_seed samples the same examples for the first prompt
    assert unseeded[0]["prompt"] == seeded[0]["prompt"]


def _openrouter_choice_error(code: int, message: str) -> dict:
    """OpenRouter's 200 answer when the provider failed mid-answer (its docs' "Error Handling":
    the choice carries `error` and finish_reason "error")."""
    return {"status": 200, "body": {
        "id": "gen-1", "provider": "Chutes", "model": "m", "object": "chat.completion",
        "created": 1735000000,
        "choices": [{"logprobs": None, "finish_reason": "error", "native_finish_reason": "error",
                     "index": 0, "message": {"role": "assistant", "content": "",
                                             "refusal": None, "reasoning": None},
                     "error": {"code": code, "message": message,
                               "metadata": {"provider_name": "Chutes"}}}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 7, "total_tokens": 307}}}


def test_an_error_in_the_answers_choice_is_the_providers_error_retried_and_counted(tmp_path):
    """Was read as an empty answer: the generation request settled with no candidates, its
    paid tokens counted as an answer's, and a provider's rate limit never slowed anything."""
    from test_real_answers import run_engine

    entries = [_openrouter_choice_error(502, "Provider returned error"),
               _openrouter_choice_error(429, "Rate limit exceeded: upstream")]
    with FakeOpenAI(script={"generate": entries}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 5, api="chat")
    assert finished.reason == "target"
    retries = store_rows(run_dir, "SELECT cause, message FROM retries ORDER BY id")
    assert [cause for cause, _ in retries] == ["server_error", "rate_limit"]
    assert "Provider returned error" in retries[0][1]
    assert "the provider's error (code 502) in the answer's choices[0].error" in retries[0][1]
    assert "(code 429)" in retries[1][1]
    # the failed answers' usage is paid: counted on the request that was answered in the end
    [(tokens,)] = store_rows(run_dir, "SELECT prompt_tokens FROM prompts WHERE kind = "
                                      "'generate' ORDER BY id LIMIT 1")
    assert tokens > 600
    assert_accounted(run_dir)


def test_a_choice_error_that_keeps_failing_is_a_request_failure_named_for_it(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    entry = _openrouter_choice_error(502, "Provider returned error")
    with FakeOpenAI(script={"generate": [entry]}) as server:
        proc = run(run_cli, server, run_dir, "--concurrency", "1", "--max-retries", "0",
                   api="chat")
    assert proc.returncode == 3, proc.stderr
    errors = store_rows(run_dir, "SELECT kind, message FROM errors")
    assert errors and all(kind == "server_error" and "Provider returned error" in message
                          and "choices[0].error" in message for kind, message in errors)
    # no answer was recorded: every generation request failed, named for it
    assert store_rows(run_dir, "SELECT COUNT(*) FROM prompts WHERE kind = 'generate' AND "
                               "response IS NOT NULL")[0][0] == 0


def _ollama_completion(text: str, prompt_tokens: int) -> dict:
    """Ollama's /v1/completions answer (openai.ToCompletion), `prompt_tokens` as its usage
    counts them: of the prompt it read, after cutting one longer than num_ctx."""
    return {"status": 200, "body": {
        "id": "cmpl-417", "object": "text_completion", "created": 1735000000, "model": "m",
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": text, "index": 0, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 40,
                  "total_tokens": prompt_tokens + 40}}}


def test_a_prompt_the_endpoint_cut_to_fit_its_context_is_said_once_and_counted(run_cli,
                                                                              tmp_path):
    """Ollama cuts a prompt over num_ctx (2048 in older versions) to num_ctx - (num_ctx -
    num_keep) / 2 tokens, 1027 here, and answers 200: the model answered a prompt it never saw
    whole, and nothing said so."""
    import random

    from fake_openai import ADJS, NOUNS

    rng = random.Random(7)
    seeds = tmp_path / "long_seeds.jsonl"
    seeds.write_text("".join(json.dumps({
        "id": f"s{i}", "name": f"s{i}", "is_classification": False,
        "instruction": f"Summarize {i} " + " ".join(rng.choice(ADJS + NOUNS) for _ in range(110))
        + ".", "instances": [{"input": "", "output": "A summary."}]}) + "\n" for i in range(20)))
    cut = [_ollama_completion(" Write a short poem about a quiet river in early spring.\n"
                              "10. List four ways a family can save money on weekly groceries.",
                              1027),
           _ollama_completion(" Explain how a bicycle gear works to a curious child.\n"
                              "10. Describe the main duties of a harbor pilot on a busy day.",
                              1027)]
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"generate": cut}, repeat_last=False) as server:
        proc = run(run_cli, server, run_dir, "--seeds", str(seeds), "--concurrency", "1",
                   "--prompts-per-round", "2")
        prompts = [body["prompt"] for _, kind, body in server.log if kind == "generate"]
    assert proc.returncode == 0, proc.stderr
    assert len(prompts[0]) > 1027 * 6  # (the prompt was long enough to be cut)
    notes = [ln for ln in proc.stdout.splitlines() if "it cut the prompt" in ln]
    assert len(notes) == 1, proc.stdout  # said once
    assert f"read a prompt of {len(prompts[0]):,} characters as 1,027 tokens" in notes[0]
    assert "OLLAMA_CONTEXT_LENGTH=8192" in notes[0] and "PARAMETER num_ctx 8192" in notes[0]
    assert "2 prompts cut by the endpoint to fit its context" in proc.stdout, proc.stdout
    assert store_rows(run_dir, "SELECT SUM(prompts_cut) FROM rounds")[0][0] == 2
    # kept: the answers are the round's, their instructions judged as any other
    instructions = {i for (i,) in store_rows(run_dir, "SELECT instruction FROM tasks")}
    assert "Write a short poem about a quiet river in early spring." in instructions
    assert_accounted(run_dir)


@pytest.mark.parametrize("chars, tokens, cut", [
    (8000, 8000 // 4, False),  # English at 4 characters a token: whole
    (8000, 8000 // 5, False),  # a large vocabulary's best on English: whole
    (8000, 1027, True),  # Ollama's cut at num_ctx 2048
    (8400, 2051, False),  # at num_ctx 4096, a prompt of 2,100 tokens read whole
    (3000, 100, False),  # short prompts are not judged (a cache-counted usage)
])
def test_a_cut_prompt_is_told_by_its_characters_a_token(chars, tokens, cut):
    from selfinstruct_tui.engine.llm import prompt_was_cut

    assert prompt_was_cut(chars, tokens) is cut
