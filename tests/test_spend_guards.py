"""Spend guards: no tight loop when rounds yield nothing, and cost/token limits that stop cleanly
and resume with a higher limit. The endpoint is a loopback server scripted to misbehave."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from fake_openai import FakeOpenAI
from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.store import RunStore
from test_real_answers import assert_accounted
from tui_helpers import new_run

REFUSAL = "I'm sorry, but I can't help with that."


def count(run_dir: Path, sql: str) -> int:
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def test_a_refusal_only_endpoint_stops_by_itself(run_cli, tmp_path):
    """Default settings, as a new user runs them: the run pauses (exit 3) after a few dozen
    requests with the counts per reason and the last answer, instead of looping forever."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [REFUSAL]}) as server:
        # The subprocess timeout is the bound: it must stop by itself within a minute.
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(run_dir), "--target", "100", timeout=60)
        sent = len(server.log)
    assert proc.returncode == 3, proc.stderr
    assert 40 <= sent <= 64  # a few dozen requests, never a tight loop
    assert "requests in a row added nothing to the pool" in proc.stderr
    assert f"refusal {count(run_dir, 'SELECT COUNT(*) FROM rejections')}" in proc.stderr
    assert f"Last rejected answer (refusal): {REFUSAL!r}" in proc.stderr
    assert count(run_dir, "SELECT COUNT(*) FROM rejections WHERE reason != 'refusal'") == 0
    assert_accounted(run_dir)


def run_guarded(tmp_path: Path, server: FakeOpenAI, **cfg):
    """The engine in-process, stopping (as headless does) when it pauses by errors."""
    store, config = new_run(tmp_path / "run", server.base_url, **{"target": 50, **cfg})
    engine = Engine(store, config)
    pauses: list[str] = []

    def on_event(event):
        if isinstance(event, ev.Paused) and event.by_errors:
            pauses.append(event.reason)
            engine.stop(ev.FinishReason.FAILING, event.reason)

    engine.bus.subscribe(on_event)
    finished = engine.run()
    store.close()
    return tmp_path / "run", finished, pauses


def test_a_duplicate_only_endpoint_stops_by_itself(tmp_path):
    same = "\n".join(f"{9 + n}. Describe the {w} season in a small mountain village in detail."
                     for n, w in enumerate(["first", "second", "third"]))
    with FakeOpenAI(script={"generate": [same]}) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, concurrency=4,
                                                max_fruitless_requests=16)
        sent = len(server.log)
    assert finished.reason == ev.FinishReason.FAILING
    assert "near duplicate" in pauses[0]
    assert sent < 60
    assert count(run_dir, "SELECT COUNT(*) FROM rejections WHERE reason = 'near_duplicate'") > 0
    assert_accounted(run_dir)


def test_instant_errors_do_not_loop(tmp_path):
    refused = {"status": 400, "body": {"error": {"message": "Invalid value for stop sequence",
                                                 "type": "invalid_request_error"}}}
    with FakeOpenAI(script={"*": [refused]}) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, concurrency=4,
                                                max_fruitless_requests=12)
        sent = len(server.log)
    assert finished.reason == ev.FinishReason.FAILING
    assert "bad_request" in pauses[0] and "No answer came back" in pauses[0]
    assert sent <= 24


