"""The same command resumes: --seeds on resume, the printed resume command, a detach that returns
only once the engine runs (or failed), and a stop that does not wait on retries."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_command, shown
from fake_openai import FakeOpenAI
from selfinstruct_tui.engine.control import status_of
from selfinstruct_tui.engine.seeds import bundled_seeds_path, load_seeds, write_seeds
from selfinstruct_tui.engine.store import RunStore, is_run_dir, seed_tasks_to_pool
from test_detach_attach import state_of as state
from test_run_e2e import count_machine, resume_line, wait_for


def seed_file(tmp_path: Path, name: str, tasks) -> Path:
    path = tmp_path / name
    write_seeds(path, tasks)
    return path


def test_the_same_seeds_resume_and_different_seeds_are_refused(run_cli, fake_server, tmp_path):
    every = load_seeds(bundled_seeds_path())
    seeds = every[:20]
    original = seed_file(tmp_path, "seeds.jsonl", seeds)
    run_dir = tmp_path / "run"
    base = ("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir))
    run_cli(*base, "--seeds", str(original), "--target", "5", check=True)
    again = run_cli(*base, "--seeds", str(original), "--target", "10", check=True)
    assert "resuming run" in again.stdout and count_machine(run_dir) >= 10

    changed = seeds[:12] + [seeds[13]] + seeds[12:13] + seeds[14:] + [every[30]]
    other = seed_file(tmp_path, "other.jsonl", changed)
    refused = run_cli(*base, "--seeds", str(other), "--target", "20")
    assert refused.returncode == 2
    assert "the file has 21 tasks, the run 20" in refused.stderr
    assert f"first difference at task 13 (instruction): file {seeds[13].id}" in refused.stderr
    assert "Leave out --seeds" in refused.stderr
    assert count_machine(run_dir) < 20  # nothing ran

    # The run's seeds edited on the fly (as the seed editor does): the original file and a
    # file with the edited set both resume; the "no input" spelling does not matter.
    edited = seeds[:19]
    store = RunStore(run_dir)
    store.replace_seeds(seed_tasks_to_pool(edited, store.max_used_id() + 1))
    store.close()
    run_cli(*base, "--seeds", str(original), "--target", "12", check=True)
    respelled = [t for t in edited]
    for task in respelled:
        task.instances = [type(i)(i.input or "<noinput>", i.output) for i in task.instances]
    run_cli(*base, "--seeds", str(seed_file(tmp_path, "edited.jsonl", respelled)),
            "--target", "14", check=True)
    assert count_machine(run_dir) >= 14


def test_a_config_file_edited_before_a_resume_is_named_where_the_run_keeps_its_own(
        run_cli, fake_server, isolated_env, tmp_path):
    """A resumed run keeps its settings (flags change the safe ones): a config file edited in
    between looked applied and was not. Each file setting the run does not take is named at its
    line with the run's value and how it can change; one also given as a flag is not."""
    run_dir = tmp_path / "run"
    base = ("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir))
    run_cli(*base, "--target", "3", check=True)
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    config.write_text('concurrency = 64\nthreshold = 0.5\nmax_retries = 9\n\n'
                      '[extra_body]\ntop_k = 20\n')
    proc = run_cli(*base, "--target", "5", "--max-retries", "9", check=True)
    notes = proc.stderr.splitlines()
    start = notes.index("note: this resumed run keeps its own settings where the config file "
                        "or the environment differs (they are for new runs):")
    assert notes[start + 1:start + 4] == [
        f"  {config}:1: concurrency = 64 (the run: 8; safe to change with --concurrency)",
        f"  {config}:2: threshold = 0.5 (the run: 0.7; fixed once a run starts: a new run "
        "takes it)",
        f'  {config}:5: extra_body = {{"top_k": 20}} (the run: {{}}; safe to change with '
        "--extra-body)"], proc.stderr
    assert "max_retries" not in proc.stderr  # given as a flag too: the run takes it
    stored = json.loads(sqlite3.connect(run_dir / "run.sqlite").execute(
        "SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
    assert (stored["concurrency"], stored["threshold"], stored["max_retries"],
            stored["extra_body"]) == (8, 0.7, 9, {})
    # the file as the run has it: nothing to say; a broken file: said, and the run resumes
    config.write_text("concurrency = 8\n")
    assert "note: this resumed" not in run_cli(*base, "--target", "6", check=True).stderr
    config.write_text("concurrency = \n")
    proc = run_cli(*base, "--target", "7", check=True)
    assert f"note: the config file is not read for a resumed run (new runs stop on it): " \
           f"{config}:1: not valid TOML" in proc.stderr, proc.stderr
    # a good file and a bad environment variable: the environment is named, not the file
    config.write_text("concurrency = 8\n")
    proc = run_cli(*base, "--target", "8", check=True, env={"OPENAI_BASE_URL": "htp:/bad"})
    assert "note: the environment's settings are not used for a resumed run (new runs stop on " \
           "it): environment variable OPENAI_BASE_URL:" in proc.stderr, proc.stderr
    assert "config file is not read" not in proc.stderr


def headless(base_url: str, run_dir: Path) -> tuple[str, ...]:
    """`run --headless` of `run_dir` at `base_url` (model m): add the target and the rest."""
    return ("run", "--headless", "--base-url", base_url, "--model", "m", "--run-dir",
            str(run_dir))


def test_the_bundled_seed_file_resumes_a_run_started_without_seeds(run_cli, fake_server,
                                                                  tmp_path):
    base = headless(fake_server.base_url, tmp_path / "run")
    run_cli(*base, "--target", "3", check=True)
    run_cli(*base, "--seeds", str(bundled_seeds_path()), "--target", "6", check=True)


def test_a_run_without_run_dir_prints_the_command_that_resumes_it(isolated_env, tmp_path):
    with FakeOpenAI(latency=0.05) as server:
        args = cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                           "--target", "400")
        proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        runs = Path(isolated_env["SELFINSTRUCT_RUNS_DIR"])
        wait_for(lambda: runs.exists() and any(count_machine(d) >= 5 for d in runs.iterdir()))
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=60)
        assert proc.returncode == 130, errs
        printed = resume_line(out)
        [run_dir] = list(runs.iterdir())
        assert printed.endswith(f"--run-dir {shlex.quote(str(run_dir))}")
        before = count_machine(run_dir)
        resumed = subprocess.run(shlex.split(printed), env=isolated_env,
                                 capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run in {run_dir}" in resumed.stdout
    assert count_machine(run_dir) >= 400 > before
    assert list(runs.iterdir()) == [run_dir]  # no new run was started


def test_detach_returns_once_the_engine_runs(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        proc = run_cli("run", "--detach", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(run_dir), "--target", "100000", timeout=60)
        try:
            assert proc.returncode == 0, proc.stderr
            # `attach` typed right after finds a run directory with a live engine
            assert is_run_dir(run_dir)
            meta = state(run_dir)
            assert meta["state"] == "running"
            assert meta["pid"] == int((run_dir / "engine.pid").read_text())
        finally:
            os.kill(int((run_dir / "engine.pid").read_text()), signal.SIGKILL)


def test_a_detached_run_that_fails_to_start_says_why_and_is_listed_failed(run_cli, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_dir = tmp_path / "run"
    proc = run_cli("run", "--detach", "--base-url", f"http://127.0.0.1:{port}/v1",
                   "--run-dir", str(run_dir), "--target", "10", timeout=60)
    assert proc.returncode == 2
    assert "failed to start" in proc.stderr
    assert "cannot list the models" in proc.stderr  # the log's tail
    listing = run_cli("runs", check=True).stdout
    [row] = [line for line in listing.splitlines() if str(run_dir) in line]
    assert "failed" in row
    # The same command, with the endpoint up, starts the run afresh.
    with FakeOpenAI() as server:
        again = run_cli("run", "--headless", "--base-url", server.base_url, "--run-dir",
                        str(run_dir), "--target", "3")
    assert again.returncode == 0, again.stderr
    assert "starting run" in again.stdout


@pytest.mark.parametrize("second_signal", [False, True])
def test_a_stop_gives_requests_in_flight_a_bounded_grace(isolated_env, tmp_path,
                                                         second_signal):
    """An endpoint that never answers: SIGTERM ends the run after the grace (or at once on a
    second signal), and the requests are recorded as abandoned."""
    run_dir = tmp_path / "run"
    grace = "60" if second_signal else "1"
    with FakeOpenAI(script={"*": [{"hang": 120}]}) as server:
        args = cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                           "--run-dir", str(run_dir), "--target", "10", "--concurrency", "2",
                           "--stop-grace", grace)
        proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(server.log) >= 2)
        proc.send_signal(signal.SIGTERM)
        if second_signal:
            wait_for(lambda: state(run_dir).get("state") == "stopping")
            proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=30)  # bounded: never waits on the hung requests
    assert proc.returncode == 130, errs
    assert "stopped at 0/10" in out
    conn = sqlite3.connect(run_dir / "run.sqlite")
    errors = [r[0] for r in conn.execute("SELECT error FROM prompts")]
    assert errors and all(e and e.startswith("abandoned in flight") for e in errors)
    assert json.loads(conn.execute("SELECT value FROM meta WHERE key = 'state'")
                      .fetchone()[0])["state"] == "stopped"


def test_a_round_line_says_which_requests_a_stop_kept_from_being_sent(isolated_env, tmp_path):
    """A stop while prompts waited for a concurrency slot: the round line read "from 3 prompts
    ... 0 tokens", as if three were paid for; the two that never left are said now."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [{"hang": 120}]}) as server:
        args = cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                           "--run-dir", str(run_dir), "--target", "10", "--concurrency", "1",
                           "--prompts-per-round", "3", "--stop-grace", "1")
        proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(server.log) >= 1)
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=30)
    assert proc.returncode == 130, errs
    line = next(line for line in out.splitlines() if line.startswith("round 1:"))
    assert "from 3 prompts" in line and "2 requests not sent (the run stopped first)" in line
    conn = sqlite3.connect(run_dir / "run.sqlite")
    errors = sorted(r[0] for r in conn.execute("SELECT error FROM prompts"))
    assert len(errors) == 3 and errors[0].startswith("abandoned before sending")
    assert errors[1].startswith("abandoned before sending")
    assert errors[2].startswith("abandoned in flight")


def test_a_detached_run_whose_endpoint_is_gone_stops_without_waiting_on_retries(run_cli,
                                                                                tmp_path):
    run_dir = tmp_path / "run"
    server = FakeOpenAI(latency=0.05).start()
    proc = run_cli("run", "--detach", "--base-url", server.base_url, "--model", "m",
                   "--run-dir", str(run_dir), "--target", "100000", "--max-retries", "20",
                   "--stop-grace", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr
    pid = int((run_dir / "engine.pid").read_text())
    try:
        wait_for(lambda: count_machine(run_dir) >= 3)
        server.close()  # the endpoint goes away: every request now waits to retry
        wait_for(lambda: sqlite3.connect(run_dir / "run.sqlite").execute(
            "SELECT COUNT(*) FROM retries").fetchone()[0] >= 2)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and state(run_dir).get("state") != "stopped":
            time.sleep(0.1)
        assert state(run_dir).get("state") == "stopped"
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert "stopped at" in (run_dir / "run.log").read_text()


def test_a_run_is_driven_by_one_process_at_a_time(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        base = ("--base-url", server.base_url, "--model", "m", "--run-dir", str(run_dir),
                "--target", "100000")
        proc = run_cli("run", "--detach", *base, timeout=60)
        assert proc.returncode == 0, proc.stderr
        pid = int((run_dir / "engine.pid").read_text())
        try:
            for mode in ("--headless", "--detach"):
                second = run_cli("run", mode, *base, timeout=60)
                assert second.returncode == 2, second.stdout
                assert f"is being run by process {pid}" in second.stderr
                assert shown("attach", str(run_dir)) in second.stderr
            assert state(run_dir)["pid"] == pid  # untouched
        finally:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: state(run_dir).get("state") == "stopped", timeout=30)
        # the lock goes with the process: the same command resumes now
        again = run_cli("run", "--headless", *base[:-1], "150", timeout=120)
    assert again.returncode == 0, again.stderr


def assert_taken_up(conn, task_ids, after_round) -> None:
    """Each candidate was taken up by a later round: accepted, or recorded there again."""
    accepted = {r[0] for r in conn.execute("SELECT id FROM tasks")}
    later = {r[0] for r in conn.execute("SELECT task_id FROM rejections WHERE round > ?",
                                        (after_round,))}
    missing = [t for t in task_ids if t not in accepted | later]
    assert missing == []


def test_work_a_stop_left_open_is_taken_up_not_paid_twice(tmp_path):
    """The endpoint stops answering instance requests; the run is stopped with candidates whose
    generation and classification are paid for. The next session takes them up first and
    reuses the classification answers."""
    import threading

    from selfinstruct_tui.engine.engine import Engine
    from test_real_answers import assert_accounted, machine
    from tui_helpers import new_run

    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"instances": [{"hang": 60}]}) as stuck:
        store, config = new_run(run_dir, stuck.base_url, target=10, concurrency=4,
                                stop_grace=0.2)
        engine = Engine(store, config)
        thread = threading.Thread(target=engine.run)
        thread.start()
        wait_for(lambda: stuck.kinds().count("instances") >= 2)
        engine.stop()
        thread.join(timeout=30)
        store.close()
    conn = sqlite3.connect(run_dir / "run.sqlite")
    open_ids = [r[0] for r in conn.execute(
        "SELECT task_id FROM candidates WHERE state = 'open' ORDER BY task_id")]
    classified = {r[0] for r in conn.execute(
        "SELECT task_ref FROM prompts WHERE kind = 'classify' AND response IS NOT NULL")}
    assert len(open_ids) >= 2 and set(open_ids) & classified
    assert conn.execute("SELECT COUNT(*) FROM rejections WHERE reason IN ('abandoned', "
                        "'surplus')").fetchone()[0] >= len(open_ids)
    last_round = conn.execute("SELECT MAX(round) FROM rounds").fetchone()[0]
    with FakeOpenAI() as server:
        store = RunStore(run_dir)
        config.base_url = server.base_url
        Engine(store, config).run()
        store.close()
        asked_again = {body.get("prompt", "")[-200:] for _, kind, body in server.log
                       if kind == "classify"}
    resumed = conn.execute("SELECT prompts, candidates FROM rounds WHERE round = ?",
                           (last_round + 1,)).fetchone()
    assert resumed == (0, len(open_ids))  # taken up first, without generating
    instructions = dict(conn.execute("SELECT task_id, instruction FROM candidates"))
    for tid in set(open_ids) & classified:  # their classification was not asked again
        assert not any(instructions[tid] in prompt for prompt in asked_again)
    assert_taken_up(conn, open_ids, last_round)
    accepted = {t["instruction"] for t in machine(run_dir)}
    assert {instructions[t] for t in open_ids} <= accepted | {
        r[0] for r in conn.execute("SELECT candidate FROM rejections WHERE round = ?",
                                   (last_round + 1,))}
    assert_accounted(run_dir)


@pytest.mark.parametrize("commit_delay", [0.0, 0.05])
def test_every_request_is_in_the_store_before_it_reaches_the_endpoint(tmp_path, monkeypatch,
                                                                       commit_delay):
    """Commits are grouped per event-loop iteration (RunStore.defer_commits), yet a request
    waits for its record's commit: the endpoint, reading the run database from another
    connection as each request arrives, finds every prompt there already. With the group
    commit held back 50 ms, a sender that did not wait for it (or check that it ran) would
    reach the endpoint first."""
    import threading

    from selfinstruct_tui.engine.engine import Engine
    from selfinstruct_tui.engine.store import RunStore

    if commit_delay:
        defer = RunStore.defer_commits

        def late(self, schedule):  # type: ignore[no-untyped-def]
            if schedule is None:
                return defer(self, None)
            loop = schedule.__self__
            return defer(self, lambda flush: loop.call_later(commit_delay, flush))

        monkeypatch.setattr(RunStore, "defer_commits", late)
    from test_real_answers import assert_accounted
    from tui_helpers import new_run

    run_dir = tmp_path / "run"
    arrived: list[str] = []
    missing: list[str] = []
    lock = threading.Lock()
    with FakeOpenAI() as server:
        store, config = new_run(run_dir, server.base_url, target=40, concurrency=32,
                                api="completions")
        reader = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True,
                                 check_same_thread=False)

        def check(kind: str, prompt: str) -> None:
            with lock:
                arrived.append(kind)
                if reader.execute("SELECT 1 FROM prompts WHERE prompt = ? LIMIT 1",
                                  (prompt,)).fetchone() is None:
                    missing.append(kind)

        server.on_request = check
        Engine(store, config).run()
        store.close()
        reader.close()
    assert len(arrived) >= 80 and {"generate", "classify", "instances"} <= set(arrived)
    assert missing == []
    assert_accounted(run_dir)


def killed_while_stuck(env: dict, run_dir: Path, kind: str, n: int,
                       *flags: str) -> tuple[list[str], str]:
    """A headless run against a server that never answers `kind` requests, killed (SIGKILL)
    once `n` of them are in flight: (its command, the gone server's base URL)."""
    with FakeOpenAI(script={kind: [{"hang": 120}]}) as stuck:
        args = cli_command("run", "--headless", "--base-url", stuck.base_url, "--model", "m",
                           "--run-dir", str(run_dir), *flags)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: stuck.kinds().count(kind) >= n)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    return args, stuck.base_url


def test_a_run_killed_while_retrying_counts_the_attempts_and_retries_it_made(isolated_env,
                                                                              tmp_path):
    """Killed while requests were being retried (5xx): their records said one attempt and the
    interrupted round's retries {}, though the retries table held the attempts."""
    run_dir = tmp_path / "run"
    failing = {"status": 503, "body": {"error": {"message": "overloaded"}}}
    with FakeOpenAI(script={"classify": [failing]}) as server:
        proc = subprocess.Popen(cli_command("run", "--headless", "--base-url", server.base_url,
                                            "--model", "m", "--run-dir", str(run_dir),
                                            "--target", "10", "--concurrency", "4"),
                                env=isolated_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: server.kinds().count("classify") >= 8)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    store = RunStore(run_dir)
    closed = store.recover_interrupted()
    store.close()
    conn = sqlite3.connect(run_dir / "run.sqlite")
    retried = dict(conn.execute("SELECT prompt_id, COUNT(*) FROM retries GROUP BY prompt_id"))
    assert retried and closed
    for prompt_id, attempts in conn.execute(
            "SELECT id, attempts FROM prompts WHERE error LIKE 'interrupted%'"):
        assert attempts == 1 + retried.get(prompt_id, 0), prompt_id
    for number, retries in conn.execute("SELECT round, retries FROM rounds"):
        counted = dict(conn.execute("SELECT cause, COUNT(*) FROM retries WHERE round = ? "
                                    "GROUP BY cause", (number,)))
        assert json.loads(retries) == counted, number


def test_a_killed_run_closes_its_rounds_and_requests_and_takes_up_its_candidates(
        isolated_env, tmp_path):
    from test_real_answers import assert_accounted

    run_dir = tmp_path / "run"
    # a round larger than the target needs: surplus is recorded before the crash
    args, stuck_url = killed_while_stuck(isolated_env, run_dir, "instances", 3, "--target", "10",
                                         "--concurrency", "16", "--prompts-per-round", "16")
    conn = sqlite3.connect(run_dir / "run.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM rounds WHERE status = 'running'").fetchone()[0]
    assert conn.execute("SELECT COUNT(*) FROM prompts WHERE finished IS NULL").fetchone()[0]
    assert conn.execute("SELECT COUNT(*) FROM rejections WHERE reason = 'surplus'").fetchone()[0]
    with FakeOpenAI() as server:
        args[args.index(stuck_url)] = server.base_url
        done = subprocess.run(args, env=isolated_env, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    assert "interrupted by the end of the last process" in done.stdout
    assert conn.execute("SELECT COUNT(*) FROM rounds WHERE status = 'running'").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM prompts WHERE finished IS NULL").fetchone()[0] == 0
    errors = {r[0] for r in conn.execute("SELECT error FROM prompts WHERE error IS NOT NULL")}
    assert any(e.startswith("interrupted") for e in errors)
    interrupted = conn.execute("SELECT COUNT(*) FROM rejections WHERE reason = 'interrupted'"
                               ).fetchone()[0]
    assert interrupted >= 3
    was_open = [r[0] for r in conn.execute(
        "SELECT task_id FROM rejections WHERE reason = 'interrupted'")]
    assert_taken_up(conn, was_open, conn.execute(
        "SELECT MAX(round) FROM rounds WHERE status = 'interrupted'").fetchone()[0])
    assert_accounted(run_dir)


def test_surplus_is_taken_up_before_new_prompts_when_the_target_rises(run_cli, fake_server,
                                                                      tmp_path):
    from test_real_answers import assert_accounted

    run_dir = tmp_path / "run"
    base = ("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir), "--concurrency", "8", "--prompts-per-round", "8")
    run_cli(*base, "--target", "5", check=True)
    conn = sqlite3.connect(run_dir / "run.sqlite")
    kept = conn.execute("SELECT COUNT(*) FROM candidates WHERE state = 'open'").fetchone()[0]
    assert kept > 0  # surplus: paid for, not sent on
    # Seeds edited by an older version, whose new ids could collide with open candidates.
    store = RunStore(run_dir)
    store.replace_seeds(seed_tasks_to_pool(load_seeds(bundled_seeds_path())[:30],
                                           store.max_task_id() + 1))
    store.close()
    last = conn.execute("SELECT MAX(round) FROM rounds").fetchone()[0]
    more = run_cli(*base, "--target", "12", check=True)
    assert f"round {last + 1}: " in more.stdout and "taken up again" in more.stdout
    first = conn.execute("SELECT prompts, candidates FROM rounds WHERE round = ?",
                         (last + 1,)).fetchone()
    assert first == (0, kept)
    assert_accounted(run_dir)
    # The rejections export says what became of each row's candidate: the surplus of the first
    # session was taken up, so those rows are not where those candidates ended.
    out = run_cli("export", str(run_dir), "--format", "rejections", "-o", "-", check=True)
    exported = [json.loads(line) for line in out.stdout.splitlines()]
    surplus = [r for r in exported if r["reason"] == "surplus" and r["round"] <= last]
    assert len(surplus) == kept
    # checked by text: a candidate whose id a seed took goes on under a new one
    machine = {t for (t,) in conn.execute("SELECT instruction FROM tasks WHERE origin = 'machine'")}
    ended = {r["candidate"] for r in exported if r["outcome"] == "rejected"}
    open_now = {t for (t,) in conn.execute("SELECT instruction FROM candidates WHERE state = "
                                           "'open'")}
    for row in surplus:
        assert row["outcome"] == ("accepted" if row["candidate"] in machine else "rejected later"
                                  if row["candidate"] in ended else "open"), row
        assert (row["outcome"] == "open") == (row["candidate"] in open_now), row
    assert any(r["outcome"] == "accepted" for r in surplus)
    finals = [r for r in exported if r["outcome"] == "rejected"]
    assert all(r["level"] == "candidate" and r["reason"] != "surplus" for r in finals)
    assert {r["outcome"] for r in exported if r["level"] == "instance"} <= {"instance dropped"}


def test_an_abandoned_request_records_its_attempts(tmp_path):
    import threading

    from selfinstruct_tui.engine.engine import Engine
    from tui_helpers import new_run

    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"instances": [{"hang": 30}]}) as stuck:
        store, config = new_run(run_dir, stuck.base_url, target=10, concurrency=2,
                                request_timeout=0.3, max_retries=5, stop_grace=0.2)
        engine = Engine(store, config)
        thread = threading.Thread(target=engine.run)
        thread.start()
        wait_for(lambda: sqlite3.connect(run_dir / "run.sqlite").execute(
            "SELECT COUNT(*) FROM retries WHERE cause = 'timeout'").fetchone()[0] >= 2)
        engine.stop()
        thread.join(timeout=30)
        store.close()
    conn = sqlite3.connect(run_dir / "run.sqlite")
    rows = conn.execute("SELECT attempts, error FROM prompts WHERE kind = 'instances'").fetchall()
    retried = {r[0] for r in conn.execute("SELECT prompt_id FROM retries")}
    assert rows and all(e.startswith("abandoned") for _, e in rows)
    for prompt_id, attempts, error, endpoint in conn.execute(
            "SELECT id, attempts, error, endpoint FROM prompts WHERE kind = 'instances'"):
        if prompt_id in retried:
            assert attempts >= 1 and not error.startswith("abandoned before sending"), error
            assert endpoint == stuck.base_url  # where its attempts went, as a failed one says


def test_a_finished_request_record_is_the_one_the_store_reads_back(tmp_path):
    """`finish_prompt` builds the finished record field by field (not with `replace`): every
    field, the request's own and the outcome's, must come back as the store reads the row."""
    import dataclasses

    from selfinstruct_tui.engine.store import PromptRecord, RunStore

    store = RunStore(tmp_path)
    sent = store.add_prompt(round=3, kind="instances", prompt="Task: x\nExample 1\n",
                            examples=((7, "seed", "Write a haiku."),), task_ref=41)
    done = store.finish_prompt(sent, response="Input: a\nOutput: b", finish_reason="length",
                               latency=0.25, prompt_tokens=11, completion_tokens=5, attempts=2,
                               usage_reported=False, structured=True,
                               endpoint="http://127.0.0.1:9/v1", model="m")
    assert done == store.prompt(sent.id)
    defaults = PromptRecord(0, 0, "generate", "", (), None, 0.0)
    changed = {f.name for f in dataclasses.fields(PromptRecord)
               if getattr(done, f.name) != getattr(defaults, f.name)}
    # every field but `error` (None for an answer) was given a value that is not its default
    assert changed == {f.name for f in dataclasses.fields(PromptRecord)} - {"error"}
    store.close()


def test_a_round_a_killed_process_left_running_is_shown_as_it_is_closed(isolated_env, run_cli,
                                                                         tmp_path):
    """kill -9 during round 1: the next session closes it as interrupted. It printed no line
    for it (the TUI's rounds table skipped it, and its candidates were not in the rejections
    pane), so the table jumped from the round before to the first new one."""
    run_dir = tmp_path / "run"
    killed_while_stuck(isolated_env, run_dir, "classify", 2, "--target", "5", "--concurrency", "4")
    with FakeOpenAI() as server:
        done = run_cli("run", "--headless", "--base-url", server.base_url, "--run-dir",
                       str(run_dir), "--target", "5")
    assert done.returncode == 0, done.stderr
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("round 1:")]
    assert line.endswith("(interrupted: the last process ended during it)"), line
    conn = sqlite3.connect(run_dir / "run.sqlite")
    kept = conn.execute("SELECT COUNT(*) FROM rejections WHERE round = 1 AND reason = "
                        "'interrupted'").fetchone()[0]
    assert kept > 0 and f"kept open {kept}: interrupted {kept}" in line
    # this session's tokens do not count the killed process's
    assert "this session" in done.stdout


