"""A pool of endpoints: several loopback servers speaking the OpenAI wire format, the real engine
(or the CLI in a subprocess), and the store checked afterwards: who answered what, which endpoint
was taken out, dropped or probed back, and why."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import cli_command
from fake_openai import FakeOpenAI
from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.config import (
    ConfigError,
    FileSettings,
    RunConfig,
    build_config,
    file_ignored_on_resume,
    load_user_config,
    merge_for_resume,
    runs_root,
    user_config_path,
)
from selfinstruct_tui.engine.engine import Engine
from test_run_e2e import wait_for
from tui_helpers import new_run


def rows(run_dir: Path, sql: str, *args: object) -> list[tuple]:
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def answered_by(run_dir: Path) -> dict[str, int]:
    return dict(rows(run_dir, "SELECT endpoint, COUNT(*) FROM prompts WHERE response IS NOT "
                              "NULL GROUP BY endpoint"))


def pool_engine(run_dir: Path, servers: list[FakeOpenAI], target: int,
                concurrency: list[int] | None = None, **cfg) -> tuple[Engine, list]:
    endpoints = [{"base_url": s.base_url, **({"concurrency": c} if concurrency else {})}
                 for s, c in zip(servers, concurrency or [0] * len(servers), strict=True)]
    store, config = new_run(run_dir, servers[0].base_url, target=target, endpoints=endpoints,
                            **{"concurrency": 2, **cfg})
    engine = Engine(store, config)
    events: list = []
    engine.bus.subscribe(events.append)
    return engine, events


def until_paused(engine: Engine, events: list, timeout: float = 60) -> ev.Paused:
    """Run `engine` (a thread) until it pauses, then stop it and close its store; returns the
    pause."""
    thread = engine.start_thread()
    try:
        wait_for(lambda: any(isinstance(e, ev.Paused) for e in events), timeout=timeout)
    finally:
        engine.stop_now()
        thread.join(60)
        engine.store.close()
    return next(e for e in events if isinstance(e, ev.Paused))


def test_requests_go_to_the_endpoint_with_the_fewest_outstanding(tmp_path):
    with FakeOpenAI(latency=0.0) as fast, FakeOpenAI(latency=0.4) as slow:
        engine, events = pool_engine(tmp_path / "run", [slow, fast], 12, prompts_per_round=4)
        finished = engine.run()
        engine.store.close()
    assert finished.reason is ev.FinishReason.TARGET
    counts = answered_by(tmp_path / "run")
    # Both served; the fast one, free again sooner, took more (the slow one is listed first).
    assert counts[slow.base_url] >= 1
    assert counts[fast.base_url] > counts[slow.base_url]
    # Every answer names its endpoint and model; requests per endpoint match the servers' logs.
    assert rows(tmp_path / "run", "SELECT COUNT(*) FROM prompts WHERE response IS NOT NULL "
                "AND (endpoint IS NULL OR model IS NULL)")[0][0] == 0
    assert counts[fast.base_url] == len(fast.log) and counts[slow.base_url] == len(slow.log)
    assert {m for (m,) in rows(tmp_path / "run", "SELECT DISTINCT model FROM prompts "
                                                 "WHERE response IS NOT NULL")} == {"fake-model"}
    reported = [e for e in events if isinstance(e, ev.EndpointsReported)]
    assert reported  # the figures per endpoint were published (at least at start of a change)


def test_a_bigger_concurrency_takes_a_bigger_share(tmp_path):
    with FakeOpenAI(latency=0.05) as big, FakeOpenAI(latency=0.05) as small:
        engine, _ = pool_engine(tmp_path / "run", [small, big], 10, concurrency=[1, 3],
                                prompts_per_round=4)
        assert engine.config.total_concurrency == 4
        finished = engine.run()
        engine.store.close()
    assert finished.reason is ev.FinishReason.TARGET
    counts = answered_by(tmp_path / "run")
    assert counts[big.base_url] > counts[small.base_url] >= 1


def test_an_endpoint_that_goes_away_is_taken_out_and_probed_back(tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as steady:
        flaky = FakeOpenAI(latency=0.05).start()
        port = flaky.httpd.server_address[1]
        url = flaky.base_url
        engine, events = pool_engine(run_dir, [steady, flaky], 400, prompts_per_round=4)
        thread = engine.start_thread()
        try:
            wait_for(lambda: len(flaky.log) >= 3)
            flaky.close()  # connection refused from now on
            wait_for(lambda: any(isinstance(e, ev.RequestError) and
                                 e.kind == "endpoint_taken_out" for e in events))
            served_before = len(steady.log)
            wait_for(lambda: len(steady.log) >= served_before + 3)  # the run goes on
            back = FakeOpenAI(latency=0.05, port=port).start()  # the endpoint returns
            try:
                wait_for(lambda: any(isinstance(e, ev.Notice) and "answers again" in e.message
                                     for e in events))
                wait_for(lambda: len(back.log) >= 2)
            finally:
                engine.stop()
                thread.join(60)
                back.close()
        finally:
            engine.store.close()
    out = rows(run_dir, "SELECT kind, message FROM errors WHERE kind LIKE 'endpoint_%'")
    assert out and out[0][0] == "endpoint_taken_out"
    assert url in out[0][1] and "a connection to it failed" in out[0][1]
    assert "probed again" in out[0][1]
    # Retries name their cause; the requests that hit the closed endpoint went to the other.
    causes = {c for (c,) in rows(run_dir, "SELECT cause FROM retries")}
    assert "connection" in causes
    # Answers from the endpoint after it came back are recorded under its URL.
    assert answered_by(run_dir)[url] >= len(back.log) >= 2
    assert not any(isinstance(e, ev.Paused) for e in events)


@pytest.mark.timeout(60)  # fails if the connect timeout is not applied: 3 x 120 s
def test_an_endpoint_whose_host_drops_packets_is_taken_out_after_the_connect_timeout(tmp_path):
    """A replica whose host drops packets (no refusal, no answer: connections never open) fails
    each request after the connect timeout, not the request timeout (120 s by default), so it is
    taken out after its streak and the run finishes on the other endpoint; every request sent
    to it is recorded with why it failed."""
    from test_endpoint_failures import _RawServer

    run_dir = tmp_path / "run"
    hole = _RawServer("blackhole")
    hole_url = f"http://127.0.0.1:{hole.port}/v1"
    try:
        with FakeOpenAI(latency=0.02) as steady:
            endpoints = [{"base_url": hole_url}, {"base_url": steady.base_url}]
            store, config = new_run(run_dir, hole_url, target=6, endpoints=endpoints,
                                    concurrency=2, prompts_per_round=3, connect_timeout=0.3,
                                    request_timeout=120.0)
            engine = Engine(store, config)
            finished = engine.run()
            store.close()
    finally:
        hole.close()
    assert finished.reason is ev.FinishReason.TARGET
    taken = rows(run_dir, "SELECT message FROM errors WHERE kind = 'endpoint_taken_out'")
    assert taken and hole_url in taken[0][0] and "failures in a row" in taken[0][0]
    assert "could not connect" in taken[0][0] and "within 0.3s" in taken[0][0]
    retried = rows(run_dir, "SELECT cause, message FROM retries")
    assert retried and {c for c, _ in retried} == {"timeout"}
    assert all("could not connect" in m and "0.3s" in m for _, m in retried)
    assert hole_url not in answered_by(run_dir)  # every answer came from the other endpoint


def test_an_endpoint_whose_certificate_cannot_be_verified_is_dropped(tmp_path):
    """A TLS failure is the endpoint's, for good: it is dropped at its first attempt (named,
    with the fix) and the run finishes on the other endpoint."""
    import trustme

    from test_endpoint_failures import _tls_server

    run_dir = tmp_path / "run"
    with _tls_server(trustme.CA(), latency=0.02) as private, \
            FakeOpenAI(latency=0.02) as steady:
        engine, events = pool_engine(run_dir, [private, steady], 6, prompts_per_round=3)
        finished = engine.run()
        engine.store.close()
    assert finished.reason is ev.FinishReason.TARGET
    dropped = rows(run_dir, "SELECT message FROM errors WHERE kind = 'endpoint_dropped'")
    assert len(dropped) == 1 and private.base_url in dropped[0][0]
    assert "cannot be verified" in dropped[0][0] and "SSL_CERT_FILE" in dropped[0][0]
    assert private.base_url not in answered_by(run_dir) and private.log == []
    assert rows(run_dir, "SELECT COUNT(*) FROM retries WHERE cause = 'tls'")[0][0] >= 1


@pytest.mark.parametrize("said, cause", [("Service Unavailable", "server_error"),
                                         ("overloaded", "overloaded")])
def test_a_streak_of_503_takes_an_endpoint_out_until_it_answers(tmp_path, said, cause):
    """A streak of 503s takes the endpoint out (probed back in); one that says the server is
    overloaded (its queue full: up, only busy) cools it down as a rate limit does instead, its
    requests going to the others meanwhile."""
    run_dir = tmp_path / "run"
    busy = {"status": 503, "body": {"error": {"message": said}}}
    with FakeOpenAI(latency=0.02) as steady, \
            FakeOpenAI(latency=0.02, script={"*": [busy] * 3 + ["ok"]},
                       repeat_last=False) as sick:
        engine, events = pool_engine(run_dir, [sick, steady], 8, concurrency=[1, 2],
                                     prompts_per_round=3)
        finished = engine.run()
        engine.store.close()
    assert finished.reason is ev.FinishReason.TARGET
    taken = rows(run_dir, "SELECT message FROM errors WHERE kind = 'endpoint_taken_out'")
    if cause == "server_error":
        assert taken and sick.base_url in taken[0][0] and "3 failures in a row" in taken[0][0]
    else:
        assert taken == []
    assert {c for (c,) in rows(run_dir, "SELECT cause FROM retries")} == {cause}


def test_a_refused_key_drops_that_endpoint_and_the_run_finishes_on_the_others(tmp_path):
    run_dir = tmp_path / "run"
    refused = {"status": 401, "body": {"error": {"message": "Incorrect API key provided"}}}
    with FakeOpenAI() as good, FakeOpenAI(script={"*": [refused]}) as bad:
        engine, events = pool_engine(run_dir, [bad, good], 6)
        finished = engine.run()
        engine.store.close()
    assert finished.reason is ev.FinishReason.TARGET
    dropped = rows(run_dir, "SELECT message FROM errors WHERE kind = 'endpoint_dropped'")
    assert len(dropped) == 1
    assert bad.base_url in dropped[0][0] and "wants an API key" in dropped[0][0]
    assert bad.base_url not in answered_by(run_dir)
    assert len(bad.log) <= 2  # only the requests sent before the first answer came back
    assert "auth" in {c for (c,) in rows(run_dir, "SELECT cause FROM retries")}


def test_a_refused_key_that_was_sent_is_named_as_refused_not_as_unset(tmp_path, monkeypatch):
    """A pool endpoint whose key_env holds a wrong key: the drop says the key was refused and
    names its variable; it said "none was sent ... B_KEY is not set" though the key was sent."""
    monkeypatch.setenv("B_KEY", "sk-wrongkey-abcdefgh")
    run_dir = tmp_path / "run"
    with FakeOpenAI() as good, FakeOpenAI(api_key="sk-right-key-0000") as locked:
        store, config = new_run(run_dir, good.base_url, target=6, concurrency=2,
                                endpoints=[{"base_url": good.base_url},
                                           {"base_url": locked.base_url, "key_env": "B_KEY"}])
        engine = Engine(store, config)
        finished = engine.run()
        store.close()
        assert "Bearer sk-wrongkey-abcdefgh" in locked.seen_auth  # the key was sent
    assert finished.reason is ev.FinishReason.TARGET
    dropped = [m for (m,) in rows(run_dir, "SELECT message FROM errors "
                                            "WHERE kind = 'endpoint_dropped'")]
    assert len(dropped) == 1 and locked.base_url in dropped[0]
    assert "refused the API key" in dropped[0] and "Check B_KEY" in dropped[0]
    assert "none was sent" not in dropped[0] and "not set" not in dropped[0]
    assert b"wrongkey" not in (run_dir / "run.sqlite").read_bytes()


# OpenAI's answer to a field it does not know (the field is the user's own, from --extra-body)
UNKNOWN_FIELD = {"status": 400, "body": {"error": {
    "message": "Unrecognized request argument supplied: top_k", "type": "invalid_request_error",
    "param": None, "code": None}}}


def test_an_endpoint_that_refuses_an_extra_body_field_is_dropped_and_the_others_go_on(tmp_path):
    """--extra-body '{"top_k": 20}' to a vLLM server and to an API that does not know top_k:
    that endpoint is dropped, named with the field and how to take it out, and the run
    finishes on the other; no request is retried into the same refusal."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as vllm, FakeOpenAI(script={"*": [UNKNOWN_FIELD]}) as hosted:
        engine, events = pool_engine(run_dir, [hosted, vllm], 6, extra_body={"top_k": 20})
        finished = engine.run()
        engine.store.close()
    assert finished.reason is ev.FinishReason.TARGET
    dropped = rows(run_dir, "SELECT message FROM errors WHERE kind = 'endpoint_dropped'")
    assert len(dropped) == 1 and hosted.base_url in dropped[0][0], dropped
    assert "refuses the field 'top_k' of --extra-body" in dropped[0][0]
    assert "take it out of --extra-body" in dropped[0][0]
    assert len(hosted.log) <= 2 and hosted.base_url not in answered_by(run_dir)
    assert all(body.get("top_k") == 20 for _, _, body in vllm.log)