def test_max_cost_stops_cleanly_and_resumes_with_a_higher_limit(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    base = ("run", "--headless", "--run-dir", str(run_dir), "--model", "m", "--target", "60",
            "--price-in", "0.01", "--price-out", "0.02", "--concurrency", "2")
    with FakeOpenAI() as server:
        first = run_cli(*base, "--base-url", server.base_url, "--max-cost", "0.2")
        assert first.returncode == 4, first.stderr
        assert "at or above --max-cost 0.2" in first.stdout
        assert "resume with a --max-cost above" in first.stdout
        hint = [x for x in first.stdout.splitlines() if "resume with a higher limit" in x][0]
        assert "--max-cost 0.2" not in hint and hint.endswith("--max-cost N")
        cost = sum(r[0] for r in sqlite3.connect(run_dir / "run.sqlite").execute(
            "SELECT cost FROM rounds"))
        assert cost >= 0.2
        before = len(server.log)
        again = run_cli(*base, "--base-url", server.base_url, "--max-cost", "0.2")
        assert again.returncode == 4 and len(server.log) == before  # no request spent
        higher = run_cli(*base, "--base-url", server.base_url, "--max-cost", "1000")
        assert higher.returncode == 0, higher.stderr
    assert count(run_dir, "SELECT COUNT(*) FROM tasks WHERE origin = 'machine'") >= 60
    state = json.loads(sqlite3.connect(run_dir / "run.sqlite").execute(
        "SELECT value FROM meta WHERE key = 'state'").fetchone()[0])
    assert state["state"] == "finished"


def test_a_higher_limit_alone_resumes_on_the_runs_prices_without_blaming_the_config(
        run_cli, tmp_path, isolated_env):
    """`--max-cost N` alone on resume counts with the run's own prices: a new run with it alone
    would be refused, which was said as "the config file is not read" (a fine, empty file)."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        first = run_cli("run", "--headless", "--run-dir", str(run_dir), "--model", "m",
                        "--base-url", server.base_url, "--target", "30", "--concurrency", "2",
                        "--price-in", "0.01", "--price-out", "0.02", "--max-cost", "0.05")
        assert first.returncode == 4, first.stderr
        resume = ("run", "--headless", "--run-dir", str(run_dir), "--max-cost", "1000")
        again = run_cli(*resume, check=True)
        assert "not read" not in again.stderr, again.stderr
        assert "this resumed run keeps" not in again.stderr, again.stderr
        # the file is still compared: an edited setting is named at its line
        Path(isolated_env["SELFINSTRUCT_CONFIG"]).write_text("concurrency = 5\n")
        third = run_cli(*resume[:-1], "2000", "--target", "40", check=True)
    assert "not read" not in third.stderr, third.stderr
    assert f"{isolated_env['SELFINSTRUCT_CONFIG']}:1: concurrency = 5 (the run: 2; " \
           "safe to change with --concurrency)" in third.stderr, third.stderr


def test_max_tokens_stops_cleanly(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        proc = run_cli("run", "--headless", "--run-dir", str(run_dir), "--model", "m",
                       "--base-url", server.base_url, "--target", "500", "--max-tokens", "20000")
    assert proc.returncode == 4, proc.stderr
    assert "at or above --max-tokens 20,000" in proc.stdout
    used = count(run_dir, "SELECT SUM(prompt_tokens + completion_tokens) FROM prompts")
    assert used >= 20000
    assert_accounted(run_dir)


def test_candidates_that_all_die_later_stop_the_run_too(tmp_path):
    """Generation works, but every instance answer is a refusal: candidates pass the filters,
    some rounds end with surplus, none adds a task. The guard counts those rounds too."""
    with FakeOpenAI(script={"instances": [REFUSAL]}) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, target=20)
        sent = len(server.log)
    assert finished.reason == ev.FinishReason.FAILING
    assert "no valid instances" in pauses[0]
    assert f"Last rejected answer (no valid instances): {REFUSAL!r}" in pauses[0]
    assert sent < 250  # two rounds' worth, not thousands
    assert count(run_dir, "SELECT COUNT(*) FROM tasks WHERE origin = 'machine'") == 0
    assert_accounted(run_dir)


def test_failing_instance_requests_stop_the_run(tmp_path):
    flagged = {"status": 400, "body": {"error": {
        "message": "Invalid prompt: your prompt was flagged as potentially violating our usage "
                   "policy.", "type": "invalid_request_error"}}}
    with FakeOpenAI(script={"instances": [flagged]}) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, target=20)
        sent = len(server.log)
    assert finished.reason == ev.FinishReason.FAILING
    assert "request failed" in pauses[0] and "bad_request" in pauses[0]
    assert sent < 250


def test_a_cost_limit_without_prices_or_with_negative_prices_is_refused(run_cli, tmp_path):
    base = ("run", "--headless", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
            "--run-dir", str(tmp_path / "run"))
    proc = run_cli(*base, "--max-cost", "0.01")
    assert proc.returncode == 2
    assert "max_cost (--max-cost) needs both prices" in proc.stderr and "--price-in" in proc.stderr
    proc = run_cli(*base, "--max-cost", "0.01", "--price-in", "-5", "--price-out", "0.1")
    assert proc.returncode == 2 and "command line: price_input_per_1k (--price-in) must be 0 or more" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_one_huge_round_pauses_part_way(tmp_path):
    """100 prompts in one round against a refusing endpoint: the guard counts each answer as it
    comes, so the run pauses after about the limit, not after the whole round."""
    with FakeOpenAI(latency=0.02, script={"*": [REFUSAL]}) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, concurrency=8,
                                                prompts_per_round=100)
        sent = len(server.log)
    assert finished.reason == ev.FinishReason.FAILING
    assert "40 requests in a row added nothing" in pauses[0]
    assert sent <= 40 + 8  # the limit, plus what was already in flight
    assert_accounted(run_dir)


def test_a_pause_on_a_proxys_413_names_it_and_the_fix(tmp_path):
    """A proxy's 413 for every instance request: the candidates stay open (taken up again, not
    settled), and the pause names the 413 and the proxy's setting, not --model and --api."""
    too_large = {"status": 413, "body": "<html><head><title>413 Request Entity Too Large"
                                        "</title></head></html>", "content_type": "text/html"}
    with FakeOpenAI(script={"instances": [too_large]}) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, concurrency=4,
                                                error_pause_seconds=2)
    assert finished.reason == ev.FinishReason.FAILING
    assert "(413: 413 Request Entity Too Large)" in pauses[0]
    assert "client_max_body_size" in pauses[0] and "--model" not in pauses[0]
    assert_accounted(run_dir)