def test_a_refused_resume_lists_what_is_safe_to_change_and_a_lower_target_is_said(
        run_cli, fake_server, tmp_path):
    run_dir = tmp_path / "run"
    base = headless(fake_server.base_url, run_dir)
    run_cli(*base, "--target", "3", check=True)
    refused = run_cli(*base, "--threshold", "0.5")
    assert refused.returncode == 2
    lower = run_cli(*base, "--target", "2", check=True)  # a target already reached
    held = sqlite3.connect(run_dir / "run.sqlite").execute(
        "SELECT COUNT(*) FROM tasks WHERE origin = 'machine'").fetchone()[0]
    assert (f"the run already holds {held} machine tasks, at or above its target of 2: nothing "
            "to generate (give a higher --target to go on)") in lower.stdout + lower.stderr
    safe = refused.stderr.split("(Safe to change on resume: ", 1)[1]
    assert "--rpm" in safe and "--timeout" in safe and "--target" in safe
    assert "requests_per_minute" not in safe and "request_timeout" not in safe
    assert "in the config file also batch_lost_after_seconds, endpoints, error_pause_seconds" \
        in safe


def _file_size_limit(limit: int):
    """A subprocess's preexec_fn: files it writes cannot grow past `limit` bytes (write fails
    with EFBIG, as with a full disk: SQLite says "database or disk is full")."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_store_that_cannot_be_written_stops_the_run_at_once_and_it_resumes(
        isolated_env, run_cli, tmp_path):
    """A full disk under the run directory: each deferred commit failed as an event-loop
    callback (a logged traceback), the engine went on sending requests whose answers could not
    be recorded, and SIGTERM could not end it. Now the first failed write stops the run at once,
    naming the file, the free space and the fix; requests already sent are at most the ones in
    flight; freed, the same command resumes and everything is accounted for."""
    from test_real_answers import assert_accounted

    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        proc = subprocess.run(
            cli_command(*headless(server.base_url, run_dir), "--target", "3000",
                        "--concurrency", "8"),
            env=isolated_env, capture_output=True, text=True, timeout=120,
            preexec_fn=_file_size_limit(1_500_000))
        sent = len(server.log)
        assert proc.returncode == 1, proc.stderr
        # EFBIG reads as an I/O error; ENOSPC (a full disk) as "database or disk is full"
        assert f"the run store {run_dir / 'run.sqlite'} cannot be written (disk I/O error;" \
            in proc.stderr
        assert "free space (or fix the disk or its permissions), then resume" in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert "stopping now: the requests in flight are abandoned" in proc.stdout
        assert "may finish" not in proc.stdout  # they are not given the stop's grace
        conn = sqlite3.connect(run_dir / "run.sqlite")
        recorded = conn.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
        conn.close()
        assert 0 < recorded and sent - recorded <= 8  # the requests in flight at most
        resumed = run_cli(*headless(server.base_url, run_dir), "--target", "300", check=True)
    assert "resuming run" in resumed.stdout and count_machine(run_dir) >= 300
    assert_accounted(run_dir)


def console_script(directory: Path) -> Path:
    """`selfinstruct` as pip installs it in a venv's bin: a script that runs cli.main."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "selfinstruct"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom selfinstruct_tui.cli import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("started", ["venv path", "on PATH", "-m"])