def test_openai_base_url_replaces_the_config_files_pool_and_says_so(run_cli, tmp_path,
                                                                    isolated_env):
    """With [[endpoints]] in the config file, OPENAI_BASE_URL was ignored unsaid (the file's
    first endpoint won). The environment comes after the file: it replaces the pool, said."""
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    config.write_text('[[endpoints]]\nbase_url = "http://127.0.0.1:9/v1"\n\n'
                      '[[endpoints]]\nbase_url = "http://127.0.0.1:8/v1"\n')
    with FakeOpenAI() as server:
        proc = run_cli("run", "--headless", "--model", "m", "--run-dir", str(tmp_path / "run"),
                       "--target", "2", env={"OPENAI_BASE_URL": server.base_url})
        assert proc.returncode == 0, proc.stderr
        assert server.by_kind["generate"] >= 1
    assert (f"note: OPENAI_BASE_URL is set, so this run uses {server.base_url} instead of the "
            f"2 [[endpoints]] at {config}:1") in proc.stderr
    conn = sqlite3.connect(tmp_path / "run" / "run.sqlite")
    assert {e for (e,) in conn.execute("SELECT DISTINCT endpoint FROM prompts")} == {
        server.base_url}


def test_a_single_endpoint_that_refuses_an_extra_body_field_stops_with_the_fix(run_cli,
                                                                               tmp_path):
    """One endpoint: the run stops at the first refusal (not a streak of failed requests and
    advice about --api and --model), names the nested field once (the pause line points to the
    error above), and the resume command it prints leaves that field out (the command as
    given repeated the refusal): run, it finishes."""
    import shlex

    run_dir = tmp_path / "run"
    refusal = {"status": 400, "body": {"object": "error", "type": "BadRequestError",
                                       "message": "chat_template_kwargs: enable_reasoning is "
                                                  "not a known template variable"}}
    base = ("run", "--headless", "--model", "m", "--api", "completions", "--run-dir",
            str(run_dir), "--target", "3", "--concurrency", "1")
    extra = {"chat_template_kwargs": {"enable_reasoning": False}, "top_k": 20}
    with FakeOpenAI(script={"*": [refusal]}) as server:
        proc = run_cli(*base, "--base-url", server.base_url, "--extra-body", json.dumps(extra),
                       timeout=120)
        refused, old_url = len(server.log), server.base_url
    assert proc.returncode == 3, proc.stderr
    assert refused == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")][0]
    assert "refuses the field 'chat_template_kwargs.enable_reasoning' of --extra-body" in error
    assert "'{}' for none" in error and "--api" not in error
    assert proc.stdout.count("refuses the field") == 1
    # the failed request says where it went, as an answered one says who answered
    assert rows(run_dir, "SELECT endpoint, model FROM prompts WHERE error IS NOT NULL") == [
        (old_url, "m")]
    assert "paused by the request error above" in proc.stdout
    resume = proc.stderr.split("resume it with: ")[1].strip()
    argv = shlex.split(resume)
    assert argv[argv.index("--extra-body") + 1] == '{"top_k": 20}', resume
    with FakeOpenAI() as server:
        argv[argv.index(old_url)] = server.base_url  # the endpoint, fixed, is back elsewhere
        assert argv[:3] == cli_command()  # the program as the test started it
        run_cli(*argv[3:], check=True, timeout=120)
        assert all("chat_template_kwargs" not in body and body["top_k"] == 20
                   for _, _, body in server.log)
    assert rows(run_dir, "SELECT COUNT(*) FROM tasks WHERE origin = 'machine'")[0][0] >= 3