def test_the_fruitless_pause_quotes_the_last_request_error():
    """It said "request errors since the last answer: bad_request 2" and not what they were."""
    from selfinstruct_tui.engine.config import RunConfig
    from selfinstruct_tui.engine.guards import FailureWatch, SpendGuard
    from selfinstruct_tui.engine.llm import RequestFailed

    guard = SpendGuard(RunConfig(max_fruitless_requests=3, concurrency=1))
    watch = FailureWatch(60, "u")
    guard.rejected("request_failed", "Write a poem.")
    for _ in range(2):
        watch.failure(RequestFailed("the endpoint refused the request (400: max_tokens must be "
                                    "at most 512)", kind="bad_request"))
    said = guard.fruitless(3, watch)
    assert said is not None and "request errors since the last answer: bad_request 2 (the " \
        "last: the endpoint refused the request (400: max_tokens must be at most 512))" in said
    watch.success()
    assert watch.last == ""


def test_settings_that_cannot_work_are_refused(run_cli, tmp_path):
    base = ("run", "--headless", "--model", "m", "--run-dir", str(tmp_path / "run"))
    url = ("--base-url", "http://127.0.0.1:9/v1")
    cases = [
        ((*url, "--price-in", "nan", "--price-out", "0.1"), "command line: price_input_per_1k (--price-in) must be a finite"),
        ((*url, "--max-cost", "nan", "--price-in", "1", "--price-out", "1"),
         "max_cost (--max-cost) must be a finite"),
        ((*url, "--max-cost", "1", "--price-in", "0.001"), "needs both prices"),
        ((*url, "--timeout", "0"), "command line: request_timeout (--timeout) must be more than 0"),
        ((*url, "--context-window", "5"), "context_window (--context-window) must be 0"),
        ((*url, "--max-retries", "-1"), "max_retries (--max-retries) must be 0 or more"),
        (("--base-url", "/v1"), "command line: base_url (--base-url) must be an http:// or https:// URL"),
    ]
    for extra, message in cases:
        proc = run_cli(*base, *extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
    assert not (tmp_path / "run").exists()


def test_a_base_url_holding_a_secret_is_refused_without_printing_it(run_cli, tmp_path,
                                                                     isolated_env):
    """user:password@ in --base-url failed every request as "malformed" after 7 attempts each
    (~93 s) and wrote the password into the run's store and the printed resume command; a
    query string was glued to the request path (/v1?api-key=...completions). Refused before
    anything is created, by flag, by several flags and by a config file's [[endpoints]]."""
    secret = "URLSECRET999"
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    file_text = (f'[[endpoints]]\nbase_url = "http://127.0.0.1:9/v1"\n\n'
                      f'[[endpoints]]\nbase_url = "http://u:{secret}@127.0.0.1:8/v1"\n')
    cases = [
        (("--base-url", f"http://user:{secret}@127.0.0.1:9/v1"),
         "command line: base_url (--base-url) must not hold a user name or password "
         "(http://***@127.0.0.1:9/v1): give the API key in OPENAI_API_KEY"),
        (("--base-url", "http://127.0.0.1:9/v1", "--base-url", f"http://{secret}@127.0.0.1:8/v1"),
         "must not hold a user name or password (http://***@127.0.0.1:8/v1)"),
        (("--base-url", f"http://127.0.0.1:9/v1?api-key={secret}"),
         "must not have a query string or fragment (http://127.0.0.1:9/v1?***)"),
        ((), f"{config}:5: [[endpoints]] #2: base_url must not hold a user name or password"),
    ]
    for extra, message in cases:
        if not extra:  # the config file's turn
            config.write_text(file_text)
        proc = run_cli("run", "--headless", "--model", "m", "--run-dir", str(tmp_path / "run"),
                       *extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert secret not in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_key_env_that_is_not_set_is_said_before_the_run_and_at_the_401(run_cli, tmp_path):
    """--key-env MY_TYPO_KEY (unset): every request went without a key and the 401 read
    "the endpoint refused the API key"; nothing said the variable was not set."""
    with FakeOpenAI(api_key="sk-right") as server:
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(tmp_path / "run"), "--target", "3",
                       "--key-env", "MY_TYPO_KEY")
        discovery = run_cli("run", "--headless", "--base-url", server.base_url,
                            "--run-dir", str(tmp_path / "run2"), "--key-env", "MY_TYPO_KEY")
    assert proc.returncode == 3, proc.stderr
    assert (f"note: MY_TYPO_KEY is not set in the environment: requests to {server.base_url} "
            "carry no API key") in proc.stderr
    assert "wants an API key and none was sent" in proc.stderr
    assert "MY_TYPO_KEY is not set" in proc.stderr
    assert "refused the API key" not in proc.stderr
    assert discovery.returncode == 2
    assert "wants an API key and none was sent" in discovery.stderr
    assert "MY_TYPO_KEY is not set" in discovery.stderr


def test_a_corrupt_run_database_is_named_not_a_traceback(run_cli, tmp_path, isolated_env):
    run_dir = Path(isolated_env["SELFINSTRUCT_RUNS_DIR"]) / "broken"
    run_dir.mkdir(parents=True)
    (run_dir / "run.sqlite").write_text("[{\"not\": \"a database\"}]")
    for args in (("runs",), ("export", str(run_dir), "--format", "alpaca"),
                 ("run", "--headless", "--run-dir", str(run_dir))):
        proc = run_cli(*args)
        assert "Traceback" not in proc.stderr, proc.stderr
        if args != ("runs",):
            assert proc.returncode == 2 and "not a readable run database" in proc.stderr
    assert "unreadable" in run_cli("runs").stdout


def test_a_run_database_without_the_run_tables_is_named_not_a_traceback(run_cli, tmp_path,
                                                                       isolated_env):
    """An empty run.sqlite (a run killed while creating it) or another program's database is
    valid SQLite: `runs` died with 'no such table: meta' for every run listed, export and
    seeds export with a traceback, and review said 'no quality review yet'."""
    import sqlite3

    runs = Path(isolated_env["SELFINSTRUCT_RUNS_DIR"])
    (runs / "empty").mkdir(parents=True)
    (runs / "empty" / "run.sqlite").write_bytes(b"")
    (runs / "other").mkdir()
    db = sqlite3.connect(runs / "other" / "run.sqlite")
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()
    proc = run_cli("runs")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.count("unreadable") == 2
    for name, what in (("empty", "an empty file"), ("other", "another SQLite database")):
        for args in (("export", "--format", "alpaca"), ("seeds", "export"), ("review",)):
            proc = run_cli(*args, str(runs / name))
            assert proc.returncode == 2, (args, proc.stderr)
            assert f"not a run database (no run tables in it: {what})" in proc.stderr
    # a run started there: the run's tables were added to the other program's database
    proc = run_cli("run", "--headless", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                   "--run-dir", str(runs / "other"), "--target", "5")
    assert proc.returncode == 2 and "another SQLite database, not a run's" in proc.stderr
    db = sqlite3.connect(runs / "other" / "run.sqlite")
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["notes"]
    db.close()


def test_candidates_whose_requests_got_no_answer_are_taken_up_not_lost(tmp_path):
    """An endpoint that answers the first instance requests with 503 (retries off, so each is
    given up at once): those candidates were paid for up to their classification, so they are
    `unanswered` and stay open, and a later round of the same session takes them up; none is
    settled as failed, and every one ends as a task or a rejection of its text."""
    down = {"status": 503, "body": {"error": {"message": "overloaded", "type": "server_error"}}}
    with FakeOpenAI(script={"instances": [down] * 6}, repeat_last=False) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, target=20, max_retries=0)
    assert finished.reason is ev.FinishReason.TARGET and not pauses
    unanswered = count(run_dir, "SELECT COUNT(DISTINCT task_id) FROM rejections "
                                "WHERE reason = 'unanswered'")
    assert unanswered >= 1
    assert count(run_dir, "SELECT COUNT(*) FROM rejections WHERE reason = 'request_failed'") == 0
    # each unanswered candidate was sent again and is now a task or settled otherwise
    assert count(run_dir, "SELECT COUNT(*) FROM candidates WHERE state = 'open' AND task_id IN "
                          "(SELECT task_id FROM rejections WHERE reason = 'unanswered')") == 0
    # taken up in this session while its own reservation may still be in the index: never
    # rejected as a near-duplicate of itself
    assert count(run_dir, "SELECT COUNT(*) FROM rejections WHERE similar_id = task_id") == 0
    taken_up = count(run_dir, "SELECT COUNT(DISTINCT r.task_id) FROM rejections r JOIN prompts p "
                              "ON p.task_ref = r.task_id AND p.kind = 'instances' AND "
                              "p.response IS NOT NULL WHERE r.reason = 'unanswered'")
    assert taken_up == unanswered
    assert_accounted(run_dir)