def test_printed_commands_start_the_program_as_the_user_did(isolated_env, tmp_path, started):
    """The hints said `selfinstruct run ...` to a user who ran `.venv/bin/selfinstruct` (the
    README's command; not on PATH until the venv is activated) or `python -m selfinstruct_tui`:
    "command not found". They name the program as it was started, and pasted into the same
    shell (bash, same directory and PATH) they resume and export the run."""
    script = console_script(tmp_path / ".venv" / "bin")
    env = dict(isolated_env)
    if started == "on PATH":
        env["PATH"] = f"{script.parent}{os.pathsep}{env['PATH']}"
        program, expected = ["selfinstruct"], "selfinstruct"
    elif started == "venv path":
        program, expected = [".venv/bin/selfinstruct"], shlex.quote(str(script))
    else:
        program = [sys.executable, "-m", "selfinstruct_tui"]
        expected = shlex.join(program)

    def paste(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", line], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=240)

    with FakeOpenAI() as server:
        first = subprocess.run([*program, "run", "--headless", "--base-url", server.base_url,
                                "--model", "m", "--run-dir", "run", "--target", "3",
                                "--max-tokens", "1"],
                               env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=240)
        assert first.returncode == 4, first.stderr  # the spend limit: resume with a higher one
        printed = resume_line(first.stdout)
        assert printed.startswith(f"{expected} run --headless "), printed
        assert printed.endswith(" --max-tokens N"), printed
        resumed = paste(printed.removesuffix(" N") + " 100000000")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run in {tmp_path / 'run'}" in resumed.stdout
    assert count_machine(tmp_path / "run") == 3
    hint = [line for line in resumed.stdout.splitlines() if line.startswith("export it: ")]
    export = hint[0].removeprefix("export it: ").split(" (or ")[0]
    assert export.startswith(f"{expected} export "), export
    assert paste(export).returncode == 0 and (tmp_path / "tasks.json").exists()


def test_a_detached_run_prints_the_program_its_user_started(isolated_env, tmp_path):
    """A detached engine is spawned as `python -m selfinstruct_tui`; the commands it prints in
    its log (resume) are the user's program, as those of the command that started it."""
    script = console_script(tmp_path / ".venv" / "bin")
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        started = subprocess.run([".venv/bin/selfinstruct", "run", "--detach", "--base-url",
                                  server.base_url, "--model", "m", "--run-dir", "run",
                                  "--target", "100000"],
                                 env=isolated_env, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=120)
        assert started.returncode == 0, started.stderr
        pid = int((run_dir / "engine.pid").read_text())
        try:
            assert f"watch it:  {shlex.quote(str(script))} attach run\n" in started.stdout
            wait_for(lambda: count_machine(run_dir) >= 3)
        finally:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: state(run_dir).get("state") == "stopped", timeout=30)
    wait_for(lambda: "resume with" in (run_dir / "run.log").read_text(), timeout=30)
    printed = resume_line((run_dir / "run.log").read_text())
    assert printed.startswith(f"{shlex.quote(str(script))} run "), printed