def test_when_every_endpoint_is_down_the_run_pauses(tmp_path):
    run_dir = tmp_path / "run"
    a, b = FakeOpenAI().start(), FakeOpenAI().start()
    a.close()
    b.close()
    engine, events = pool_engine(run_dir, [a, b], 5, max_retries=1, error_pause_seconds=0)
    paused = until_paused(engine, events)
    assert paused.by_errors and "connection" in paused.reason
    assert a.base_url in paused.reason and b.base_url in paused.reason
    kinds = {k for (k,) in rows(run_dir, "SELECT kind FROM errors")}
    assert "endpoint_taken_out" in kinds and "connection" in kinds


def test_a_pool_that_is_down_pauses_after_the_error_pause_not_after_minutes_of_probes(
        tmp_path):
    """Found by a fresh-user pass: one endpoint answering 500 to everything, the other with a
    refused key. The second is dropped, the first taken out and probed 2, 4 ... 60 s apart,
    one request at a time: requests failed too slowly for the "every request has failed"
    pause, and the run went quiet for minutes. With every endpoint out and no answer for
    error_pause_seconds, the run pauses, naming each endpoint's state."""
    run_dir = tmp_path / "run"
    broken = {"status": 500, "body": {"error": {"message": "injected failure"}}}
    refused = {"status": 401, "body": {"error": {"message": "Incorrect API key provided"}}}
    with FakeOpenAI(script={"*": [broken]}) as down, FakeOpenAI(script={"*": [refused]}) as bad:
        engine, events = pool_engine(run_dir, [down, bad], 10, error_pause_seconds=1.5)
        paused = until_paused(engine, events, timeout=30)
        sent = len(down.log)
    assert paused.by_errors and paused.reason.startswith("no endpoint of the pool has answered")
    assert f"{down.base_url} out (" in paused.reason and "the last: server_error" in paused.reason
    assert f"{bad.base_url} dropped (" in paused.reason
    assert sent <= 8  # the streak that took it out and a probe or two, not minutes of retries
    kinds = {k for (k,) in rows(run_dir, "SELECT kind FROM errors")}
    assert {"endpoint_taken_out", "endpoint_dropped", "endpoint_all_down"} <= kinds


def test_with_no_retries_a_failing_endpoint_is_still_taken_out_and_counted(tmp_path):
    """--max-retries 0 with one endpoint answering 500 to everything: its failures never reached
    the pool (only retries did), so it was never taken out, kept half the traffic and showed
    0 errors (fresh-user pass: 54 failed requests, 15 rounds for 30 tasks)."""
    run_dir = tmp_path / "run"
    broken = {"status": 500, "body": {"error": {"message": "injected failure"}}}
    with FakeOpenAI() as good, FakeOpenAI(script={"*": [broken]}) as down:
        engine, events = pool_engine(run_dir, [good, down], 20, max_retries=0)
        finished = engine.run()
        engine.store.close()
        sent_down = len(down.log)
    assert finished.reason is ev.FinishReason.TARGET
    taken = rows(run_dir, "SELECT message FROM errors WHERE kind = 'endpoint_taken_out'")
    assert taken and down.base_url in taken[0][0]
    stats = {e["base_url"]: e for e in json.loads(rows(
        run_dir, "SELECT value FROM meta WHERE key = 'endpoints'")[0][0])}
    assert stats[down.base_url]["errors"] == sent_down >= 3
    assert sent_down <= 8  # the streak that took it out, and its probes
    failed = rows(run_dir, "SELECT error FROM prompts WHERE error IS NOT NULL")
    assert all(e.endswith("(not retried: --max-retries 0)") for (e,) in failed), failed


CONFIG = """\
target = 20

[[endpoints]]
base_url = "http://a.example:8000/v1"
concurrency = 4

[[endpoints]]
base_url = "http://b.example:8000/v1"
model = "other"
key_env = "B_KEY"
requests_per_minute = 30
"""


