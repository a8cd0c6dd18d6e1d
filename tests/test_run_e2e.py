"""`selfinstruct run --headless` in a real subprocess against the fake OpenAI server."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli_command, shown
from fake_openai import FakeOpenAI


def machine_tasks(run_dir: Path) -> list[tuple]:
    db = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return db.execute("SELECT id, instruction, instances, round FROM tasks WHERE "
                          "origin = 'machine' AND status = 'active' ORDER BY id").fetchall()
    finally:
        db.close()


def count_machine(run_dir: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM tasks WHERE origin = 'machine'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def resume_line(out: str) -> str:
    """The command a stopped run printed for resuming it."""
    lines = [line for line in out.splitlines() if "resume with" in line]
    assert lines, out
    return lines[-1].split(": ", 1)[1].strip()


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_headless_run_reaches_target_and_records_everything(run_cli, fake_server, tmp_path, api):
    run_dir = tmp_path / "run"
    proc = run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
                   "--api", api, "--run-dir", str(run_dir), "--target", "40", check=True)
    assert f"starting run in {run_dir}" in proc.stdout
    assert "round 1:" in proc.stdout and "done: 40/40" in proc.stdout
    # where the run is and how to export it, the command as it runs
    hint = next(ln for ln in proc.stdout.splitlines() if ln.startswith("export it: "))
    command = shlex.split(hint.removeprefix("export it: ").split(" (or ")[0])
    assert command[:4] == cli_command("export")
    out = tmp_path / "tasks.json"
    run_cli(*command[3:-1], str(out), check=True)
    assert len(json.loads(out.read_text())) >= 40
    tasks = machine_tasks(run_dir)
    assert len(tasks) == 40
    assert len({t[1] for t in tasks}) == 40
    assert all(json.loads(t[2]) for t in tasks)
    db = sqlite3.connect(run_dir / "run.sqlite")
    kinds = dict(db.execute("SELECT kind, COUNT(*) FROM prompts GROUP BY kind").fetchall())
    assert kinds["generate"] >= 2 and kinds["classify"] >= 40 and kinds["instances"] >= 40
    reasons = {r[0] for r in db.execute("SELECT reason FROM rejections")}
    assert "near_duplicate" in reasons
    dup = db.execute("SELECT candidate, similar_text, score FROM rejections "
                     "WHERE reason = 'near_duplicate' LIMIT 1").fetchone()
    assert dup[1] and dup[2] > 0.7
    rounds = db.execute("SELECT prompts, candidates, accepted, status FROM rounds").fetchall()
    assert sum(r[2] for r in rounds) == 40 and all(r[3] == "done" for r in rounds)
    sim = db.execute("SELECT most_similar, max_score FROM tasks WHERE origin = 'machine' "
                     "LIMIT 1").fetchone()
    assert len(json.loads(sim[0])) == 10 and 0 < sim[1] <= 0.7
    # Each generation prompt shows 8 examples; from round 3 on, two come from the machine pool.
    examples = [json.loads(r[0]) for r in db.execute(
        "SELECT examples FROM prompts WHERE kind = 'generate' AND round >= 3")]
    for shown in examples:
        assert len(shown) == 8
        assert sum(e["origin"] == "machine" for e in shown) == 2


def test_same_seed_same_endpoint_same_run(run_cli, fake_server, tmp_path):
    runs = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
                "--run-dir", str(run_dir), "--target", "60", "--random-seed", "11", check=True)
        runs.append([(t[1], t[2], t[3]) for t in machine_tasks(run_dir)])
    assert runs[0] == runs[1]
    other = tmp_path / "c"
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(other), "--target", "60", "--random-seed", "12", check=True)
    assert [(t[1], t[2], t[3]) for t in machine_tasks(other)] != runs[0]


def test_sigkill_mid_run_then_resume_loses_nothing(isolated_env, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.02) as server:
        args = cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                           "--run-dir", str(run_dir), "--target", "150", "--random-seed", "5")
        proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: count_machine(run_dir) >= 30)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        before = machine_tasks(run_dir)
        assert 30 <= len(before) < 150
        resumed = subprocess.run(args, env=isolated_env, capture_output=True, text=True,
                                 timeout=240)
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming run" in resumed.stdout
        after = machine_tasks(run_dir)
    assert len(after) == 150
    assert after[: len(before)] == before  # nothing lost, nothing changed
    assert len({t[1] for t in after}) == 150  # no duplicate
    assert len({t[0] for t in after}) == 150


def test_ctrl_c_stops_cleanly_and_resumes(isolated_env, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        args = cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                           "--run-dir", str(run_dir), "--target", "300")
        proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_for(lambda: count_machine(run_dir) >= 10)
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=60)
        assert proc.returncode == 130, errs
        assert "stopped at" in out
        printed = resume_line(out)
        assert printed == shlex.join(args)  # the command as given
        stopped_at = count_machine(run_dir)
        assert 10 <= stopped_at < 300
        db = sqlite3.connect(run_dir / "run.sqlite")
        state = json.loads(db.execute("SELECT value FROM meta WHERE key='state'").fetchone()[0])
        assert state["state"] == "stopped"
        db.close()
        done = subprocess.run(shlex.split(printed), env=isolated_env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
    assert count_machine(run_dir) == 300


def test_resume_refuses_unsafe_change_and_accepts_higher_target(run_cli, fake_server, tmp_path):
    run_dir = tmp_path / "run"
    base = ("run", "--headless", "--base-url", fake_server.base_url, "--run-dir", str(run_dir))
    run_cli(*base, "--model", "m", "--target", "10", check=True)
    refused = run_cli(*base, "--model", "other-model", "--threshold", "0.5")
    assert refused.returncode == 2
    assert "model: the run uses 'm', the command asks for 'other-model'" in refused.stderr
    assert "threshold" in refused.stderr
    assert count_machine(run_dir) == 10
    more = run_cli(*base, "--target", "25", check=True)
    assert "resuming run" in more.stdout
    assert count_machine(run_dir) == 25
    # the closing line's tokens are this session's, and says so (the store has both sessions')
    done = [line for line in more.stdout.splitlines() if line.startswith("done: ")][0]
    assert done.split("; ")[-1].startswith("this session: "), done


def test_endpoint_down_pauses_and_exits_with_advice(run_cli, tmp_path, isolated_env):
    cfg = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    cfg.write_text("error_pause_seconds = 0.5\nmax_retries = 1\n")
    run_dir = tmp_path / "run"
    with FakeOpenAI(down=True) as server:
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(run_dir), "--target", "10")
    assert proc.returncode == 3
    assert "every request has failed" in proc.stderr
    assert f"Check that {server.base_url} is up" in proc.stderr
    assert f"resume it with: {shown('run', '--headless', '--base-url', server.base_url)} " \
        f"--model m --run-dir {run_dir} --target 10" in proc.stderr
    db = sqlite3.connect(run_dir / "run.sqlite")
    assert db.execute("SELECT COUNT(*) FROM errors").fetchone()[0] >= 3


def test_bad_key_is_explained_and_never_stored(run_cli, tmp_path):
    secret = "sk-secret-value-123456"
    run_dir = tmp_path / "run"
    with FakeOpenAI(api_key="sk-the-right-one") as server:
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(run_dir), "--target", "5",
                       env={"OPENAI_API_KEY": secret})
        assert f"Bearer {secret}" in server.seen_auth  # the key was really used
    assert proc.returncode == 3
    assert "OPENAI_API_KEY" in proc.stderr
    assert secret not in proc.stdout + proc.stderr
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_faulty_endpoint_still_reaches_target(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(error_rate=0.15, error_status=429, retry_after=0, truncate_rate=0.1,
                    malformed_rate=0.05) as server:
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(run_dir), "--target", "40", "--max-retries", "8")
    assert proc.returncode == 0, proc.stderr
    # the last round reserves for the share of candidates that fail: it may end a few past
    assert 40 <= count_machine(run_dir) <= 44
    db = sqlite3.connect(run_dir / "run.sqlite")
    reasons = {r[0] for r in db.execute("SELECT reason FROM rejections")}
    assert "truncated" in reasons  # cut answers keep their complete items


def test_model_is_discovered_when_the_endpoint_serves_one(run_cli, fake_server, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("run", "--headless", "--base-url", fake_server.base_url,
                   "--run-dir", str(run_dir), "--target", "5", check=True)
    assert "fake-model" in proc.stdout


@pytest.mark.parametrize("fmt", ["self-instruct", "alpaca", "openai-chat", "sharegpt"])
def test_exports(run_cli, fake_server, tmp_path, fmt):
    run_dir = tmp_path / "run"
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir), "--target", "12", check=True)
    out = tmp_path / f"out.{fmt}"
    proc = run_cli("export", str(run_dir), "--format", fmt, "-o", str(out), check=True)
    assert f"to {out}" in proc.stdout
    tasks = machine_tasks(run_dir)
    n_instances = sum(len(json.loads(t[2])) for t in tasks)
    if fmt == "alpaca":
        rows = json.loads(out.read_text())
        assert len(rows) == n_instances
        assert set(rows[0]) == {"instruction", "input", "output"}
        return
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    if fmt == "self-instruct":
        assert len(rows) == 12
        assert {"instruction", "is_classification", "instances", "most_similar"} <= set(rows[0])
        assert len(rows[0]["most_similar"]) == 10
        assert [r["instruction"] for r in rows] == [t[1] for t in tasks]
    elif fmt == "openai-chat":
        assert len(rows) == n_instances
        assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    else:
        assert len(rows) == n_instances
        assert [c["from"] for c in rows[0]["conversations"]] == ["human", "gpt"]
    assert not list(tmp_path.glob(".out.*.tmp"))


def test_export_of_missing_run_dir_fails_clearly(run_cli, tmp_path):
    proc = run_cli("export", str(tmp_path / "nope"), "--format", "alpaca")
    assert proc.returncode == 2
    assert "not a run directory" in proc.stderr


def test_export_never_overwrites_the_runs_own_files_and_writes_stdout(run_cli, fake_server,
                                                                      tmp_path):
    run_dir = tmp_path / "run"
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir), "--target", "3", check=True)
    before = (run_dir / "run.sqlite").read_bytes()
    for target in (run_dir / "run.sqlite", "/dev/full", tmp_path):
        proc = run_cli("export", str(run_dir), "--format", "alpaca", "-o", str(target))
        assert proc.returncode == 2 and str(target) in proc.stderr, proc.stdout
    assert (run_dir / "run.sqlite").read_bytes() == before
    out = run_cli("export", str(run_dir), "--format", "self-instruct", "-o", "-", check=True)
    assert len(out.stdout.splitlines()) == 3 and not (tmp_path / "-").exists()
    # the count is said on stderr, as for a file (nothing was said)
    assert out.stderr == f"wrote 3 rows (self-instruct) of {run_dir} to stdout\n"


def test_an_export_without_o_says_where_it_wrote_and_that_it_replaced_one(run_cli, fake_server,
                                                                          tmp_path):
    """`export RUN` writes RUN/export-FORMAT.json; a second export replaced the first one
    silently. It is derived from the store (replacing loses nothing), so it is replaced, and
    said on stderr with the file's name; the first export says nothing of the kind."""
    run_dir = tmp_path / "run"
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir), "--target", "3", check=True)
    written = run_dir / "export-alpaca.json"
    first = run_cli("export", str(run_dir), "--format", "alpaca", check=True)
    assert f"to {written}" in first.stdout and first.stderr == ""
    written.write_text("[]")  # stale: the run went on since
    again = run_cli("export", str(run_dir), "--format", "alpaca", check=True)
    assert f"to {written}" in again.stdout
    assert again.stderr == (f"note: replaced what was there: {written}, {written}.meta.json; "
                            "-o FILE writes another file\n")
    assert len(json.loads(written.read_text())) > 0  # the new export, not the stale file
    # a file that was not an export: named as what it is, not as "the export" with a
    # .meta.json that was never there
    mine = tmp_path / "mine.txt"
    mine.write_text("hello\n")
    over = run_cli("export", str(run_dir), "--format", "alpaca", "-o", str(mine), check=True)
    assert over.stderr == f"note: replaced what was there: {mine}; -o FILE writes another file\n"


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_an_export_through_a_symlink_keeps_the_link_and_never_replaces_a_pipe(run_cli,
                                                                             fake_server,
                                                                             tmp_path):
    """-o through a symlink replaced the link with a file: `-o /dev/stdout` (a link to
    /proc/self/fd/1) replaced /dev/stdout for the whole machine and the rows went nowhere. A
    link to a file is written through, the link kept; one to a pipe (as /dev/stdout is under
    a pipe) is refused, nothing replaced. The stand-in for /dev/stdout lives in tmp_path."""
    run_dir = tmp_path / "run"
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir), "--target", "3", check=True)
    real = tmp_path / "data" / "real.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    real.chmod(0o600)
    run_cli("export", str(run_dir), "--format", "self-instruct", "-o", str(link), check=True)
    assert link.is_symlink() and len(real.read_text().splitlines()) == 3
    # a private file stays private (it became 0644: the data left a 0700 run directory)
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.jsonl"
    run_cli("export", str(run_dir), "--format", "self-instruct", "-o", str(fresh), check=True)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask()
    stdout_link = tmp_path / "stdout"
    stdout_link.symlink_to("/proc/self/fd/1")  # what /dev/stdout is
    proc = run_cli("export", str(run_dir), "--format", "alpaca", "-o", str(stdout_link))
    assert proc.returncode == 2, proc.stdout
    assert f"{stdout_link}: is not a regular file (a pipe, a terminal or a device)" in proc.stderr
    assert stdout_link.is_symlink() and os.readlink(stdout_link) == "/proc/self/fd/1"
    assert not list(tmp_path.glob("stdout*.json"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "to-fifo").symlink_to(fifo)
    proc = run_cli("export", str(run_dir), "--format", "alpaca", "-o", str(tmp_path / "to-fifo"))
    assert proc.returncode == 2 and "not a regular file" in proc.stderr
    assert (tmp_path / "to-fifo").is_symlink()


def test_export_to_a_reader_that_stops_reading_ends_quietly(run_cli, fake_server, isolated_env,
                                                            tmp_path):
    """`selfinstruct export RUN -o - | head`: the reader going away is not an error to report
    (it was "-: cannot write the export (Broken pipe)", exit 2): quiet, with the status of a
    command ended by SIGPIPE, as `cat` ends there."""
    run_dir = tmp_path / "run"
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir), "--target", "3", check=True)
    for args in (("export", str(run_dir), "--format", "alpaca", "-o", "-"),
                 ("export", str(run_dir), "--format", "rejections", "-o", "-"),
                 ("seeds", "export", str(run_dir))):
        proc = subprocess.Popen(cli_command(*args), env=isolated_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the first line is written
        assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, args
        assert proc.stderr.read() == "", args


def test_a_closed_stdout_does_not_stop_a_headless_run(isolated_env, tmp_path):
    """`selfinstruct run --headless ... | head -3`: the run goes on to its target."""
    from test_real_answers import assert_accounted

    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.02) as server:
        proc = subprocess.Popen(
            cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                        "--run-dir", str(run_dir), "--target", "60"),
            env=isolated_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3):
            proc.stdout.readline()
        proc.stdout.close()  # what `head -3` does
        _, errs = proc.communicate(timeout=120)
    assert proc.returncode == 0, errs
    assert count_machine(run_dir) >= 60
    assert_accounted(run_dir)