def blocked_writing(pid: int) -> bool:
    """The process's main thread waits to write to a full pipe (Linux: /proc/PID/wchan)."""
    try:
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def test_a_third_ctrl_c_says_what_was_kept_and_how_to_resume(isolated_env, tmp_path):
    """The third SIGINT quits at once; it printed only "interrupted". It says, as the other ends
    do, what the run holds and the command that resumes it, and exits 130 (stopped by the
    user). The engine is held while the signals arrive by a full stdout pipe (a slow terminal):
    the handler runs, the loop cannot finish the stop."""
    import fcntl

    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        args = cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                           "--run-dir", str(run_dir), "--target", "100000")
        with open(tmp_path / "stderr", "w") as errors:
            proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.PIPE,
                                    stderr=errors)
            assert proc.stdout is not None
            fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ: fills in a few rounds
            try:
                wait_for(lambda: blocked_writing(proc.pid), timeout=120)
                for _ in range(3):
                    proc.send_signal(signal.SIGINT)
                    time.sleep(0.2)  # each its own handler call (pending signals merge)
                out = proc.stdout.read().decode()
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == 130, (tmp_path / "stderr").read_text()
        assert "interrupted" not in (tmp_path / "stderr").read_text()
        kept = count_machine(run_dir)
        assert f"quit at once at {kept}/100000 machine tasks, kept in {run_dir}" in out, out
        # recorded as stopped by the user (`runs` said "crashed": a live state, its pid gone)
        quit_state = state(run_dir)
        assert status_of(quit_state)[0] == "stopped", quit_state
        assert quit_state.get("message", "").startswith("quit at once (a third Ctrl-C)")
        printed = resume_line(out)
        assert printed == shlex.join(args), printed
        resumed = subprocess.run([*shlex.split(printed), "--target", str(kept + 3)],
                                 env=isolated_env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert count_machine(run_dir) == kept + 3


def test_ctrl_c_before_the_run_starts_says_nothing_was_sent(isolated_env, tmp_path):
    """A Ctrl-C while the run starts (here: the endpoint's model list, asked for because no
    --model was given, does not answer) printed only "interrupted". It says that no request
    was sent and no run was created, exits 130, and leaves no run folder behind."""
    import socket
    import threading

    runs = Path(isolated_env["SELFINSTRUCT_RUNS_DIR"])
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        port = listener.getsockname()[1]
        connected = threading.Event()
        held: list[socket.socket] = []

        def accept() -> None:
            conn, _ = listener.accept()
            held.append(conn)
            connected.set()

        threading.Thread(target=accept, daemon=True).start()
        proc = subprocess.Popen(cli_command("run", "--headless", "--base-url",
                                            f"http://127.0.0.1:{port}/v1", "--target", "5"),
                                env=isolated_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert connected.wait(60), "the run never asked for the model list"
            proc.send_signal(signal.SIGINT)
            out, errors = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            for conn in held:
                conn.close()
    assert proc.returncode == 130, errors
    assert ("interrupted before the run started: no completion request was sent and no run was "
            "created" in errors), errors
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def engine_activity(conn: sqlite3.Connection) -> float:
    """When the run's engine last recorded work, read from the records: a round started or
    finished, a request sent or answered, a candidate, machine task, rejection or retry."""
    return max(t for (t,) in conn.execute(
        "SELECT MAX(started) FROM rounds UNION ALL SELECT MAX(finished) FROM rounds UNION ALL "
        "SELECT MAX(created) FROM prompts UNION ALL SELECT MAX(finished) FROM prompts "
        "UNION ALL SELECT MAX(created) FROM candidates UNION ALL SELECT MAX(created) FROM "
        "tasks WHERE origin = 'machine' UNION ALL SELECT MAX(created) FROM rejections "
        "UNION ALL SELECT MAX(created) FROM retries") if t is not None)


def spans_length(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) spans (a run without pauses)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def view_elapsed(run_dir: Path) -> float:
    """The elapsed time a UI opened on the run shows (the engine's own, before it starts, or
    an attached one): its snapshot loaded into the view."""
    from selfinstruct_tui.engine.control import read_snapshot
    from selfinstruct_tui.tui.view import RunView

    store = RunStore(run_dir, readonly=True)
    try:
        snap = read_snapshot(store)
    finally:
        store.close()
    view = RunView()
    view.load(snap)
    return view.status.elapsed()


def test_a_killed_sessions_time_ends_at_its_last_recorded_activity(run_cli, tmp_path):
    """kill -9, then a resume. The rounds the killed process left running were ended when the
    next session closed them: the time between the kill and the resume counted as run time
    (7-8 s more than the run ran). A UI opened on the crashed run counted them as 0 s (the
    time they ran was lost). Both end them at the killed process's last recorded work: the
    elapsed time is the union of the rounds' spans up to then, before and after the resume."""
    from test_detach_attach import detach, kill_quietly

    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.2) as server:
        pid = detach(run_cli, server, run_dir, 2000, "--concurrency", "2")
        try:
            wait_for(lambda: count_machine(run_dir) >= 5, timeout=60)
        finally:
            kill_quietly(pid)
        wait_for(lambda: status_of(state(run_dir))[0] == "crashed", timeout=20)
        conn = sqlite3.connect(run_dir / "run.sqlite")
        last = engine_activity(conn)
        left_running = [n for (n,) in conn.execute(
            "SELECT round FROM rounds WHERE status = 'running'")]
        assert left_running
        spans = [(s, f if f is not None else max(s, last))
                 for s, f in conn.execute("SELECT started, finished FROM rounds")]
        crashed = view_elapsed(run_dir)
        assert crashed == pytest.approx(spans_length(spans), abs=1e-6)
        held = count_machine(run_dir)
        again = run_cli("run", "--detach", "--run-dir", str(run_dir), timeout=60)
        assert again.returncode == 0, again.stderr
        pid = int((run_dir / "engine.pid").read_text())
        try:
            wait_for(lambda: count_machine(run_dir) >= held + 5, timeout=60)
            os.kill(pid, signal.SIGTERM)  # a clean stop: every round of this session ends
            wait_for(lambda: state(run_dir).get("state") == "stopped", timeout=30)
        finally:
            kill_quietly(pid)
    for number in left_running:
        started, finished, wall_time, status = conn.execute(
            "SELECT started, finished, wall_time, status FROM rounds WHERE round = ?",
            (number,)).fetchone()
        assert status == "interrupted"
        assert finished == max(started, last)
        assert wall_time == pytest.approx(finished - started, abs=1e-6)  # (no pauses)
    session = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'session'"
                                      ).fetchone()[0])
    assert session["started"] > last
    resumed = [(s, f) for s, f in conn.execute("SELECT started, finished FROM rounds")
               if s >= session["started"]]
    assert resumed and all(f is not None for _, f in resumed)
    assert view_elapsed(run_dir) == pytest.approx(crashed + spans_length(resumed), abs=1e-6)