def test_config_file_endpoints_are_read_and_checked(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    settings = load_user_config(path)
    cfg = build_config(settings, {"model": "m"}, env={})
    assert cfg.base_url == "http://a.example:8000/v1"
    listed = cfg.endpoint_list()
    assert [e["base_url"] for e in listed] == ["http://a.example:8000/v1",
                                               "http://b.example:8000/v1"]
    assert listed[0]["model"] == "m" and listed[1]["model"] == "other"
    assert listed[1]["key_env"] == "B_KEY" and listed[0]["key_env"] == "OPENAI_API_KEY"
    assert cfg.total_concurrency == 4 + 8 and cfg.effective_prompts_per_round == 12
    # One --base-url on the command line replaces the file's pool.
    single = build_config(settings, {"model": "m", "base_url": "http://c:1/v1"}, env={})
    assert single.endpoints == [] and single.base_url == "http://c:1/v1"
    # So does OPENAI_BASE_URL (the environment comes after the file), and a flag after both.
    env = {"OPENAI_BASE_URL": "http://d:1/v1"}
    from_env = build_config(settings, {"model": "m"}, env=env)
    assert from_env.endpoints == [] and from_env.base_url == "http://d:1/v1"
    assert build_config(settings, {"model": "m", "base_url": "http://c:1/v1"},
                        env=env).base_url == "http://c:1/v1"

    path.write_text('[[endpoints]]\nbase_url = "http://a:1/v1"\nurl = "x"\n\n'
                    '[[endpoints]]\nconcurrency = "four"\n\n'
                    '[[endpoints]]\nbase_url = "ftp://b"\nconcurrency = 0\n')
    with pytest.raises(ConfigError) as err:
        load_user_config(path)
    text = str(err.value)
    # each problem at the line of its field; a missing field at its table's header
    assert f"{path}:3: [[endpoints]] #1: unknown field 'url'" in text
    assert f"{path}:6: [[endpoints]] #2: field 'concurrency' must be an integer" in text
    assert f"{path}:5: [[endpoints]] #2: base_url is missing" in text
    assert f"{path}:9: [[endpoints]] #3: base_url must be an http:// or https:// URL" in text
    assert f"{path}:10: [[endpoints]] #3: field 'concurrency' must be at least 1" in text


def test_a_top_level_base_url_beside_endpoint_tables_is_refused(tmp_path):
    """The table won and the top-level URL was dropped without a word."""
    path = tmp_path / "config.toml"
    path.write_text('base_url = "http://127.0.0.1:18401/v1"\n\n'
                    '[[endpoints]]\nbase_url = "http://127.0.0.1:18402/v1"\n')
    with pytest.raises(ConfigError) as err:
        load_user_config(path)
    assert str(err.value) == (f"{path}:1: base_url and the [[endpoints]] table(s) at {path}:3 "
                              "both name the endpoint; keep one (an endpoint table holds its "
                              "own base_url)")


def test_a_setting_that_cannot_work_is_named_where_it_was_given(tmp_path):
    """Config file (path:line), environment variable or command line: the message says which,
    with the setting's flag, whichever the value came from."""
    path = tmp_path / "config.toml"
    path.write_text('model = "m"\n\nconnect_timeout = -1\nthreshold = 1.5\n'
                    '[[endpoints]]\nbase_url = "http://a:1/v1"\nrequests_per_minute = -3\n')
    with pytest.raises(ConfigError) as err:  # a table's fields are checked as the file is read
        load_user_config(path)
    assert str(err.value) == f"{path}:7: [[endpoints]] #1: field 'requests_per_minute' must be 0 or more"
    path.write_text('model = "m"\n\nconnect_timeout = -1\nthreshold = 1.5\n'
                    '[[endpoints]]\nbase_url = "http://a:1/v1"\n')
    with pytest.raises(ConfigError) as err:
        build_config(load_user_config(path), {}, env={})
    text = str(err.value)
    assert f"{path}:3: connect_timeout (--connect-timeout) must be more than 0 seconds" in text
    assert f"{path}:4: threshold (--threshold) must be in (0, 1]" in text
    with pytest.raises(ConfigError) as err:
        build_config(load_user_config(path), {"connect_timeout": float("nan"), "threshold": 0.5},
                     env={})
    assert str(err.value) == ("command line: connect_timeout (--connect-timeout) must be a "
                              "finite number, not nan")
    with pytest.raises(ConfigError) as err:
        build_config({}, {"model": "m"}, env={"OPENAI_BASE_URL": "localhost:8000"})
    assert str(err.value).startswith("environment variable OPENAI_BASE_URL: base_url "
                                     "(--base-url) must be an http:// or https:// URL")
    with pytest.raises(ConfigError) as err:
        merge_for_resume(RunConfig(base_url="http://a:1/v1", model="m"), {"target": 0})
    assert str(err.value) == "command line: target (--target) must be at least 1"
    # the second of two --base-url flags is named as such, not as a config table
    with pytest.raises(ConfigError) as err:
        build_config({}, {"model": "m", "base_url": "http://a:1/v1", "endpoints": [
            {"base_url": "http://a:1/v1"}, {"base_url": "http://b c:1/v1"}]}, env={})
    assert str(err.value).startswith("command line: --base-url #2: base_url must be an http://")
    # one line per problem: a value that is not a number is not also out of range
    path.write_text('threshold = nan\ntemperature = -1\ntop_p = 5\nconcurrency = "eight"\n')
    with pytest.raises(ConfigError) as err:
        build_config(load_user_config(path), {}, env={})
    assert str(err.value) == (f"{path}:4: setting 'concurrency' (--concurrency) must be an "
                              'integer, got "eight"')  # as the file spells it
    path.write_text("concurrency = true\n")
    with pytest.raises(ConfigError) as err:
        load_user_config(path)
    assert str(err.value).endswith("must be an integer, got true")  # not Python's True
    path.write_text('threshold = nan\ntemperature = -1\ntop_p = 5\n')
    with pytest.raises(ConfigError) as err:
        build_config(load_user_config(path), {"model": "m"}, env={})
    assert sorted(str(err.value).splitlines()) == [
        f"{path}:1: threshold (--threshold) must be a finite number, not nan",
        f"{path}:2: temperature must be between 0 and 2, not -1.0",
        f"{path}:3: top_p must be more than 0 and at most 1, not 5.0"]


def test_a_key_env_that_is_no_variable_name_is_refused_without_repeating_it(
        tmp_path, run_cli, isolated_env):
    """The key itself given as key_env (flag, file, an endpoint table), or key_env empty: the
    run was started with the key printed in "note: sk-... is not set" and written into the
    run's config; an empty one printed "note:  is not set". Each is refused (exit 2) where
    it was given, the value not repeated, and no run directory is made."""
    key = "sk-proj-abcdefghijklmnop1234"
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    url = "http://127.0.0.1:9/v1"
    cases = [
        ("", ["--key-env", key], "command line: key_env (--key-env) is not a variable name"),
        ("", ["--key-env", ""], "command line: key_env (--key-env) is empty"),
        (f'model = "m"\nkey_env = "{key}"\n', [],
         f"{config}:2: key_env (--key-env) is not a variable name"),
        (f'[[endpoints]]\nbase_url = "{url}"\n[[endpoints]]\nbase_url = "http://b:1/v1"\n'
         f'key_env = "{key}"\n', [],
         f"{config}:5: [[endpoints]] #2: field 'key_env' is not a variable name"),
        (f'[[endpoints]]\nbase_url = "{url}"\nkey_env = ""\n[[endpoints]]\n'
         'base_url = "http://b:1/v1"\n', [],
         f"{config}:3: [[endpoints]] #1: field 'key_env' is empty"),
    ]
    for n, (text, flags, expected) in enumerate(cases):
        config.write_text(text)
        run_dir = tmp_path / f"run{n}"
        base = [] if "[[endpoints]]" in text else ["--base-url", url]
        proc = run_cli("run", "--headless", "--model", "m", *base, *flags,
                       "--run-dir", str(run_dir), timeout=60)
        assert proc.returncode == 2, (text, flags, proc.stdout, proc.stderr)
        assert proc.stderr.startswith(f"error: {expected}"), proc.stderr
        assert "never the key itself" in proc.stderr
        assert "abcdefghijklmnop" not in proc.stdout + proc.stderr
        assert not run_dir.exists()
    # a variable's name that is not set is a note, and the run goes on
    config.write_text("")
    assert build_config({}, {"model": "m", "base_url": url, "key_env": "MY_KEY_2"},
                        env={}).key_env == "MY_KEY_2"


def test_an_inline_endpoint_list_and_a_seed_file_setting_are_named_at_their_lines(
        tmp_path, run_cli, isolated_env):
    path = tmp_path / "config.toml"
    path.write_text('model = "m"\nendpoints = [{base_url = "ftp://a"}]\n')
    with pytest.raises(ConfigError) as err:
        load_user_config(path)
    assert str(err.value).startswith(f"{path}:2: [[endpoints]] #1: base_url must be an http://")
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    config.write_text(f'\nseeds = "{tmp_path / "missing.jsonl"}"\n')
    proc = run_cli("run", "--headless", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                   "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.splitlines() == [
        f"{tmp_path / 'missing.jsonl'}: no such file",
        f"{config}:2: the seeds setting names this file; fix the file or the setting, or give "
        "--seeds"], proc.stderr


def test_flags_and_the_environment_come_after_a_single_endpoint_table(tmp_path):
    """One [[endpoints]] table holds the run's own endpoint settings, read as the config file's:
    the environment and the flags still win (defaults < file < environment < flags)."""
    path = tmp_path / "config.toml"
    path.write_text('[[endpoints]]\nbase_url = "http://a:1/v1"\nmodel = "file-model"\n'
                    'requests_per_minute = 30\nconcurrency = 3\n')
    settings = load_user_config(path)
    cfg = build_config(settings, {"requests_per_minute": 10.0}, env={})
    assert (cfg.requests_per_minute, cfg.model, cfg.concurrency) == (10.0, "file-model", 3)
    cfg = build_config(settings, {}, env={"SELFINSTRUCT_MODEL": "env-model"})
    assert (cfg.requests_per_minute, cfg.model) == (30.0, "env-model")
    cfg = build_config(settings, {"model": "flag-model", "concurrency": 9},
                       env={"SELFINSTRUCT_MODEL": "env-model"})
    assert (cfg.model, cfg.concurrency, cfg.base_url) == ("flag-model", 9, "http://a:1/v1")


def test_every_setting_flag_named_in_messages_is_the_run_command_s():
    from selfinstruct_tui.cli import build_parser
    from selfinstruct_tui.engine.config import FLAGS, SETTABLE

    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.values()
               if any(o.option_strings == ["--connect-timeout"] for o in a._actions))
    dest_of = {o.option_strings[0]: o.dest for o in run._actions if o.option_strings}
    for name, flag in FLAGS.items():
        assert name in SETTABLE and dest_of.get(flag) == name, (name, flag)


def test_resume_may_change_the_endpoints():
    stored = RunConfig(base_url="http://a:1/v1", model="m",
                       endpoints=[{"base_url": "http://a:1/v1"}, {"base_url": "http://b:1/v1"}])
    cfg, refused = merge_for_resume(stored, {"base_url": "http://a:1/v1", "endpoints": [
        {"base_url": "http://a:1/v1"}, {"base_url": "http://c:1/v1"}]})
    assert refused == [] and [e["base_url"] for e in cfg.endpoints] == ["http://a:1/v1",
                                                                        "http://c:1/v1"]
    cfg, refused = merge_for_resume(stored, {"base_url": "http://a:1/v1"})
    assert refused == [] and cfg.endpoints == [] and cfg.base_url == "http://a:1/v1"