def test_a_high_concurrency_run_is_not_paused_by_answers_that_arrive_first(tmp_path):
    """With 64 requests in flight, the first 50 generation answers add nothing (refusals) before
    any task is accepted. That is not a loop to stop: the limit is the concurrency when that is
    above max_fruitless_requests (40), and the run reaches its target."""
    with FakeOpenAI(script={"generate": [REFUSAL] * 50}, repeat_last=False) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, target=30, concurrency=64,
                                                prompts_per_round=64)
    assert not pauses and finished.reason is ev.FinishReason.TARGET
    assert count(run_dir, "SELECT COUNT(*) FROM rejections WHERE reason = 'refusal'") >= 50
    assert_accounted(run_dir)


def test_an_endpoint_that_never_answers_is_named_as_the_problem(tmp_path):
    """Every request times out or is refused a connection: the pause says the endpoint gave no
    answer and names it, instead of advising on --model and the rejections."""
    down = {"status": 502, "body": "Bad Gateway", "content_type": "text/plain"}
    with FakeOpenAI(script={"*": [down]}) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, concurrency=4, max_retries=0,
                                                max_fruitless_requests=8,
                                                error_pause_seconds=3600)
        url = server.base_url
    assert finished.reason is ev.FinishReason.FAILING
    assert "the endpoint gave no answer" in pauses[0] and url in pauses[0]
    assert "server_error" in pauses[0] and "--model" not in pauses[0]


