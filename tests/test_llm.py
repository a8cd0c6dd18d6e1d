"""The LLM client against the fake server: retries, Retry-After, timeouts, context shrinking."""

from __future__ import annotations

import asyncio

import pytest

from fake_openai import FakeOpenAI
from selfinstruct_tui.engine import prompts as P
from selfinstruct_tui.engine.llm import ClientSettings, LLMClient, RequestFailed, SamplingParams
from selfinstruct_tui.engine.parsing import parse_instruction_list

REQ = P.generation_completion([f"Explain topic number {i} briefly." for i in range(8)])


def ask(server: FakeOpenAI, params: SamplingParams | None = None, request=REQ, **settings):
    async def go():
        client = LLMClient(ClientSettings(base_url=server.base_url, model="m", backoff_base=0.05,
                                          **settings))
        try:
            return await client.request(request, params or SamplingParams(max_tokens=256))
        finally:
            await client.close()

    return asyncio.run(go())


def test_completion_and_chat_round_trip():
    with FakeOpenAI() as server:
        resp = ask(server)
        assert len(parse_instruction_list(resp.text, first_number=9).items) >= 4
        assert resp.finish_reason == "stop" and resp.completion_tokens > 0
        chat = ask(server, request=P.generation_chat(["Explain tides."] * 8, 7))
        assert parse_instruction_list(chat.text).items


def test_retries_429_and_honours_retry_after():
    with FakeOpenAI(fail_first=2, error_status=429, retry_after=0.2) as server:
        resp = ask(server, max_retries=3)
        assert resp.attempts == 3
        assert server.requests == 3


def test_500_is_retried_then_reported():
    with FakeOpenAI(error_rate=1.0, error_status=500) as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, max_retries=2)
        assert info.value.kind == "server_error" and info.value.status == 500
        assert server.requests == 3


def test_timeout_is_retried_then_reported():
    with FakeOpenAI(hang_rate=1.0, hang_seconds=3) as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, max_retries=1, request_timeout=0.3)
        assert info.value.kind == "timeout"
        assert "0.3s" in str(info.value)


def test_malformed_body_is_retried():
    with FakeOpenAI(malformed_rate=1.0) as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, max_retries=1)
        assert info.value.kind == "malformed"
    with FakeOpenAI(fail_first=1, error_status=502) as server:
        assert ask(server, max_retries=2).attempts == 2


def test_context_too_long_shrinks_max_tokens():
    with FakeOpenAI(context_limit=300) as server:
        resp = ask(server, SamplingParams(max_tokens=1024))
        assert resp.max_tokens <= 300
        assert server.max_tokens_seen[0] == 1024 and server.max_tokens_seen[-1] <= 300


def test_bad_key_is_fatal_and_names_the_setting():
    with FakeOpenAI(api_key="sk-right") as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, api_key="sk-wrong")
        assert info.value.fatal and "OPENAI_API_KEY" in str(info.value)
        assert "sk-wrong" not in str(info.value)
        assert server.requests == 0  # refused before counting: no retries on a bad key


def test_no_key_sent_is_named_as_such_not_as_a_refused_key():
    with FakeOpenAI(api_key="sk-right") as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, key_env="MY_KEY")
        assert info.value.fatal and info.value.kind == "auth"
        assert "wants an API key and none was sent" in str(info.value)
        assert "MY_KEY is not set" in str(info.value)


def test_unsupported_parameter_is_fatal_and_explained():
    with FakeOpenAI(reject_param="presence_penalty") as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, max_retries=3)
        assert info.value.fatal and "--api" in str(info.value)
        assert server.requests == 0  # not retried