def test_repeated_base_url_on_the_command_line_and_resume_with_other_endpoints(run_cli,
                                                                               tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as a, FakeOpenAI(latency=0.05) as b, \
            FakeOpenAI(latency=0.05) as c:
        first = run_cli("run", "--headless", "--base-url", a.base_url, "--base-url", b.base_url,
                        "--model", "m", "--concurrency", "2", "--run-dir", str(run_dir),
                        "--target", "6", timeout=120)
        assert first.returncode == 0, first.stderr
        assert a.base_url in first.stdout and b.base_url in first.stdout  # per-endpoint lines
        used = answered_by(run_dir)
        assert set(used) == {a.base_url, b.base_url}
        b_before = len(b.log)
        second = run_cli("run", "--headless", "--base-url", a.base_url, "--base-url", c.base_url,
                         "--model", "m", "--concurrency", "2", "--run-dir", str(run_dir),
                         "--target", "12", timeout=120)
        assert second.returncode == 0, second.stderr
        assert len(b.log) == b_before  # removed from the pool: nothing more sent there
        assert answered_by(run_dir).get(c.base_url, 0) >= 1
    config = json.loads(rows(run_dir, "SELECT value FROM meta WHERE key = 'config'")[0][0])
    assert [e["base_url"] for e in config["endpoints"]] == [a.base_url, c.base_url]
    assert "test-key" not in (run_dir / "run.sqlite").read_bytes().decode("latin-1")


def test_each_endpoint_reads_its_own_key_and_never_stores_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KEY_A", "sk-aaaaaaaaaaaaaaaaaaaaaaaa")
    monkeypatch.setenv("KEY_B", "sk-bbbbbbbbbbbbbbbbbbbbbbbb")
    with FakeOpenAI(api_key="sk-aaaaaaaaaaaaaaaaaaaaaaaa") as a, \
            FakeOpenAI(api_key="sk-bbbbbbbbbbbbbbbbbbbbbbbb") as b:
        store, config = new_run(tmp_path / "run", a.base_url, target=4, concurrency=2,
                                endpoints=[{"base_url": a.base_url, "key_env": "KEY_A"},
                                           {"base_url": b.base_url, "key_env": "KEY_B"}])
        engine = Engine(store, config)
        finished = engine.run()
        store.close()
    assert finished.reason is ev.FinishReason.TARGET
    assert set(answered_by(tmp_path / "run")) == {a.base_url, b.base_url}
    data = (tmp_path / "run" / "run.sqlite").read_bytes()
    assert b"sk-aaaa" not in data and b"sk-bbbb" not in data


def test_a_stop_ends_the_wait_for_a_probe(tmp_path):
    a, b = FakeOpenAI().start(), FakeOpenAI().start()
    a.close()
    b.close()
    engine, events = pool_engine(tmp_path / "run", [a, b], 5, max_retries=50)
    thread = engine.start_thread()
    wait_for(lambda: sum(isinstance(e, ev.RequestError) and e.kind == "endpoint_taken_out"
                         for e in events) >= 2)
    engine.stop_now()
    thread.join(30)
    engine.store.close()
    assert not thread.is_alive()
    assert events[-1].reason is ev.FinishReason.STOPPED


def test_one_endpoints_table_is_the_runs_own_endpoint(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[[endpoints]]\nbase_url = "http://a:1/v1"\nmodel = "x"\nconcurrency = 3\n')
    cfg = build_config(load_user_config(path), {}, env={})
    assert cfg.endpoints == [] and cfg.base_url == "http://a:1/v1"
    assert cfg.model == "x" and cfg.concurrency == 3


def test_the_tui_shows_each_endpoint_and_the_inspector_who_answered(tmp_path, isolated_env,
                                                                    run_cli):
    import asyncio

    from selfinstruct_tui.tui.app import create_app
    from selfinstruct_tui.tui.screens.inspector import InspectorScreen
    from selfinstruct_tui.tui.widgets.panes import StatusLine
    from selfinstruct_tui.tui.widgets.task_table import TaskTable
    from tui_helpers import until

    run_dir = tmp_path / "run"

    async def go(a: FakeOpenAI, b: FakeOpenAI) -> str:
        engine, _ = pool_engine(run_dir, [a, b], 10)
        app = create_app(run_dir, engine=engine, refresh=0.1)
        async with app.run_test(size=(160, 45)) as pilot:
            await until(pilot, lambda: app.state == "finished", timeout=60)
            await pilot.pause(0.3)
            inflight = str(app.query_one("#inflight").render())
            assert a.base_url in inflight and b.base_url in inflight
            assert "req/s" in inflight and "errors" in inflight and "median" in inflight
            assert "2 endpoints" in str(app.query_one(StatusLine).render())
            table = app.query_one(TaskTable)
            table.focus()
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            return str(app.screen.query_one("#inspector-text").render())

    with FakeOpenAI() as a, FakeOpenAI() as b:
        text = asyncio.run(go(a, b))
        assert "Answered by" in text
        assert "generate" in text and "instances" in text and "model fake-model" in text
        assert a.base_url in text or b.base_url in text
    out = tmp_path / "out.jsonl"
    run_cli("export", str(run_dir), "--format", "alpaca", "-o", str(out), check=True)
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["model"] == "fake-model"
    assert {e["base_url"] for e in meta["endpoints"]} == {a.base_url, b.base_url}
    assert sum(e["answers"] for e in meta["endpoints"]) == \
        rows(run_dir, "SELECT COUNT(*) FROM prompts WHERE response IS NOT NULL")[0][0]


def test_a_rate_limit_cools_down_only_the_endpoint_that_sent_it(tmp_path):
    run_dir = tmp_path / "run"
    limited = {"status": 429, "headers": {"Retry-After": "600"},
               "body": {"error": {"message": "Rate limit reached", "type": "requests"}}}
    with FakeOpenAI() as free, FakeOpenAI(script={"*": [limited]}) as busy:
        engine, events = pool_engine(run_dir, [busy, free], 6)
        finished = engine.run()
        engine.store.close()
    # The run did not wait the 10 minutes out: the other endpoint took every request.
    assert finished.reason is ev.FinishReason.TARGET
    assert len(busy.log) <= 2  # only what was sent before its first answer came back
    assert set(answered_by(run_dir)) == {free.base_url}
    assert "rate_limit" in {c for (c,) in rows(run_dir, "SELECT cause FROM retries")}
    assert not any(isinstance(e, ev.Paused) for e in events)


RATE_LIMITED = {"status": 429, "headers": {"Retry-After": "2"},
                "body": {"error": {"message": "Rate limit reached", "type": "requests"}}}


def test_a_pool_whose_endpoints_only_cool_down_from_rate_limits_waits_for_them(tmp_path):
    """Found by a fresh-user pass: both endpoints answered 429 with a Retry-After longer than
    error_pause_seconds; the pool called itself "all down" ("Check that they are up") and the
    run paused (headless: exit 3) though both were up and said when to come back. It waits for
    them now, and finishes."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [RATE_LIMITED] * 3}, repeat_last=False) as a, \
            FakeOpenAI(script={"*": [RATE_LIMITED] * 3}, repeat_last=False) as b:
        # 4 prompts on 2 + 2 slots: requests wait for an endpoint while both cool down
        engine, events = pool_engine(run_dir, [a, b], 12, error_pause_seconds=0.5,
                                     prompts_per_round=4)
        thread = engine.start_thread()
        try:  # a pause waits for the user: end the test on it instead of waiting
            wait_for(lambda: any(isinstance(e, (ev.Paused, ev.Finished)) for e in events))
        finally:
            engine.stop_now()
            thread.join(60)
            engine.store.close()
    assert not any(isinstance(e, ev.Paused) for e in events), \
        [e.reason for e in events if isinstance(e, ev.Paused)]
    assert events[-1].reason is ev.FinishReason.TARGET
    assert "endpoint_all_down" not in {k for (k,) in rows(run_dir, "SELECT kind FROM errors")}
    assert set(answered_by(run_dir)) == {a.base_url, b.base_url}
    assert 429 in a.statuses and 429 in b.statuses


def test_a_pool_that_only_answers_rate_limits_still_pauses_as_one_endpoint_does(tmp_path):
    """Requests that keep failing on rate limits pause the run by the failure watch (the
    rule of one endpoint), naming the rate limit, not "no endpoint has answered"."""
    run_dir = tmp_path / "run"
    limited = {**RATE_LIMITED, "headers": {"Retry-After": "1"}}
    with FakeOpenAI(script={"*": [limited]}) as a, FakeOpenAI(script={"*": [limited]}) as b:
        engine, events = pool_engine(run_dir, [a, b], 6, error_pause_seconds=0.5,
                                     max_retries=1)
        paused = until_paused(engine, events)
    assert paused.by_errors and paused.reason.startswith("every request has failed")
    assert "rate_limit" in paused.reason


def test_an_attached_ui_reads_each_endpoints_figures_from_the_store(tmp_path):
    from selfinstruct_tui.engine.control import StoreFollower, read_snapshot
    from selfinstruct_tui.engine.store import RunStore
    from selfinstruct_tui.tui.view import RunView

    run_dir = tmp_path / "run"
    with FakeOpenAI() as a, FakeOpenAI() as b:
        engine, _ = pool_engine(run_dir, [a, b], 6)
        engine.run()
        engine.store.close()
    store = RunStore(run_dir, readonly=True)
    try:
        snapshot = read_snapshot(store)
        followed: list = []
        StoreFollower(snapshot, followed.append).poll(store)
    finally:
        store.close()
    view = RunView()
    view.load(snapshot)
    view.apply_all(followed)
    assert [e.base_url for e in view.endpoints] == [a.base_url, b.base_url]
    assert sum(e.answered for e in view.endpoints) == sum(answered_by(run_dir).values())
    assert "2 endpoints" in str(view.status.line())


def test_when_the_last_endpoint_is_dropped_the_error_names_every_dropped_one(run_cli, tmp_path):
    """Two endpoints wrong for good in two ways: the run stops on the last one's failure and
    names the other's too, so fixing one does not only lead to the next."""
    import trustme

    from test_endpoint_failures import _tls_server

    run_dir = tmp_path / "run"
    with _tls_server(trustme.CA()) as private, FakeOpenAI() as plain:
        wrong_scheme = plain.base_url.replace("http://", "https://")
        proc = run_cli("run", "--headless", "--base-url", private.base_url, "--base-url",
                       wrong_scheme, "--model", "m", "--api", "completions", "--run-dir",
                       str(run_dir), "--target", "5", "--concurrency", "1", timeout=120)
    assert proc.returncode == 3, proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert last, proc.stderr
    assert private.base_url in last[0] and wrong_scheme in last[0]
    assert "cannot be verified" in last[0] and "use http://" in last[0]
    assert "dropped earlier" in last[0]


def test_a_config_file_named_by_the_environment_must_exist(tmp_path, run_cli, isolated_env):
    """SELFINSTRUCT_CONFIG with a typo in it is an error that names the variable, not a run
    without the user's settings; the default path, missing, is still an empty config."""
    missing = tmp_path / "cofig.toml"
    proc = run_cli("run", "--headless", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                   "--run-dir", str(tmp_path / "run"),
                   env={**isolated_env, "SELFINSTRUCT_CONFIG": str(missing)})
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.splitlines()[0].startswith(
        f"error: SELFINSTRUCT_CONFIG={missing}: no such file. Fix the path, create the file"), \
        proc.stderr
    assert load_user_config(tmp_path / "absent.toml") == {}


def test_paths_from_the_environment_expand_home_and_a_directory_is_named(tmp_path,
                                                                        monkeypatch):
    """SELFINSTRUCT_CONFIG / SELFINSTRUCT_RUNS_DIR as "~/..." (a service file or a quoted value
    does not go through the shell's tilde expansion) mean the home directory; a directory named
    as the config file is an error naming the variable and the file to name instead."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "si.toml").write_text('model = "from-home"\n')
    monkeypatch.setenv("SELFINSTRUCT_CONFIG", "~/si.toml")
    monkeypatch.setenv("SELFINSTRUCT_RUNS_DIR", "~/runs")
    assert user_config_path() == tmp_path / "si.toml"
    assert load_user_config()["model"] == "from-home"
    assert runs_root() == tmp_path / "runs"
    monkeypatch.setenv("SELFINSTRUCT_CONFIG", "~")
    with pytest.raises(ConfigError) as caught:
        load_user_config()
    assert str(caught.value) == (f"SELFINSTRUCT_CONFIG=~: a directory, not a config file; name "
                                 f"the file itself (e.g. {tmp_path / 'config.toml'})")


def test_extra_body_from_the_config_file_is_checked_and_named_at_its_line(tmp_path):
    """An [extra_body] table is request fields added as they are: one of the fields the run
    sets itself, or a value JSON cannot carry, is named at the table's line with the flag."""
    path = tmp_path / "config.toml"
    path.write_text('model = "m"\n\n[extra_body.chat_template_kwargs]\nenable_thinking = false\n')
    cfg = build_config(load_user_config(path), {}, env={})
    assert cfg.extra_body == {"chat_template_kwargs": {"enable_thinking": False}}
    path.write_text('model = "m"\n[extra_body]\ntemperature = 1.0\nn = 2\nwhen = 2024-01-01\n'
                    'top_k = 20\n')
    with pytest.raises(ConfigError) as err:
        build_config(load_user_config(path), {}, env={})
    lines = str(err.value).splitlines()
    assert lines[0] == (f"{path}:2: extra_body (--extra-body) may not set n, temperature: the "
                        "run sets these itself (the sampling settings have their own settings "
                        "and flags)")
    assert lines[1].startswith(f"{path}:2: extra_body (--extra-body) must hold only what JSON "
                               "can carry"), lines
    # TOML's other spellings of a key (dotted, quoted) are named at their own lines too
    path.write_text('model = "m"\n\nextra_body.temperature = 1.0\n"concurrency" = 0\n')
    with pytest.raises(ConfigError) as err:
        build_config(load_user_config(path), {}, env={})
    assert sorted(str(err.value).splitlines()) == [
        f"{path}:3: extra_body (--extra-body) may not set temperature: the run sets it itself "
        "(the sampling settings have their own settings and flags)",
        f"{path}:4: concurrency (--concurrency) must be at least 1"]
    path.write_text('extra_body = "enable_thinking=false"\n')
    with pytest.raises(ConfigError) as err:
        load_user_config(path)
    assert str(err.value) == (f"{path}:1: setting 'extra_body' (--extra-body) must be a table "
                              '(TOML) or a JSON object, got "enable_thinking=false"')


def test_extra_body_flag_that_is_not_a_json_object_is_named_in_jsons_words(run_cli, tmp_path):
    """--extra-body null said "not NoneType": what a value is, in JSON's words."""
    shape = "must be a JSON object of request fields, "
    for given, said in (("null", shape + "not null"), ("[1]", shape + "not list"),
                        ('"x"', shape + "not string"),
                        ("{", "not valid JSON (Expecting property name")):
        proc = run_cli("run", "--headless", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                       "--run-dir", str(tmp_path / "run"), "--extra-body", given)
        assert proc.returncode == 2 and not (tmp_path / "run").exists()
        assert f"argument --extra-body: {said}" in proc.stderr, proc.stderr


def test_a_resumed_runs_notes_name_the_files_pool_once_and_not_what_a_flag_overrides(
        tmp_path):
    """The pool in the file that a resumed run does not use is one line (its first endpoint is
    not said again as base_url), against the run's own endpoint; with --base-url given, the
    file's endpoint settings would not apply to a new run either, so nothing is said."""
    path = tmp_path / "config.toml"
    resumed = build_config(FileSettings(), {"base_url": "http://y:1/v1", "model": "m"}, env={})
    path.write_text('[[endpoints]]\nbase_url = "http://a:1/v1"\n\n'
                    '[[endpoints]]\nbase_url = "http://b:1/v1"\n')
    notes = file_ignored_on_resume(resumed, {}, load_user_config(path), env={})
    assert notes[0].splitlines()[1:] == [
        f"  {path}:1: endpoints = http://a:1/v1, http://b:1/v1 (the run: http://y:1/v1; safe "
        "to change: give --base-url for each endpoint)"]
    path.write_text('[[endpoints]]\nbase_url = "http://a:1/v1"\nmodel = "q"\n')
    assert file_ignored_on_resume(resumed, {"base_url": "http://y:1/v1"},
                                  load_user_config(path), env={}) == []
    assert len(file_ignored_on_resume(resumed, {}, load_user_config(path),
                                      env={})[0].splitlines()) == 3  # base_url, model


def test_a_resumed_runs_notes_say_where_each_value_comes_from(tmp_path):
    """Found by a fresh-user pass: a value from the one [[endpoints]] table was named at the
    top-level key's line with the table's value; the same pool with other per-endpoint
    settings read "A, B (the run: A, B)"; an environment variable was neither applied nor said;
    a trailing slash or 600 against 600.0 was a difference; lines came out of the file's
    order."""
    path = tmp_path / "config.toml"
    pool = {"endpoints": [{"base_url": "http://a:1/v1"}, {"base_url": "http://b:1/v1"}],
            "model": "m"}
    resumed = build_config(FileSettings(), {**pool}, env={})
    path.write_text('requests_per_minute = 600\nconcurrency = 64\n# one endpoint, as a table\n'
                    '\n[[endpoints]]\nbase_url = "http://a:1/v1"\nconcurrency = 4\n')
    single = build_config(FileSettings(), {"base_url": "http://a:1/v1", "model": "m"}, env={})
    lines = file_ignored_on_resume(single, {}, load_user_config(path), env={})[0].splitlines()
    assert lines[1:] == [
        f"  {path}:1: requests_per_minute = 600 (the run: 0; safe to change with --rpm)",
        f"  {path}:5: concurrency = 4 (the run: 8; safe to change with --concurrency)"], lines
    path.write_text('[[endpoints]]\nbase_url = "http://a:1/v1"\nconcurrency = 4\n\n'
                    '[[endpoints]]\nbase_url = "http://b:1/v1/"\n')
    lines = file_ignored_on_resume(resumed, {}, load_user_config(path), env={})[0].splitlines()
    assert lines[1:] == [
        f"  {path}:1: endpoints = http://a:1/v1 (concurrency 4), http://b:1/v1/ (the run: "
        "http://a:1/v1, http://b:1/v1; per-endpoint settings are fixed once a run starts: a new "
        "run takes them)"], lines
    path.write_text("")
    env = {"OPENAI_BASE_URL": "http://z:1/v1", "SELFINSTRUCT_MODEL": "zz"}
    lines = file_ignored_on_resume(single, {}, load_user_config(path), env=env)[0].splitlines()
    assert lines[1:] == [
        "  environment variable OPENAI_BASE_URL: base_url = 'http://z:1/v1' (the run: "
        "'http://a:1/v1'; safe to change with --base-url)",
        "  environment variable SELFINSTRUCT_MODEL: model = 'zz' (the run: 'm'; fixed once a "
        "run starts: a new run takes it)"], lines
    assert file_ignored_on_resume(single, {"base_url": "http://a:1/v1"}, load_user_config(path),
                                  env={"OPENAI_BASE_URL": "http://z:1/v1"}) == []
    seeds = tmp_path / "mine.jsonl"
    path.write_text(f'seeds = "{seeds}"\n')
    lines = file_ignored_on_resume(single, {}, load_user_config(path), env={},
                                   seeds_path="bundled")[0].splitlines()
    assert lines[1:] == [f"  {path}:1: seeds = '{seeds}' (the run: its own seed set, from "
                         "bundled; edit it in the TUI, key e, or give --seeds with the run's "
                         "set; a new run takes the file)"]
    assert file_ignored_on_resume(single, {}, load_user_config(path), env={},
                                  seeds_path=str(seeds)) == []


def test_a_remembered_setting_keeps_a_symlinked_config_file_a_symlink(tmp_path):
    """A config.toml that a dotfile manager links to its repository: remembering the theme
    replaced the link with a copy (the next checkout lost the change or the link)."""
    from selfinstruct_tui.engine.config import save_user_setting

    real = tmp_path / "dotfiles" / "config.toml"
    real.parent.mkdir()
    real.write_text('model = "m"\n')
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    save_user_setting("theme", "nord", link)
    assert link.is_symlink() and real.read_text() == 'model = "m"\ntheme = "nord"\n'


def test_a_remembered_setting_is_written_before_the_config_files_tables(tmp_path):
    """The TUI remembers the theme with save_user_setting: appended after an [extra_body] or
    [[endpoints]] table it became that table's field (sent in every request, or an unknown
    endpoint field that stopped every run)."""
    from selfinstruct_tui.engine.config import save_user_setting

    path = tmp_path / "config.toml"
    path.write_text('target = 5\n\n[extra_body.chat_template_kwargs]\nenable_thinking = false\n'
                    '\n[[endpoints]]\nbase_url = "http://a:1/v1"\n\n[[endpoints]]\n'
                    'base_url = "http://b:1/v1"\n')
    save_user_setting("theme", "paper", path)
    settings = load_user_config(path)
    assert settings["theme"] == "paper"
    assert settings["extra_body"] == {"chat_template_kwargs": {"enable_thinking": False}}
    assert [e["base_url"] for e in settings["endpoints"]] == ["http://a:1/v1", "http://b:1/v1"]
    save_user_setting("theme", "ember", path)  # a second save replaces the line
    assert path.read_text().count("theme =") == 1 and load_user_config(path)["theme"] == "ember"


def test_retries_and_failures_name_the_endpoint_they_went_to(run_cli, tmp_path):
    """In a pool, a retry or a failed request recorded only its cause and message: which of
    the endpoints was rate limiting or failing was not in the store, the headless lines or the
    TUI (fresh-user pass). Each now records the base URL its attempt went to."""
    run_dir = tmp_path / "run"
    limited = {"status": 429, "headers": {"Retry-After": "600"},
               "body": {"error": {"message": "Rate limit reached", "type": "requests"}}}
    broken = {"status": 500, "body": {"error": {"message": "injected failure"}}}
    with FakeOpenAI() as good, FakeOpenAI(script={"*": [limited]}) as busy, \
            FakeOpenAI(script={"*": [broken]}) as down:
        proc = run_cli("run", "--headless", "--base-url", good.base_url, "--base-url",
                       busy.base_url, "--base-url", down.base_url, "--model", "m",
                       "--concurrency", "2", "--run-dir", str(run_dir), "--target", "8",
                       timeout=120)
    assert proc.returncode == 0, proc.stderr
    retried = rows(run_dir, "SELECT cause, endpoint FROM retries")
    assert ("rate_limit", busy.base_url) in retried, retried
    assert ("server_error", down.base_url) in retried, retried
    assert all(endpoint in (busy.base_url, down.base_url) for _, endpoint in retried), retried
    taken = rows(run_dir, "SELECT kind, endpoint FROM errors")
    assert ("endpoint_taken_out", down.base_url) in taken, taken
    lines = proc.stdout.splitlines()
    # named once: after "at", or in a message that names it already
    assert any(line.startswith("retry (rate limit") and line.count(busy.base_url) == 1
               for line in lines), proc.stdout
    assert any(line.startswith("retry (server error") and f" at {down.base_url}: " in line
               for line in lines), proc.stdout


def test_the_end_of_a_rate_limit_cool_down_is_not_announced(tmp_path):
    """A 429 cools its endpoint down for the Retry-After without a word (it is a retry of the
    request); its return was announced "answers again: back in the pool" after every
    cool-down, 30+ notes in a two-minute run (fresh-user pass)."""
    run_dir = tmp_path / "run"
    limited = {"status": 429, "headers": {"Retry-After": "0.05"},
               "body": {"error": {"message": "Rate limit reached", "type": "requests"}}}
    # one request at a time each, the other endpoint slow: the cooled one is needed again
    with FakeOpenAI(latency=0.2) as free, \
            FakeOpenAI(script={"*": [limited, "x", limited, "x", limited]},
                       repeat_last=False) as busy:
        engine, events = pool_engine(run_dir, [busy, free], 12, concurrency=[1, 1])
        finished = engine.run()
        engine.store.close()
    assert finished.reason is ev.FinishReason.TARGET
    # its first answer was a 429: each answer it gave came after a cool-down
    assert rows(run_dir, "SELECT COUNT(*) FROM retries WHERE cause = 'rate_limit'")[0][0] >= 1
    assert busy.base_url in answered_by(run_dir)
    assert not [e for e in events if isinstance(e, ev.Notice) and "back in the pool" in
                e.message]


def test_a_pool_without_model_asks_the_endpoints_in_turn_for_it(run_cli, tmp_path):
    """With no --model the first endpoint's model list named the model; a replica still
    loading there (connection refused) stopped the whole pool from starting. An endpoint that
    cannot be reached is skipped; one that answers decides (several models: choose one)."""
    down = "http://127.0.0.1:9/v1"
    with FakeOpenAI() as up:
        run_dir = tmp_path / "run"
        proc = run_cli("run", "--headless", "--base-url", down, "--base-url", up.base_url,
                       "--run-dir", str(run_dir), "--target", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "fake-model" in proc.stdout
        assert rows(run_dir, "SELECT DISTINCT model FROM prompts WHERE response IS NOT NULL"
                    ) == [("fake-model",)]
    # One that refuses the list (its key refused; a run with --model dropped it and went on)
    # is skipped too: the run drops it, naming why, at its first request
    with FakeOpenAI(api_key="right-key") as locked, FakeOpenAI() as up:
        run_dir = tmp_path / "locked"
        proc = run_cli("run", "--headless", "--base-url", locked.base_url, "--base-url",
                       up.base_url, "--run-dir", str(run_dir), "--target", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{locked.base_url} dropped" in proc.stdout + proc.stderr
        assert rows(run_dir, "SELECT DISTINCT endpoint FROM prompts WHERE response IS NOT NULL"
                    ) == [(up.base_url,)]
        # every endpoint refused: each named, with the fix
        proc = run_cli("run", "--headless", "--base-url", locked.base_url, "--base-url", down,
                       "--run-dir", str(tmp_path / "refused"), "--target", "3")
        assert proc.returncode == 2 and not (tmp_path / "refused").exists()
        assert "cannot list the models at any endpoint" in proc.stderr, proc.stderr
        assert locked.base_url in proc.stderr and "API key" in proc.stderr
        assert "fix what each says" in proc.stderr
    proc = run_cli("run", "--headless", "--base-url", down, "--base-url", "http://127.0.0.1:7/v1",
                   "--run-dir", str(tmp_path / "none"), "--target", "3")
    assert proc.returncode == 2 and not (tmp_path / "none").exists()
    assert "cannot list the models at any endpoint" in proc.stderr, proc.stderr
    assert "127.0.0.1:9" in proc.stderr and "127.0.0.1:7" in proc.stderr
    assert "--model" in proc.stderr


def test_a_pool_of_two_models_names_both(run_cli, tmp_path, isolated_env):
    """[[endpoints]] tables asking for different models: the start line and the TUI's status
    line named only the run's model ("model: base-m at 2 endpoints"), as if every endpoint
    served it. Both are named now."""
    import asyncio

    from selfinstruct_tui.tui.app import create_app
    from selfinstruct_tui.tui.widgets.panes import StatusLine
    from tui_helpers import until

    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    run_dir = tmp_path / "run"
    with FakeOpenAI() as a, FakeOpenAI() as b:
        config.write_text(f'[[endpoints]]\nbase_url = "{a.base_url}"\nmodel = "org/alpha"\n\n'
                          f'[[endpoints]]\nbase_url = "{b.base_url}"\nmodel = "org/beta"\n')
        proc = run_cli("run", "--headless", "--run-dir", str(run_dir), "--target", "3",
                       check=True)
    assert f"model: org/alpha, org/beta at 2 endpoints ({a.base_url}, {b.base_url})" \
        in proc.stdout, proc.stdout

    async def go() -> str:
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(160, 40)) as pilot:
            status = app.query_one(StatusLine)
            await until(pilot, lambda: "endpoints" in str(status.render()))
            return str(status.render())

    assert "org/alpha, org/beta @ 2 endpoints" in asyncio.run(go())


def test_the_tui_shows_every_endpoint_of_a_pool_and_which_are_out(tmp_path):
    """Three endpoints, one down: the prompts pane showed at most three lines (the first
    endpoint's, wrapped), and "[out]" was read as Rich markup and vanished, so an endpoint that
    was out looked fine."""
    import asyncio

    from selfinstruct_tui.tui.app import create_app
    from tui_helpers import until

    run_dir = tmp_path / "run"

    async def go(servers: list[FakeOpenAI], down: FakeOpenAI) -> None:
        engine, _ = pool_engine(run_dir, servers, 60)
        app = create_app(run_dir, engine=engine, refresh=0.1)
        async with app.run_test(size=(160, 45)) as pilot:
            inflight = app.query_one("#inflight")
            await until(pilot, lambda: "[out]" in str(inflight.render()), timeout=60)
            text = str(inflight.render())
            assert f"{down.base_url} [out]:" in text
            assert all(s.base_url in text for s in servers)
            await pilot.pause(0.2)
            lines = app.screen.get_widget_at  # every line of the block is on screen
            region = inflight.content_region
            assert region.height >= len(text.splitlines()), (region, text)
            assert lines(region.x, region.y + region.height - 1)[0] is inflight
            await pilot.press("s", "y")

    with FakeOpenAI(latency=0.2) as a, FakeOpenAI(latency=0.2) as b:
        down = FakeOpenAI().start()
        down.close()  # its port refuses connections
        asyncio.run(go([a, b, down], down))


def test_one_endpoint_given_with_and_without_a_trailing_slash_is_one_endpoint(run_cli, tmp_path):
    """Exact repeats of --base-url were one endpoint but http://h/v1/ and http://h/v1 made a
    pool of two, the one server getting twice the concurrency."""
    with FakeOpenAI() as server:
        proc = run_cli("run", "--headless", "--base-url", server.base_url + "/", "--base-url",
                       server.base_url, "--model", "m", "--run-dir", str(tmp_path / "run"),
                       "--target", "3", check=True)
        assert f"model: m at {server.base_url}/ (" in proc.stdout, proc.stdout
        assert "endpoints" not in proc.stdout.splitlines()[1]
        # resumed with the other spelling: still one endpoint in an export's metadata
        run_cli("run", "--headless", "--base-url", server.base_url, "--run-dir",
                str(tmp_path / "run"), "--target", "6", check=True)
    run_cli("export", str(tmp_path / "run"), "--format", "alpaca", "-o",
            str(tmp_path / "out.json"), check=True)
    meta = json.loads((tmp_path / "out.json.meta.json").read_text())
    assert [(e["base_url"], e["model"]) for e in meta["endpoints"]] == [(server.base_url, "m")]


def test_config_typos_name_the_setting_meant_and_toml_errors_their_line(tmp_path, run_cli,
                                                                        isolated_env):
    """An unknown key listed all 48 settings and left the user to find the one meant (a flag's
    name, `rpm`, or a dash, `max-cost`, too); `allow_non_ascii` is the filter turned off. A TOML
    syntax error said "(at line 2, column 12)" at its end, after the path without a line."""
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    base = ("run", "--headless", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
            "--run-dir", str(tmp_path / "run"))
    cases = {
        'model = "m"\nconcurency = 4\n': f"{config}:2: unknown setting 'concurency'; did you "
                                          "mean 'concurrency'?",
        "rpm = 60\n": f"{config}:1: unknown setting 'rpm'; did you mean 'requests_per_minute'?",
        "max-cost = 1\n": f"{config}:1: unknown setting 'max-cost'; did you mean 'max_cost'?",
        "price_in = 0.1\n": f"{config}:1: unknown setting 'price_in'; did you mean "
                            "'price_input_per_1k'?",
        "allow_non_ascii = true\n": f"{config}:1: unknown setting 'allow_non_ascii'; did you "
                                    "mean filter_non_ascii = false (what --allow-non-ascii "
                                    "sets)?",
        '[[endpoints]]\nbase_url = "http://a:1/v1"\nconcurency = 2\n':
            f"{config}:3: [[endpoints]] #1: unknown field 'concurency'; did you mean "
            "'concurrency'?",
        'model = "m"\ntarget = 5 6\n': f"{config}:2: not valid TOML: Expected newline or end of "
                                       "document after a statement (column 12); fix or delete "
                                       "the file",
        'model = "m"\nx = [1,\n': f"{config}:2: not valid TOML: Invalid value (at the end of "
                                  "the file); fix or delete the file",
    }
    for text, said in cases.items():
        config.write_text(text)
        proc = run_cli(*base)
        assert proc.returncode == 2 and proc.stderr.splitlines()[0] == f"error: {said}", \
            (text, proc.stderr)
    config.write_text("colour = 1\n")  # nothing close: the known settings are listed
    assert "(known settings: api, base_url, " in run_cli(*base).stderr
    assert not (tmp_path / "run").exists()


def test_an_endpoint_table_repeated_with_a_trailing_slash_is_listed_twice(tmp_path, run_cli,
                                                                          isolated_env):
    """`--base-url` given twice, with and without a trailing slash, is one endpoint; two
    [[endpoints]] tables that way were two, and the server took twice its concurrency."""
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    config.write_text('[[endpoints]]\nbase_url = "http://127.0.0.1:9/v1"\n\n'
                      '[[endpoints]]\nbase_url = "http://127.0.0.1:9/v1/"\n')
    proc = run_cli("run", "--headless", "--model", "m", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (f"error: {config}:5: [[endpoints]] #2: base_url "
                                           "'http://127.0.0.1:9/v1/' is listed twice")


def test_a_config_file_with_a_bom_is_read_and_a_key_in_it_is_told_where_keys_go(
        run_cli, tmp_path, isolated_env, fake_server):
    """A config file saved as "UTF-8 with BOM" and CRLF (Windows Notepad) is read as written
    (the BOM was "line 1: not valid TOML: Invalid statement"); a file that is not UTF-8 is named
    at its line; an API key written into the file is refused with where keys go, not a list of
    every setting, and never repeated."""
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    config.write_bytes(b'\xef\xbb\xbfconcurrency = 3\r\ntemperature = 0.5\r\n')
    run_dir = tmp_path / "run"
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--target", "1", "--run-dir", str(run_dir), check=True)
    stored = json.loads(sqlite3.connect(run_dir / "run.sqlite").execute(
        "SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
    assert (stored["concurrency"], stored["temperature"]) == (3, 0.5)
    fresh = ("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
             "--target", "1", "--run-dir", str(tmp_path / "other"))
    config.write_bytes(b'concurrency = 3\nmodel = "caf\xe9"\n')  # Latin-1
    proc = run_cli(*fresh)
    assert proc.returncode == 2 and not (tmp_path / "other").exists()
    assert proc.stderr == (f"error: {config}:2: not valid UTF-8 (byte 0xe9 at offset 28); "
                           "save the file as UTF-8\n")
    secret = "sk-test-secret-123456"
    config.write_text(f'api_key = "{secret}"\n[[endpoints]]\nbase_url = "http://a:1/v1"\n'
                      f'key = "{secret}"\n')
    proc = run_cli(*fresh)
    where = ("the API key is never read from a file: delete this line and put the key in the "
             "environment variable OPENAI_API_KEY (or the one key_env names)")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {config}:1: unknown setting 'api_key'; {where}",
        f"{config}:4: [[endpoints]] #1: unknown field 'key'; {where}"], proc.stderr
    assert secret not in proc.stdout + proc.stderr
    # a theme file saved with a BOM loads too
    from selfinstruct_tui.tui.themes import bundled_themes_dir, load_theme_file

    theme = tmp_path / "bom.toml"
    theme.write_bytes(b"\xef\xbb\xbf" + (bundled_themes_dir() / "paper.toml").read_bytes())
    assert load_theme_file(theme).name == load_theme_file(bundled_themes_dir() / "paper.toml").name