def test_a_run_dir_that_holds_other_things_is_refused_not_made_a_new_run(
        run_cli, tmp_path, isolated_env, fake_server):
    """`--run-dir` given the folder that holds a run (a resume with the parent of its folder),
    a project folder, the runs folder or a file: a new run was started there, paid, mixed into
    the folder (a file: a traceback). Each is refused (exit 2), nothing sent or written."""
    runs = tmp_path / "experiments"
    first = runs / "run-a"
    run_cli(*headless(fake_server.base_url, first), "--target", "2", check=True)
    (runs / "notes.txt").write_text("mine\n")
    sent = len(fake_server.log)
    proc = run_cli(*headless(fake_server.base_url, runs), "--target", "4")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(
        f"error: --run-dir {runs}: holds no run (no run.sqlite) but other things (notes.txt, "
        f"run-a), and a new run would put its files among them; the runs in it: {first}. To "
        f"resume a run, give its own folder (`{shown('runs')}` lists them)"), proc.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["notes.txt", "run-a"]
    file = runs / "notes.txt"
    proc = run_cli(*headless(fake_server.base_url, file), "--target", "4")
    assert (proc.returncode, proc.stderr) == (2, f"error: --run-dir {file}: is a file, not a run "
                                                 "directory; give a run's folder to resume it, "
                                                 "or a new folder (or leave out --run-dir) for a "
                                                 "new run\n")
    root = Path(isolated_env["SELFINSTRUCT_RUNS_DIR"])
    root.mkdir(exist_ok=True)
    proc = run_cli(*headless(fake_server.base_url, root), "--target", "4")
    assert proc.returncode == 2 and "is the folder that holds the runs" in proc.stderr
    assert not is_run_dir(root) and file.read_text() == "mine\n"
    assert len(fake_server.log) == sent
    # an empty folder, and the run's own folder, are fine
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli(*headless(fake_server.base_url, empty), "--target", "1", check=True)
    run_cli(*headless(fake_server.base_url, first), "--target", "3", check=True)