def test_the_first_rounds_ask_for_no_more_prompts_than_the_target_could_use(tmp_path):
    """Before a run knows what a prompt yields, a round of the default size (one prompt per
    request in flight) asks for at most ceil(needed / 7) prompts, 7 being the new instructions
    each asks for; a size set with --prompts-per-round is kept."""
    runs = {}
    for name, cfg in (("default", {}), ("set", {"prompts_per_round": 64})):
        with FakeOpenAI() as server:
            store, config = new_run(tmp_path / name, server.base_url, target=20, concurrency=64,
                                    **cfg)
            finished = Engine(store, config).run()
            store.close()
            runs[name] = server.kinds().count("generate")
        assert finished.reason == "target"
        assert_accounted(tmp_path / name)
    assert count(tmp_path / "default", "SELECT prompts FROM rounds WHERE round = 1") == 3
    assert count(tmp_path / "set", "SELECT prompts FROM rounds WHERE round = 1") == 64
    assert runs["default"] < 20 <= 64 <= runs["set"]
    surplus = "SELECT COUNT(*) FROM rejections WHERE reason = 'surplus'"
    assert count(tmp_path / "default", surplus) < count(tmp_path / "set", surplus)


def test_the_yield_per_prompt_counts_only_answered_generation_prompts(tmp_path):
    """After an outage the yield per prompt (which sizes the last rounds) is accepted tasks per
    *answered* generation prompt: counting the failed ones made it look low, and the rounds
    after an outage asked for more prompts than the target needed. Checked against the store:
    each round's size is what the answered prompts of the rounds up to number-2 give, in the
    session that ran it and in a session that resumes the run."""
    import math

    run_dir = tmp_path / "run"
    refused = {"status": 400, "body": {"error": {"message": "temporarily refused"}}}
    sizes: list[tuple[int, int, int]] = []  # (round, tasks still needed, prompts asked)
    original = Engine._round_size

    def spy(self, number):  # type: ignore[no-untyped-def]
        needed = self.config.target - self._in_work()
        size = original(self, number)
        sizes.append((number, needed, size))
        return size

    with FakeOpenAI(script={"generate": [refused] * 6}, repeat_last=False) as server:
        store, config = new_run(run_dir, server.base_url, target=60, concurrency=16,
                                max_retries=0)
        Engine._round_size = spy  # type: ignore[method-assign]
        try:
            engine = Engine(store, config)
            finished = engine.run()
        finally:
            Engine._round_size = original  # type: ignore[method-assign]
        live_totals = dict(engine._totals)
        store.close()
    assert finished.reason == "target"
    assert_accounted(run_dir)
    conn = sqlite3.connect(run_dir / "run.sqlite")
    answered = dict(conn.execute(
        "SELECT round, COUNT(*) FROM prompts WHERE kind = 'generate' AND response IS NOT NULL "
        "GROUP BY round").fetchall())
    accepted = dict(conn.execute("SELECT round, accepted FROM rounds").fetchall())
    failed = conn.execute("SELECT COUNT(*) FROM prompts WHERE kind = 'generate' AND "
                          "response IS NULL").fetchone()[0]
    conn.close()
    assert failed == 6  # the outage: six generation prompts brought no answer
    checked = 0
    for number, needed, size in sizes:
        upto = [r for r in accepted if r <= number - 2]
        got = sum(accepted[r] for r in upto)
        asked = sum(answered.get(r, 0) for r in upto)
        if needed <= 0 or not (got and asked):
            continue
        assert size == min(16, max(1, math.ceil(needed / (got / asked)))), (number, sizes)
        checked += 1
    assert checked >= 1
    # A resumed session computes the same yields from the store.
    resumed = Engine(RunStore(run_dir), config)
    resumed._load_pool()
    resumed._load_totals()
    assert {r: resumed._totals[r] for r in live_totals} == live_totals
    resumed.store.close()