def test_a_failing_run_whose_reader_went_away_still_exits_with_its_status(isolated_env,
                                                                         tmp_path):
    """`selfinstruct run --headless ... 2>&1 | head -1` on a run that stops on an exhausted
    quota: the error line found the pipe closed and rich ended the process with exit 1 (a
    traceback's status); the run's own status is 3."""
    quota = {"status": 429, "body": {"error": {"message": "You exceeded your current quota",
                                               "code": "insufficient_quota"}}}
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"*": [quota]}) as server:
        proc = subprocess.Popen(
            cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                        "--run-dir", str(run_dir), "--target", "10"),
            env=isolated_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("starting run in")
        proc.stdout.close()  # what `head -1` does
        assert proc.wait(timeout=120) == 3
    from selfinstruct_tui.engine.control import run_status
    from selfinstruct_tui.engine.store import RunStore

    store = RunStore(run_dir, readonly=True)
    try:
        assert run_status(store)[0] == "stopped"
    finally:
        store.close()


def test_the_young_gc_threshold_is_raised_while_engines_run_and_restored_after(tmp_path):
    """engine/gc_policy.py: measured 18% of the engine's CPU in collections that freed almost
    nothing. The threshold is raised while an engine runs (seen from the endpoint, mid-run),
    nests across engines of one process, and comes back after."""
    import gc

    from selfinstruct_tui.engine.engine import Engine
    from selfinstruct_tui.engine.gc_policy import YOUNG_THRESHOLD, engine_gc
    from tui_helpers import new_run

    before = gc.get_threshold()
    assert before[0] < YOUNG_THRESHOLD
    seen: list[int] = []
    with FakeOpenAI() as server:
        server.on_request = lambda kind, prompt: seen.append(gc.get_threshold()[0])
        store, config = new_run(tmp_path / "run", server.base_url, target=5)
        with engine_gc():  # another user (an engine in another thread) holds it meanwhile
            Engine(store, config).run()
            assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        store.close()
    assert seen and set(seen) == {YOUNG_THRESHOLD}
    assert gc.get_threshold() == before