@pytest.mark.parametrize("extra, message, named", [
    ({"top_k": 20}, "Unrecognized request argument supplied: top_k", "top_k"),
    ({"user": "x"}, "Unrecognized request argument supplied: user", "user"),
    ({"store": 1, "user": "x"}, "Unrecognized request arguments supplied: store, user", "store"),
    ({"metadata": {}}, "body.metadata: Extra inputs are not permitted", "metadata"),
    ({"metadata": {}}, "[{'loc': ('body', 'metadata'), 'msg': 'Extra inputs'}]", "metadata"),
    ({"chat_template_kwargs": {"enable_reasoning": False}},
     "chat_template_kwargs: enable_reasoning is not a known template variable",
     "chat_template_kwargs.enable_reasoning"),
    ({"input": "x", "top_k": 5}, "[{'type': 'extra_forbidden', 'loc': ('body', 'top_k'), "
     "'msg': 'Extra inputs are not permitted', 'input': 5}]", "top_k"),  # vLLM's, as printed
    ({"max": 1, "min_p": 0.1}, "min_p must be in [0, 1], got max value", "min_p"),
    # prose that happens to hold a field's name is not about that field
    ({"input": 1}, "Invalid input: prompt must be a string", None),
    ({"user": "x"}, "The user message must not be empty", None),
    ({"input": 1}, "input must not be empty", None),
    ({"model_tag": 1}, "The model m does not exist", None),
    ({"top_k": 20}, "max_tokens must be at least 1", None),
])
def test_a_refusal_blames_an_extra_body_field_only_where_it_names_it(extra, message, named):
    """A 400 naming a field of --extra-body is that field's (named, take it out; fatal); any
    other 400 is the request's own and does not mention --extra-body."""
    from selfinstruct_tui.engine.llm import Cause

    with FakeOpenAI(script={"*": [{"status": 400, "body": {"error": {"message": message}}}]}
                    ) as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, extra_body=extra, max_retries=3)
        sent = len(server.log)
    if named:
        assert info.value.kind == Cause.UNSUPPORTED_PARAMETER and info.value.fatal
        assert f"refuses the field {named!r} of --extra-body" in str(info.value)
    else:
        # (a 400 saying the model does not exist is a not_found, fatal: still not the field's)
        assert info.value.kind in (Cause.BAD_REQUEST, Cause.NOT_FOUND)
        assert "--extra-body" not in str(info.value)
    assert sent == 1  # neither is retried


@pytest.mark.parametrize("message", [
    # a model-level validation error printing the whole body (vLLM/pydantic's 'input')
    "[{'type': 'value_error', 'loc': ('body',), 'msg': 'Value error, Either prompt or "
    "prompt_embeds must be provided', 'input': {'model': 'm', 'top_p': 1.0, "
    "'presence_penalty': 0.0, 'frequency_penalty': 0.0, 'temperature': 0.7}}]",
    # a proxy's error that lists the call's arguments
    "BadRequestError: content filtered. Received kwargs={'temperature': 0.7, 'top_p': 1.0, "
    "'seed': 3}",
    # ... with the prompt, whose model-written tasks say what a refusal of the run would
    *(f"BadRequestError: content filtered. Received kwargs={{'prompt': 'Come up with a series "
      f"of tasks: Task 1: {task} Task 2: ...', 'temperature': 0.7, 'top_p': 1.0}}" for task in (
          "Explain why the temperature must stay below 100 C when brewing green tea.",
          "Write an email to the billing department asking about a refund.",
          "Reply Not found if the model m is not found in the catalog.",
          "Explain why the old phone does not support generation of QR codes.",
          "Explain why Python does not support tail calls.",
          "Explain what a random seed value is.")),
    "Invalid prompt: your prompt was flagged. Prompt: 'Why does the model m not exist yet?'",
    # a model that is there, only busy (not "does not serve the model")
    "The model `m` is not available right now, please try again later",
])
def test_a_refusal_that_only_echoes_the_request_is_the_requests_own(message):
    """Only a 400 whose own words say a sampling value, the model, the quota or a parameter is
    refused stops the run; one about something else that prints the request (its fields, its
    prompt's model-written tasks) is that request's own failure, not fatal."""
    from selfinstruct_tui.engine.llm import Cause

    with FakeOpenAI(script={"*": [{"status": 400, "body": {"error": {"message": message}}}]}
                    ) as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, max_retries=3)
    assert info.value.kind == Cause.BAD_REQUEST and not info.value.fatal, info.value
    assert "config file" not in str(info.value)


def test_a_refused_parameter_that_names_no_field_still_mentions_the_extra_body_fields():
    """'Extra inputs are not permitted' without the field's name: the advice about --api and
    --model now also names the --extra-body fields, the likeliest cause."""
    message = {"status": 400, "body": {"error": {"message": "Extra inputs are not permitted"}}}
    with FakeOpenAI(script={"*": [message]}) as server:
        with pytest.raises(RequestFailed) as info:
            ask(server, extra_body={"foo": 1, "bar": {"x": 2}})
        with pytest.raises(RequestFailed) as plain:
            ask(server)
    assert info.value.fatal and str(info.value).endswith(
        "; or a field of --extra-body (bar, foo): take it out")
    assert "--extra-body" not in str(plain.value)


def test_pause_holds_new_requests():
    async def go():
        with FakeOpenAI() as server:
            client = LLMClient(ClientSettings(base_url=server.base_url, model="m"))
            client.pause()
            task = asyncio.create_task(client.request(REQ, SamplingParams(max_tokens=64)))
            await asyncio.sleep(0.3)
            sent_while_paused = server.requests
            client.resume()
            await task
            await client.close()
            return sent_while_paused, server.requests

    paused, after = asyncio.run(go())
    assert paused == 0 and after == 1