def test_a_model_that_only_thinks_pauses_with_the_reason_and_the_fix(tmp_path):
    """Every classification answer cut off inside <think>: the pause names that and the fix,
    not the endpoint or --model."""
    with FakeOpenAI(script={"classify": [{"text": "<think>\nIs this a classification task? "
                                                  "Let me think about what", "finish_reason":
                                          "length"}]}) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, concurrency=2,
                                                max_fruitless_requests=6)
    assert finished.reason == ev.FinishReason.FAILING
    assert "unknown classification" in pauses[0]
    assert "reasoning only" in pauses[0] and "classification_max_tokens" in pauses[0]
    assert "Check --model" not in pauses[0]
    assert_accounted(run_dir)


NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


def test_extra_body_turns_a_thinking_models_thinking_off_and_rides_on_every_request(
        tmp_path, run_cli):
    """Qwen3 behind vLLM's reasoning parser thinks by default, and every answer is cut off
    inside it: the run pauses and says to turn thinking off with --extra-body. With the flag
    every request carries the field, the run reaches its target, and the field is one a resume
    may change (the paused run is fixed by resuming it with the flag)."""
    with FakeOpenAI(thinking=True) as server:
        run_dir, finished, pauses = run_guarded(tmp_path, server, api="chat", concurrency=2,
                                                max_fruitless_requests=6)
        assert finished.reason == ev.FinishReason.FAILING
        assert "reasoning only" in pauses[0] and "--extra-body" in pauses[0], pauses[0]
        assert "enable_thinking" in pauses[0]
        paid = server.requests
        proc = run_cli("run", "--headless", "--run-dir", str(run_dir), "--extra-body",
                       json.dumps(NO_THINKING), check=True)
        assert "resum" in (proc.stdout + proc.stderr).lower()
        later = [body for _, _, body in server.log[paid:]]
    conn = sqlite3.connect(run_dir / "run.sqlite")
    accepted = conn.execute("SELECT COUNT(*) FROM tasks WHERE origin = 'machine' AND "
                            "status = 'active'").fetchone()[0]
    saved = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
    conn.close()
    assert accepted >= 50 and saved["extra_body"] == NO_THINKING
    assert later and all(body["chat_template_kwargs"] == NO_THINKING["chat_template_kwargs"]
                         for body in later)
    # the run's own fields are still the run's: the extra ones only add to them
    assert {body["temperature"] for body in later} <= {0.0, 0.7}
    assert_accounted(run_dir)


def test_run_help_says_the_limits_units_and_exit_codes(run_cli):
    """`--max-cost 0` ran without a limit and --help did not say so (nor the prices' unit, nor
    the exit codes a script checks)."""
    text = " ".join(run_cli("run", "--help", check=True).stdout.split())
    assert "--price-in/out; 0: no limit, the default)" in text
    assert "many tokens in all (0: no limit, the default)" in text
    assert "USD per 1K input (prompt) tokens" in text
    assert ("exit codes: 0 target reached, 1 the run store cannot be written (a full disk), 2 "
            "bad input or settings, 3 endpoint failing or a spend guard paused the run, 4 a "
            "spend limit (--max-cost, --max-tokens) was reached, 130 stopped by the user") in text