def test_a_refresh_interval_of_zero_is_refused(run_cli, isolated_env, tmp_path):
    """`--refresh 0` was taken: the screen redrawn as fast as the loop could run."""
    from selfinstruct_tui.tui.app import create_app
    from tui_helpers import deterministic_run

    for command in (("run",), ("attach", "somewhere")):
        proc = run_cli(*command, "--refresh", "0")
        assert proc.returncode == 2
        assert "--refresh: 0 s: give 0.05 to 60 seconds" in proc.stderr
    # the config file's `refresh` too: the default, said once the app is up
    Path(isolated_env["SELFINSTRUCT_CONFIG"]).write_text("refresh = 0\n")
    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run")
    assert app.refresh_interval == 0.5
    assert any("refresh = 0 in the config file" in n for n in app.notices)


def test_the_headless_done_line_gives_the_sessions_run_time_by_the_engines_records():
    """'done: N/N machine tasks in Ts' is the session's run time as every UI counts it (from
    the engine's RunStarted to its Finished, a pause left out), not the printer's own clock
    since it was made (which also counted the set-up before the session and the pause)."""
    import io

    from rich.console import Console

    from selfinstruct_tui.engine import events as ev
    from selfinstruct_tui.headless import HeadlessPrinter

    out = io.StringIO()
    printer = HeadlessPrinter(Console(file=out, width=200))
    t0 = 1_700_000_000.0
    printer(ev.RunStarted("/runs/r", "http://h/v1", "m", "completions", 2, 0, 3, False, ts=t0))
    printer(ev.Paused("spend guard", ts=t0 + 10))
    printer(ev.Resumed(ts=t0 + 40))
    printer(ev.Finished(ev.FinishReason.TARGET, 2, 2, ts=t0 + 52.5))
    done = [line for line in out.getvalue().splitlines() if line.startswith("done:")]
    assert done and done[0].startswith("done: 2/2 machine tasks in 22.5s;"), out.getvalue()