def test_each_request_kind_goes_to_its_own_process(tmp_path):
    """The embedded model's processes, one per prompt family: each sees only its kind, so it
    keeps that kind's few-shot prefix evaluated."""
    from selfinstruct_tui.engine.engine import Engine
    from tui_helpers import new_run

    with FakeOpenAI() as gen, FakeOpenAI() as cls, FakeOpenAI() as inst:
        store, config = new_run(tmp_path / "run", gen.base_url, target=10)
        routes = {"generate": gen.base_url, "classify": cls.base_url,
                  "instances": inst.base_url}
        finished = Engine(store, config, routes=routes).run()
        store.close()
        seen = {name: set(server.kinds()) for name, server in
                (("generate", gen), ("classify", cls), ("instances", inst))}
    assert finished.reason == "target"
    assert seen == {"generate": {"generate"}, "classify": {"classify"},
                    "instances": {"instances"}}


def _most_in_any(times: list[float], seconds: float) -> int:
    """The most of `times` (sorted) inside any window of `seconds`."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.mark.parametrize("limit", [{"requests_per_minute": 1200},
                                   {"tokens_per_minute": 1200 * 400}])
def test_a_per_minute_limit_paces_requests_evenly_not_in_bursts(limit):
    """--rpm 1200 is one request every 50 ms, whatever the concurrency: a sliding minute window
    let the first 1,200 leave at once (8 at a time here, as slots freed), which a provider that
    enforces its per-minute limit per second answers with 429s. --tpm alike, a request's
    estimated tokens (prompt + max_tokens, ~400 here) holding the next one back."""
    request = P.generation_completion(["Explain tides."] * 8)
    params = SamplingParams(max_tokens=400 - len(request.prompt) // 4 - 1)

    async def go() -> None:
        client = LLMClient(ClientSettings(base_url=server.base_url, model="m", concurrency=8,
                                          **limit))
        try:
            await asyncio.gather(*(client.request(request, params) for _ in range(24)))
        finally:
            await client.close()

    with FakeOpenAI(latency=0.2) as server:
        asyncio.run(go())
        times = sorted(t for t, _, _ in server.log)
    assert len(times) == 24
    # 50 ms apart: at most 11 in any 0.5 s (+1 for scheduling jitter); in bursts of 8 as
    # answers free slots every 0.2 s it was 24
    assert _most_in_any(times, 0.5) <= 12, [round(t - times[0], 3) for t in times]


@pytest.mark.parametrize("limit", [{"tokens_per_minute": 100}, {"requests_per_minute": 0.5}])
def test_a_stop_or_a_pause_holds_requests_waiting_their_turn(limit):
    """--tpm 100: a request's turn came minutes after the one before, and a stop neither ended
    the wait nor kept it from going out then (paid 15 minutes after Ctrl-C); a pause alike."""
    from selfinstruct_tui.engine.llm import RequestAbandoned

    params = SamplingParams(max_tokens=64)

    async def go(server):
        client = LLMClient(ClientSettings(base_url=server.base_url, model="m", concurrency=4,
                                          **limit))
        first = await client.request(REQ, params)  # goes at once; the next one waits its turn
        waiting = asyncio.create_task(client.request(REQ, params))
        await asyncio.sleep(0.3)
        client.pause()
        client.abandon_pending(grace=0)  # the stop
        with pytest.raises(RequestAbandoned) as info:
            await asyncio.wait_for(waiting, 5)  # at once, not at its turn
        await client.close()
        return first, info.value

    with FakeOpenAI() as server:
        first, abandoned = asyncio.run(go(server))
        sent = server.requests
    assert first.text and sent == 1
    assert abandoned.when == "waiting its turn under the rate limit" and abandoned.attempts == 0


def test_a_request_whose_turn_comes_during_a_pause_waits_for_the_resume():
    params = SamplingParams(max_tokens=64)

    async def go(server):
        client = LLMClient(ClientSettings(base_url=server.base_url, model="m",
                                          requests_per_minute=60))  # a turn a second
        await client.request(REQ, params)
        waiting = asyncio.create_task(client.request(REQ, params))
        await asyncio.sleep(0.3)
        client.pause()
        await asyncio.sleep(1.5)  # its turn came and went, paused
        during = server.requests
        client.resume()
        await asyncio.wait_for(waiting, 10)
        await client.close()
        return during

    with FakeOpenAI() as server:
        during = asyncio.run(go(server))
        assert (during, server.requests) == (1, 2)
