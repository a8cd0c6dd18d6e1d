"""Batch mode (`--batch`, `--batch-command`) against the fake server's Batch API and a stand-in
for `vllm run-batch`: the same records as the normal path, resume by polling, never paid twice."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_command, on_a_terminal
from fake_openai import FakeOpenAI
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.exports import export_run
from selfinstruct_tui.engine.store import RunStore
from test_real_answers import assert_accounted
from test_run_e2e import wait_for
from tui_helpers import new_run


def db(run_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(run_dir / "run.sqlite")
    conn.row_factory = sqlite3.Row
    return conn


@contextlib.contextmanager
def running(store: RunStore, config: Any, *subscribers: Any) -> Iterator[Engine]:
    """The engine of (store, config) on its own thread, its events going to `subscribers`
    from the start; stopped, joined and its store closed at the end of the block."""
    engine = Engine(store, config)
    for subscriber in subscribers:
        engine.bus.subscribe(subscriber)
    thread = threading.Thread(target=engine.run)
    thread.start()
    try:
        yield engine
    finally:
        engine.stop()
        thread.join(timeout=30)
        store.close()


def resumed(run_dir: Path, config: Any) -> Engine:
    """A new session of the run in `run_dir` with `config`, run to its end."""
    store = RunStore(run_dir)
    engine = Engine(store, config)
    engine.run()
    store.close()
    return engine


def ended(store: RunStore, config: Any) -> Engine:
    """Run until the engine finishes or pauses (then stop it): a run that never ends fails the
    test instead of hanging it."""
    with running(store, config) as engine:
        wait_for(lambda: engine.finished is not None or engine.paused is not None, 120)
        return engine


def until_paused(store: RunStore, config: Any) -> tuple[Engine, Any]:
    """Run until the engine pauses, then stop it: (the engine, its ev.Paused)."""
    with running(store, config) as engine:
        wait_for(lambda: engine.paused is not None)
        return engine, engine.paused


def run_engine(run_dir: Path, base_url: str, **cfg) -> Engine:
    store, config = new_run(run_dir, base_url, **{"batch": True, "batch_poll_seconds": 0.02,
                                                  **cfg})
    engine = Engine(store, config)
    engine.run()
    store.close()
    return engine



def exited(pid: int) -> bool:
    """The process is gone or a zombie. Read without a race: it may be reaped between a look at
    /proc/PID and the read of its stat (ProcessLookupError then failed a test)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[-1].split()[0] == "Z"
    except OSError:  # FileNotFoundError, ProcessLookupError: reaped
        return True

def test_a_small_target_in_batch_mode_is_not_sent_a_full_round(tmp_path):
    """--batch --target 10 sent 100 generation prompts (~700 candidates for 10 tasks): before the
    yield is known a batch round asks for 4x the prompts that cover the target if every
    instruction were kept, ceil(10 * 4 / 7) = 6, and still reaches it."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        engine = run_engine(run_dir, server.base_url, target=10)
    assert engine.finished is not None and engine.finished.reason.value == "target"
    conn = db(run_dir)
    sizes = [len(json.loads(ids)) for (ids,) in conn.execute(
        "SELECT prompt_ids FROM batches WHERE kind = 'generate' ORDER BY id")]
    assert sizes[0] == 6 and all(n <= 6 for n in sizes), sizes
    assert conn.execute("SELECT COUNT(*) FROM tasks WHERE origin = 'machine'").fetchone()[0] >= 10


def test_a_batch_run_sends_each_stage_as_one_job_and_records_like_the_normal_path(tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=3) as server:
        engine = run_engine(run_dir, server.base_url, target=20, prompts_per_round=6)
        assert engine.finished is not None and engine.finished.reason.value == "target"
        assert server.requests == 0  # nothing went through /completions
        creations = server.batch_creations
    conn = db(run_dir)
    jobs = conn.execute("SELECT * FROM batches ORDER BY id").fetchall()
    assert len(jobs) == creations >= 3
    assert {j["kind"] for j in jobs} == {"generate", "classify", "instances"}
    assert all(j["state"] == "settled" and j["batch_id"] and j["input_file_id"] for j in jobs)
    # one job per stage of a round
    assert len({(j["round"], j["kind"]) for j in jobs}) == len(jobs)
    for j in jobs:
        ids = json.loads(j["prompt_ids"])
        lines = [json.loads(x) for x in Path(j["input_path"]).read_text().splitlines()]
        assert [ln["custom_id"] for ln in lines] == [f"{j['kind']}-{i}" for i in ids]
        assert lines[0]["url"] == "/v1/completions" and lines[0]["method"] == "POST"
        assert j["total"] == len(ids) and j["completed"] == len(ids)
    assert conn.execute("SELECT COUNT(*) FROM prompts WHERE response IS NULL").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM tasks WHERE origin = 'machine'").fetchone()[0] >= 20
    assert conn.execute("SELECT SUM(prompt_tokens) FROM prompts").fetchone()[0] > 0
    # provenance as on the normal path: the base URL that held each batch, the model asked for
    answers = conn.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
    assert [tuple(r) for r in conn.execute(
        "SELECT endpoint, model, COUNT(*) FROM prompts GROUP BY 1, 2")] == [
        (server.base_url, "fake-model", answers)]
    assert_accounted(run_dir)
    out = tmp_path / "tasks.jsonl"
    export_run(run_dir, "self-instruct", out)
    assert len(out.read_text().splitlines()) >= 20
    meta = json.loads((tmp_path / "tasks.jsonl.meta.json").read_text())
    assert meta["endpoints"] == [{"base_url": server.base_url, "model": "fake-model",
                                  "answers": answers}]


def test_error_file_lines_become_named_rejections(tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1,
                    batch_fail_kinds={"instances": "the prompt was flagged"}) as server:
        with running(*new_run(run_dir, server.base_url, target=5, prompts_per_round=3,
                              batch=True, batch_poll_seconds=0.02, max_fruitless_requests=0)):
            wait_for(lambda: server.batch_creations >= 3)
            wait_for(lambda: db(run_dir).execute(
                "SELECT COUNT(*) FROM batches WHERE kind = 'instances' AND state = 'settled'"
            ).fetchone()[0] >= 1)
    conn = db(run_dir)
    failed = conn.execute("SELECT detail FROM rejections WHERE reason = 'request_failed'"
                          ).fetchall()
    assert failed and all("instance request failed (bad_request)" in r[0] for r in failed)
    errors = conn.execute("SELECT error, endpoint, model FROM prompts WHERE kind = 'instances'"
                          ).fetchall()
    assert errors and all("the prompt was flagged" in e[0] for e in errors)
    assert {tuple(e)[1:] for e in errors} == {(server.base_url, "fake-model")}
    job = conn.execute("SELECT * FROM batches WHERE kind = 'instances'").fetchone()
    assert job["failed"] == job["total"] > 0 and job["error_path"]
    assert_accounted(run_dir)


def test_a_rate_limited_error_line_leaves_its_candidate_open_not_refused(tmp_path):
    """A line of the error file with status 429 is the endpoint's limit, not a refusal of the
    request: as on the normal path its candidate stays open (unanswered, rate_limit) and a
    later round asks again. It was settled as a bad request, the candidate lost."""
    run_dir = tmp_path / "run"
    limited = {"status": 429, "body": {"error": {
        "message": "Rate limit reached for requests per min", "type": "requests",
        "code": "rate_limit_exceeded"}}}
    with FakeOpenAI(batch_polls=1, script={"classify": [limited]}, repeat_last=False) as server:
        engine = run_engine(run_dir, server.base_url, target=10, prompts_per_round=3)
    assert engine.finished is not None and engine.finished.reason.value == "target"
    conn = db(run_dir)
    failed = conn.execute("SELECT id, task_ref, error FROM prompts WHERE kind = 'classify' AND "
                          "response IS NULL").fetchall()
    assert len(failed) == 1 and "(429)" in failed[0]["error"], [tuple(r) for r in failed]
    assert "Rate limit reached" in failed[0]["error"]
    tid = failed[0]["task_ref"]
    kept = conn.execute("SELECT reason, detail FROM rejections WHERE task_id = ?",
                        (tid,)).fetchall()
    assert [r["reason"] for r in kept] == ["unanswered"], [tuple(r) for r in kept]
    assert "(rate_limit)" in kept[0]["detail"] and "taken up again" in kept[0]["detail"]
    assert conn.execute("SELECT COUNT(*) FROM rejections WHERE reason = 'request_failed'"
                        ).fetchone()[0] == 0
    # asked again in a later job, and answered there
    again = conn.execute("SELECT COUNT(*) FROM prompts WHERE kind = 'classify' AND task_ref = ? "
                         "AND response IS NOT NULL AND id > ?", (tid, failed[0]["id"])
                         ).fetchone()[0]
    assert again == 1
    assert [tuple(r) for r in conn.execute("SELECT kind FROM errors")] == [("rate_limit",)]
    assert_accounted(run_dir)


def test_a_batch_pending_across_sigkill_is_polled_not_resubmitted(isolated_env, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=10**6) as server:  # the batch stays in_progress
        args = cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                           "--run-dir", str(run_dir), "--target", "10", "--batch",
                           "--batch-poll", "0.05", "--prompts-per-round", "4")
        proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: server.batch_retrieves >= 5)
        finally:
            proc.kill()
            out = proc.communicate(timeout=10)[0]
        # printed once: a poll that changes nothing prints nothing (30 s polls over a batch
        # window of hours were a screenful of the same line)
        assert out.count("batch job 1 (round 1, generate): in_progress 0/4 done") == 1, out
        assert server.batch_creations == 1
        conn = db(run_dir)
        job = conn.execute("SELECT * FROM batches").fetchone()
        assert job["batch_id"] == "batch_1" and job["state"] == "submitted"
        assert job["input_file_id"] == "file-1"
        server.configure(batch_polls=1)
        done = subprocess.run(args, env=isolated_env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "batch job(s) of an earlier session are pending" in done.stdout
        # the run's header first, then the wait for the earlier session's job
        assert done.stdout.index("resuming run in") < done.stdout.index("earlier session")
        jobs = conn.execute("SELECT * FROM batches ORDER BY id").fetchall()
        # the first job was polled to its end, never created again
        assert server.batch_creations == len(jobs)
        assert len({j["batch_id"] for j in jobs}) == len(jobs)
        assert [j["kind"] for j in jobs if j["round"] == 1] == ["generate"]
        assert all(j["state"] == "settled" for j in jobs)
        first = json.loads(jobs[0]["prompt_ids"])
        answered = conn.execute(
            f"SELECT COUNT(*) FROM prompts WHERE id IN ({','.join('?' * len(first))}) AND "
            "response IS NOT NULL", first).fetchone()[0]
        assert answered == len(first)
        # its instructions were taken up as candidates, not generated again
        taken = conn.execute("SELECT COUNT(*) FROM candidates WHERE round = 1").fetchone()[0]
        assert taken > 0
        assert conn.execute("SELECT prompts FROM rounds WHERE round = 2").fetchone()[0] == 0
    assert_accounted(run_dir)


STAND_IN = textwrap.dedent('''
    """A stand-in for `vllm run-batch -i IN -o OUT`: answers each line like the fake server
    (IN "-": reads the lines from stdin).
    argv[4] (optional, comma-separated) spoils its output as a crashed or buggy runner would:
    cut (the last line cut short, the writer killed), garbage (a line of text and one of bytes
    not UTF-8), missing (the second line left out), duplicate (the first custom_id again, as a
    500), foreign (a line for a custom_id not in the input), gate (waits for the file
    $STAND_IN_GATE first), hang (sleeps after writing). Only the run's first job is spoiled."""
    import json, sys, time
    sys.path.insert(0, sys.argv[3])
    from fake_openai import FakeOpenAI
    fake = FakeOpenAI.__new__(FakeOpenAI)
    import threading
    fake.lock = threading.Lock()
    fake.settings = {"batch_fail_kinds": {}, "structured": "json", "repeat_last": True}
    fake.scripts, fake.log, fake.by_kind, fake.batch_lines = {}, [], {}, 0
    # only the first job's file is spoiled (and waits for its gate file, if given one)
    first = "job00001-" in sys.argv[1] or "job1." in sys.argv[1]
    spoil = sys.argv[4].split(",") if len(sys.argv) > 4 and first else []
    import os, pathlib
    gate = os.environ.get("STAND_IN_GATE")
    while "gate" in spoil and gate and not pathlib.Path(gate).exists():
        time.sleep(0.05)
    lines = []
    with (open(sys.argv[1]) if sys.argv[1] != "-" else sys.stdin) as src:  # "-": stdin
        for n, raw in enumerate(src):
            line = json.loads(raw)
            status, body = fake.line_answer(line["url"], line["body"])
            lines.append({"id": f"req-{n}", "custom_id": line["custom_id"],
                          "response": {"status_code": status, "request_id": f"r{n}",
                                       "body": body}, "error": None})
    last = lines.pop()  # the spoiled lines go before the last (cut short) one
    if "missing" in spoil:
        del lines[1]
    if "duplicate" in spoil:
        lines.append({**lines[0], "response": {"status_code": 500, "body": {
            "error": {"message": "late retry failed"}}}})
    if "foreign" in spoil:
        lines.append({**lines[0], "custom_id": "generate-99999"})
    lines.append(last)
    text = "".join(json.dumps(x) + "\\n" for x in lines).encode()
    if "cut" in spoil:
        text = text[: text.rindex(b'"body"', 0, len(text) - 1) + 12]
    if "garbage" in spoil:
        text = b"Traceback (most recent call last):\\n" + text + b"\\xff\\xfe{\\n"
    with open(sys.argv[2], "wb") as out:
        out.write(text)
    with open(sys.argv[2] + ".runs", "a") as runs:
        runs.write("1\\n")
    if "hang" in spoil:
        time.sleep(120)
''')


def test_the_offline_transport_runs_a_command_on_each_job_file(tmp_path):
    script = tmp_path / "run_batch.py"
    script.write_text(STAND_IN)
    tests = Path(__file__).resolve().parent
    command = f"{sys.executable} {script} {{input}} {{output}} {tests}"
    run_dir = tmp_path / "run"
    engine = run_engine(run_dir, "http://127.0.0.1:9/v1", target=8, prompts_per_round=4,
                        batch=False, batch_command=command, extra_body={"top_k": 20})
    assert engine.finished is not None and engine.finished.reason.value == "target"
    conn = db(run_dir)
    jobs = conn.execute("SELECT * FROM batches ORDER BY id").fetchall()
    assert jobs and all(j["state"] == "settled" and j["transport"] == "command" for j in jobs)
    for j in jobs:
        lines = [json.loads(x) for x in Path(j["input_path"]).read_text().splitlines()]
        assert all(ln["body"]["top_k"] == 20 for ln in lines)  # --extra-body rides on each line
        out = Path(j["output_path"])
        assert len(out.read_text().splitlines()) == len(json.loads(j["prompt_ids"]))
        assert Path(str(out) + ".runs").read_text() == "1\n"
    assert_accounted(run_dir)
    assert [tuple(r) for r in conn.execute("SELECT DISTINCT endpoint, model FROM prompts")] == [
        (f"command: {command}", "fake-model")]
    export_run(run_dir, "alpaca", tmp_path / "out.json")
    meta = json.loads((tmp_path / "out.json.meta.json").read_text())
    assert [(e.get("command"), e.get("base_url"), e["model"]) for e in meta["endpoints"]] == [
        (command, None, "fake-model")]


def command_job(tmp_path: Path):
    """(store, record, transport): a run store in tmp_path/run with one generation batch job
    of one line recorded, and the offline-command transport running the stand-in script."""
    from selfinstruct_tui.engine.batch import CommandBatchTransport

    script = tmp_path / "run_batch.py"
    script.write_text(STAND_IN)
    tests = Path(__file__).resolve().parent
    store = RunStore(tmp_path / "run")
    path = tmp_path / "run" / "job1.input.jsonl"
    body = {"model": "m", "prompt": "Come up with a series of tasks:\n1. x", "max_tokens": 10}
    path.write_text(json.dumps({"custom_id": "generate-1", "method": "POST",
                                "url": "/v1/completions", "body": body}) + "\n")
    record = store.add_batch(round=1, kind="generate", transport="command", prompt_ids=[1],
                             input_path=str(path))
    transport = CommandBatchTransport(f"{sys.executable} {script} {{input}} {{output}} {tests}")
    return store, record, transport


def test_cancelling_a_command_job_stops_the_whole_command(tmp_path):
    """Cancel terminated the shell only: the command it ran (vllm run-batch on a GPU node)
    went on, an orphan, holding the GPU. The job's process group is stopped, children too;
    and a command that had just ended is no error (ProcessLookupError)."""
    import asyncio
    import os

    from selfinstruct_tui.engine.batch import CommandBatchTransport

    store, record, _ = command_job(tmp_path)
    pid_file = tmp_path / "child.pid"
    # a compound command: the shell stays, its child is the work
    transport = CommandBatchTransport(f"sleep 60 & echo $! > {pid_file}; wait; true {{input}} "
                                      "{output}")

    async def go():
        rec = await transport.submit(store, record)
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.02)
        rec = await transport.cancel(store, rec)
        await asyncio.sleep(0.5)
        return rec

    rec = asyncio.run(go())
    child = int(pid_file.read_text())
    assert rec.state == "cancelled"
    assert exited(child), "the command's child outlived the cancel"

    async def ended():  # cancelling a command that has just exited
        rec = await transport.submit(store, record)
        await asyncio.sleep(0)
        os.killpg(int(rec.batch_id.split()[1]), 9)
        await asyncio.sleep(0.3)
        return await transport.cancel(store, rec)

    assert asyncio.run(ended()).state == "cancelled"

    async def earlier():  # a job an earlier session started: cancelled by its recorded pid
        rec = await transport.submit(store, record)
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.02)
        return await CommandBatchTransport(transport.template).cancel(store, rec)

    pid_file.unlink()
    assert asyncio.run(earlier()).state == "cancelled"
    time.sleep(0.5)
    child = int(pid_file.read_text())
    assert exited(child)
    store.close()


def test_a_command_whose_output_is_complete_is_not_run_again(tmp_path):
    """A job recorded by a session that died after the command finished: the next session
    reads its output file instead of running the command again."""
    import asyncio

    from selfinstruct_tui.engine.batch import CommandBatchTransport

    store, record, transport = command_job(tmp_path)

    async def go():
        rec = await transport.submit(store, record)
        while rec.state == "submitted":
            await asyncio.sleep(0.02)
            rec = await transport.poll(store, rec)
        again = await CommandBatchTransport(transport.template).submit(store, record)
        return rec, again

    first, again = asyncio.run(go())
    assert first.state == "downloaded" and again.state == "downloaded"
    assert again.completed == again.total == 1  # read from the file: said 0/1 done
    out = tmp_path / "run" / "job1.output.jsonl"
    assert Path(str(out) + ".runs").read_text() == "1\n"  # ran once
    store.close()


def test_the_tui_shows_pending_batches_and_s_asks_whether_to_cancel_them(tmp_path,
                                                                          isolated_env):
    from selfinstruct_tui.tui.app import create_app
    from selfinstruct_tui.tui.screens.dialogs import ChoiceScreen, ConfirmScreen
    from tui_helpers import make_engine, run, until

    async def go():
        with FakeOpenAI(batch_polls=10**6) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=10, batch=True,
                                 batch_poll_seconds=0.05, prompts_per_round=3)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: server.batch_retrieves >= 2)
                await until(pilot, lambda: app.view.submitted_batches != [])
                pane = str(app.query_one("#inflight").render())
                assert "batch job 1 (round 1, generate): in_progress 0/3 done" in pane
                await pilot.press("s")
                assert isinstance(app.screen, ChoiceScreen)
                await pilot.press("escape")  # the way back: the run goes on (it stopped)
                await pilot.pause(0.3)
                assert not isinstance(app.screen, ChoiceScreen)
                assert engine.finished is None and app.state == "running"
                await pilot.press("q")  # quitting says the pending job stays
                assert isinstance(app.screen, ConfirmScreen)
                assert "1 pending batch job(s) stay pending" in str(
                    app.screen.query_one(".question").render())
                await pilot.press("n")
                await pilot.press("s")
                assert isinstance(app.screen, ChoiceScreen)
                await pilot.press("c")
                await until(pilot, lambda: server.batches["batch_1"]["status"] == "cancelled")
                await until(pilot, lambda: engine.finished is not None, timeout=30)
        conn = db(tmp_path / "run")
        # cancelled at the endpoint, and still the run's to read (what it answered is paid)
        assert tuple(conn.execute("SELECT state, status FROM batches").fetchone()) == (
            "submitted", "cancelled")

    run(go())


def test_a_stop_keeps_a_pending_batch_and_the_next_session_reads_its_answers(tmp_path):
    """Stopped while the classification job is pending: the job stays recorded and paid; the
    next session polls it (no new batch for it), and its answers are used when the candidates
    are taken up (no classification asked again for them)."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1) as server:
        store, config = new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.05)
        with running(store, config):
            wait_for(lambda: server.batch_creations >= 1 and
                     server.batches["batch_1"]["status"] == "completed")
            server.configure(batch_polls=10**6)  # later jobs stay pending
            wait_for(lambda: db(run_dir).execute(
                "SELECT COUNT(*) FROM batches WHERE kind = 'classify' AND batch_id IS NOT NULL"
            ).fetchone()[0] >= 1)
        conn = db(run_dir)
        pending = conn.execute("SELECT * FROM batches WHERE state = 'submitted'").fetchall()
        assert any(j["kind"] == "classify" for j in pending)
        classify_job = next(j for j in pending if j["kind"] == "classify")
        assert conn.execute("SELECT COUNT(*) FROM rejections WHERE reason = 'abandoned'"
                            ).fetchone()[0] >= len(json.loads(classify_job["prompt_ids"]))
        # its requests are not called abandoned: they wait in the job at the endpoint
        ids = ",".join(map(str, json.loads(classify_job["prompt_ids"])))
        assert {r[0] for r in conn.execute(f"SELECT error FROM prompts WHERE id IN ({ids})")} == {
            f"in batch job {classify_job['id']}, which stays pending at the endpoint (the run "
            "stopped): the next session reads its answer, not sent again"}
        before = server.batch_creations
        server.configure(batch_polls=1)
        lines_before = server.batch_lines
        engine = resumed(run_dir, config)
        assert engine.finished is not None and engine.finished.reason.value == "target"
        jobs = conn.execute("SELECT * FROM batches ORDER BY id").fetchall()
        assert all(j["state"] == "settled" for j in jobs)
        assert server.batch_creations == len(jobs) > before  # none created twice
        classified = {r[0] for r in conn.execute(
            "SELECT task_ref FROM prompts WHERE kind = 'classify' AND response IS NOT NULL")}
        asked = [r[0] for r in conn.execute(
            "SELECT task_ref FROM prompts WHERE kind = 'classify' AND id > ?",
            (max(json.loads(classify_job["prompt_ids"])),))]
        refs = {r[0] for r in conn.execute(
            f"SELECT task_ref FROM prompts WHERE id IN "
            f"({','.join(map(str, json.loads(classify_job['prompt_ids'])))})")}
        assert refs <= classified and not refs & set(asked)  # read, not asked again
        assert [tuple(r) for r in conn.execute(  # answers read by the next session say who
            "SELECT DISTINCT endpoint, model FROM prompts WHERE response IS NOT NULL")] == [
            (server.base_url, "fake-model")]
        assert server.batch_lines > lines_before
    assert_accounted(run_dir)


def test_an_endpoint_without_the_batch_api_stops_the_run_with_what_to_do(run_cli, tmp_path):
    with FakeOpenAI() as server:
        server.configure(batch_api=False)
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(tmp_path / "run"), "--target", "5", "--batch",
                       "--batch-poll", "0.05", timeout=120)
        assert server.requests == 0
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "does not implement the Batch API" in out and "--batch-command" in out
    conn = db(tmp_path / "run")
    assert {r[0] for r in conn.execute("SELECT state FROM batches")} == {"abandoned"}


def test_an_attached_ui_sees_pending_batch_jobs(tmp_path):
    from selfinstruct_tui.engine import events as ev
    from selfinstruct_tui.engine.control import StoreFollower, read_snapshot
    from tui_helpers import deterministic_run

    deterministic_run(tmp_path / "run")
    store = RunStore(tmp_path / "run")
    job = store.add_batch(round=5, kind="generate", transport="openai", prompt_ids=[1, 2],
                          input_path=str(tmp_path / "x.input.jsonl"))
    job = store.update_batch(job, batch_id="batch_9", state="submitted", status="in_progress",
                             total=2, completed=1)
    seen: list[ev.Event] = []
    reader = RunStore(tmp_path / "run", readonly=True)
    follower = StoreFollower(read_snapshot(reader), seen.append)
    follower.poll(reader)
    shown = [e.batch for e in seen if isinstance(e, ev.BatchProgress)]
    assert [(b.id, b.status, b.completed, b.total) for b in shown] == [
        (job.id, "in_progress", 1, 2)]
    store.update_batch(job, state="settled", status="completed", completed=2)
    follower.poll(reader)
    shown = [e.batch for e in seen if isinstance(e, ev.BatchProgress)]
    assert shown[-1].state == "settled"
    reader.close()
    store.close()


def first_generation_job(run_dir: Path, **server_settings):
    """The first generation batch job of a batch run (4 prompts a round) against a server
    configured with `server_settings`, once it has settled: (the run's connection, its row)."""
    with FakeOpenAI(batch_polls=1) as server:
        server.configure(**server_settings)
        with running(*new_run(run_dir, server.base_url, target=5, prompts_per_round=4,
                              batch=True, batch_poll_seconds=0.02)):
            wait_for(lambda: db(run_dir).execute(
                "SELECT COUNT(*) FROM batches WHERE kind = 'generate' AND state = 'settled'"
            ).fetchone()[0] >= 1)
    conn = db(run_dir)
    return conn, conn.execute(
        "SELECT * FROM batches WHERE kind = 'generate' ORDER BY id").fetchone()


def test_requests_an_expired_batch_did_not_answer_fail_with_its_status(tmp_path):
    run_dir = tmp_path / "run"
    conn, job = first_generation_job(run_dir, batch_end_status="expired")
    assert job["status"] == "expired" and job["completed"] == 2
    prompts = conn.execute(
        f"SELECT response, error FROM prompts WHERE id IN "
        f"({','.join(map(str, json.loads(job['prompt_ids'])))}) ORDER BY id").fetchall()
    assert [p[0] is not None for p in prompts] == [True, True, False, False]
    assert all("the batch ended expired without an answer" in p[1] for p in prompts[2:])
    assert_accounted(run_dir)


def test_what_is_wrong_with_a_downloaded_output_file_is_said_and_the_rest_used(tmp_path):
    """An output file with a line of text, a line for a custom_id of no request, a custom_id
    twice and a line cut short: the lines were skipped unsaid (a request without its line was
    then sent again, paid twice, with nothing to say why). Every good line is used and the
    job's message names the file and each problem's lines."""
    run_dir = tmp_path / "run"
    conn, job = first_generation_job(run_dir, batch_output_spoil=True)
    out = job["output_path"]
    assert f"{out}: 2 line(s) not JSON (line 1, 8)" in job["message"], job["message"]
    assert "1 line(s) for no request of this job: nobody-1 (line 6)" in job["message"]
    assert "on more than one line, the answered (else the last) one used: generate-1 (lines " \
           "2, 7)" in job["message"]
    ids = json.loads(job["prompt_ids"])
    assert conn.execute(f"SELECT COUNT(*) FROM prompts WHERE response IS NOT NULL AND id IN "
                        f"({','.join(map(str, ids))})").fetchone()[0] == len(ids)
    assert_accounted(run_dir)


def test_batch_command_runs_from_the_cli_without_an_endpoint(run_cli, tmp_path):
    script = tmp_path / "run_batch.py"
    script.write_text(STAND_IN)
    tests = Path(__file__).resolve().parent
    command = f"{sys.executable} {script} {{input}} {{output}} {tests}"
    refused = run_cli("run", "--headless", "--run-dir", str(tmp_path / "r0"),
                      "--batch-command", command)
    assert refused.returncode == 2 and "--batch-command needs --model" in refused.stderr
    empty = run_cli("run", "--headless", "--model", "m", "--run-dir", str(tmp_path / "r1"),
                    "--batch-command", "")  # was no command at all: the embedded model ran
    assert empty.returncode == 2 and not (tmp_path / "r1").exists()
    assert "--batch-command is empty" in empty.stderr
    proc = run_cli("run", "--headless", "--model", "m", "--run-dir", str(tmp_path / "run"),
                   "--target", "5", "--batch-command", command, "--batch-poll", "0.05",
                   "--prompts-per-round", "3", check=True)
    assert "done: 5/5" in proc.stdout
    assert "batch job 1 (round 1, generate): completed 3/3 done" in proc.stdout
    assert not list((tmp_path / "run").glob("llama-server*.log"))  # no embedded model
    # the run has no endpoint: its header names the command, not a placeholder URL
    assert f"model: m through the batch command {command!r} (no endpoint)" in proc.stdout
    assert "offline.invalid" not in proc.stdout


def test_a_command_still_running_from_a_killed_session_is_waited_for_not_run_twice(tmp_path):
    """An earlier session's command (known by its pid) is waited for while it runs. Once gone
    it was run again when its output did not answer every line: it is read instead (its exit
    status unknown), never run twice. A recorded pid that is now another process (the machine
    rebooted) was waited for forever; and a job recorded before its pid was (a kill in that
    instant) started a second command beside the first."""
    import asyncio

    from selfinstruct_tui.engine.batch import CommandBatchTransport

    store, record, transport = command_job(tmp_path)
    # the job's shell, as its own session leader, naming the job's input file
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", record.input_path]
    earlier = subprocess.Popen(sleeper, start_new_session=True)
    wait_for(lambda: record.input_path in Path(f"/proc/{earlier.pid}/cmdline").read_text())
    record = store.update_batch(record, state="submitted", batch_id=f"pid {earlier.pid}")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    async def go():
        waiting = await transport.poll(store, record)
        assert waiting.state == "submitted" and waiting.batch_id == f"pid {earlier.pid}"
        earlier.kill()
        earlier.wait()
        return await transport.poll(store, waiting)  # gone, no output: read, not run again

    done = asyncio.run(go())
    out = tmp_path / "run" / "job1.output.jsonl"
    assert done.state == "downloaded" and not out.exists()
    assert (done.completed, done.failed) == (0, 1)
    assert f"the batch command (pid {earlier.pid}) an earlier session started ended (its exit " \
           f"status is unknown) and wrote no output file ({out})" in done.message

    reused = store.update_batch(record, state="submitted", batch_id=f"pid {other.pid}")
    assert asyncio.run(transport.poll(store, reused)).state == "downloaded"
    other.kill()
    other.wait()

    # recorded, not yet its pid, when the session died: the running command is found
    again = subprocess.Popen(sleeper, start_new_session=True)
    wait_for(lambda: record.input_path in Path(f"/proc/{again.pid}/cmdline").read_text())
    preparing = store.update_batch(record, state="preparing", batch_id=None, message="")
    try:
        found = asyncio.run(CommandBatchTransport(transport.template).submit(store, preparing))
        assert (found.state, found.batch_id) == ("submitted", f"pid {again.pid}")
    finally:
        again.kill()
        again.wait()
    assert not Path(f"{out}.runs").exists()  # never run by these sessions
    store.close()


def submitted_jobs(run_dir: Path) -> int:
    """The batch jobs of a run another process is writing that have a batch id (0 until its
    store has its tables: the file exists before them)."""
    if not (run_dir / "run.sqlite").exists():
        return 0
    try:
        return db(run_dir).execute(
            "SELECT COUNT(*) FROM batches WHERE batch_id IS NOT NULL").fetchone()[0]
    except sqlite3.OperationalError:  # no such table yet
        return 0


def test_a_command_that_outlives_a_killed_session_and_writes_a_spoiled_file_is_not_run_again(
        isolated_env, tmp_path):
    """kill -9 of the run while its --batch-command ran; the command then exited 0 with an
    output file partly written (a line cut short, garbage, a line missing, a custom_id twice,
    one of no request). The next session ran the command again (hours of GPU with vllm
    run-batch, unsaid) because the file did not answer every line. It is read instead: the
    lines that can be read are used, the others fail naming the file and what was wrong (their
    requests sent again as new ones), and the job's message says it all."""
    script = tmp_path / "run_batch.py"
    script.write_text(STAND_IN)
    tests = Path(__file__).resolve().parent
    command = f"{sys.executable} {script} {{input}} {{output}} {tests} " \
              "gate,cut,garbage,missing,duplicate,foreign"
    run_dir = tmp_path / "run"
    gate = tmp_path / "gate"
    env = {**isolated_env, "STAND_IN_GATE": str(gate)}
    args = cli_command("run", "--headless", "--model", "m", "--run-dir", str(run_dir),
                       "--target", "5", "--batch-command", command, "--batch-poll", "0.05",
                       "--prompts-per-round", "4")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: submitted_jobs(run_dir) == 1)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    gate.write_text("")  # the command, on its own, finishes its (spoiled) file and exits 0
    out = run_dir / "batches" / "job00001-r1-generate.output.jsonl"
    wait_for(lambda: Path(f"{out}.runs").exists())
    (pid,) = db(run_dir).execute("SELECT batch_id FROM batches").fetchone()
    wait_for(lambda: exited(int(pid.removeprefix("pid "))))

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert Path(f"{out}.runs").read_text() == "1\n"  # not run again
    conn = db(run_dir)
    job = conn.execute("SELECT * FROM batches WHERE id = 1").fetchone()
    assert job["state"] == "settled" and (job["completed"], job["failed"]) == (2, 2)
    message = job["message"]
    for said in (f"the batch command ({pid}) an earlier session started ended (its exit status "
                 f"is unknown) and answered 2 of 4 lines in {out}",
                 "2 line(s) not JSON (line 1, 6)", "1 line(s) for no request of this job: "
                 "generate-99999 (line 5)", "custom_id(s) on more than one line",
                 "job00001-r1-generate.command.log"):
        assert said in message, message
    ids = json.loads(job["prompt_ids"])
    prompts = conn.execute(f"SELECT id, response, error FROM prompts WHERE id IN "
                           f"({','.join(map(str, ids))}) ORDER BY id").fetchall()
    # the first line is used (not the later 500 for it), the second is missing, the last cut
    assert [p["response"] is not None for p in prompts] == [True, False, True, False]
    assert "the batch ended incomplete without an answer" in prompts[1]["error"]
    assert "without an answer to this request" in prompts[1]["error"] and \
        str(out) in prompts[1]["error"]
    assert f"its line (6 of {out}) could not be read: not JSON" in prompts[3]["error"]
    assert {r[0] for r in conn.execute("SELECT kind FROM errors")} <= {"unanswered"}
    assert_accounted(run_dir)
    export_run(run_dir, "alpaca", tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())


def test_a_stage_wakes_when_its_batch_command_exits_not_at_the_next_poll(tmp_path):
    """A --batch-command job was looked at only every --batch-poll seconds (30): a 1 s command
    held its stage up to 30 s (a round of two such jobs took 60 s). A command this process
    started wakes its stage when it exits, so with an hour between polls a run still reaches its
    target; a resumed run whose job died with its killed session reads it (not run twice: its
    requests go in new jobs, which wake it alike). A job an earlier session left running is
    still only polled (it is no child of this one): it is waited for, not run twice, and a stop
    still ends the wait at once."""
    import dataclasses
    import os
    import signal

    script = tmp_path / "run_batch.py"
    script.write_text(STAND_IN)
    tests = Path(__file__).resolve().parent
    good = f"{sys.executable} {script} {{input}} {{output}} {tests}"
    hour = {"batch": True, "batch_poll_seconds": 3600.0, "model": "m", "target": 5,
            "prompts_per_round": 3, "error_pause_seconds": 2}

    fresh = tmp_path / "fresh"
    with running(*new_run(fresh, "", **{**hour, "batch_command": good})) as engine:
        wait_for(lambda: engine.finished is not None or engine.paused is not None, 90)
    assert engine.finished is not None and engine.finished.reason.value == "target", \
        engine.paused and engine.paused.reason
    assert all(j["state"] == "settled" for j in db(fresh).execute("SELECT * FROM batches"))

    run_dir = tmp_path / "resumed"
    store, config = new_run(run_dir, "", **{**hour, "batch_command": "sleep 60 # {input} "
                                            "{output}"})
    with running(store, config):
        wait_for(lambda: db(run_dir).execute(
            "SELECT COUNT(*) FROM batches WHERE batch_id IS NOT NULL").fetchone()[0] == 1)
    (pid,) = db(run_dir).execute("SELECT batch_id FROM batches").fetchone()
    earlier = int(pid.removeprefix("pid "))
    assert not exited(earlier)  # the stop left the job running on its own
    config = dataclasses.replace(config, batch_command=good)

    with running(RunStore(run_dir), config) as engine:  # the earlier session's job still runs
        wait_for(lambda: engine.state.value == "running")
        time.sleep(0.5)
        assert [tuple(r) for r in db(run_dir).execute("SELECT state, batch_id FROM batches")] \
            == [("submitted", pid)]  # waited for, not run again
    assert engine.finished is not None and engine.finished.reason.value == "stopped"

    os.killpg(earlier, signal.SIGKILL)  # the job dies too (kill -9 of its session)
    wait_for(lambda: exited(earlier))
    with running(RunStore(run_dir), config) as engine:
        wait_for(lambda: engine.finished is not None or engine.paused is not None, 90)
    assert engine.finished is not None and engine.finished.reason.value == "target", \
        engine.paused and engine.paused.reason
    jobs = db(run_dir).execute("SELECT * FROM batches ORDER BY id").fetchall()
    assert all(j["state"] == "settled" for j in jobs)
    assert jobs[0]["batch_id"] == pid and jobs[0]["completed"] == 0  # read, not run again
    assert "ended (its exit status is unknown) and wrote no output file" in jobs[0]["message"]
    assert_accounted(run_dir)


def test_a_batch_line_failing_for_good_stops_the_run_as_the_request_would(run_cli, tmp_path):
    """Lines refused for a reason no later request can heal (here a --extra-body field the
    server does not take; a refused key and an unknown model alike) were each one line's
    rejection, and the run paid for batch after batch of the same refusal. The line's answer now
    goes through the requests' own table: the run stops after the first job, names the field
    once, and the resume command it prints leaves the field out."""
    import shlex

    run_dir = tmp_path / "run"
    refusal = {"status": 400, "body": {"object": "error", "type": "BadRequestError",
                                       "message": "top_k: extra inputs are not permitted"}}
    with FakeOpenAI(script={"*": [refusal]}, batch_polls=1) as server:
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(run_dir), "--target", "5", "--batch", "--batch-poll",
                       "0.05", "--prompts-per-round", "3", "--extra-body", '{"top_k": 20}',
                       timeout=120)
        created = server.batch_creations
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert created == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")][0]
    assert "refuses the field 'top_k' of --extra-body" in error
    resume = shlex.split(proc.stderr.split("resume it with: ")[1].strip())
    assert resume[resume.index("--extra-body") + 1] == "{}"
    conn = db(run_dir)
    errors = [r[0] for r in conn.execute("SELECT error FROM prompts")]
    assert len(errors) == 3 and all("refuses the field 'top_k'" in e for e in errors), errors
    assert_accounted(run_dir)


def test_a_batch_line_with_a_refused_key_stops_the_run_after_one_job(tmp_path):
    refused = {"status": 401, "body": {"error": {"message": "Incorrect API key provided",
                                                 "type": "invalid_request_error"}}}
    with FakeOpenAI(script={"*": [refused]}, batch_polls=1) as server:
        _, paused = until_paused(*new_run(tmp_path / "run", server.base_url, target=5,
                                          prompts_per_round=3, batch=True,
                                          batch_poll_seconds=0.02))
        created = server.batch_creations
    assert created == 1
    assert paused is not None and paused.by_errors
    assert "wants an API key and none was sent" in paused.reason  # (no key configured)


def _pending_job(run_dir: Path, server: FakeOpenAI, **cfg):
    """A run stopped while its first job (round 1's generation) is pending at `server`."""
    server.configure(batch_polls=10**6)
    store, config = new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                            batch=True, batch_poll_seconds=0.02, **cfg)
    with running(store, config):
        wait_for(lambda: server.batch_retrieves >= 1)
    assert [r[0] for r in db(run_dir).execute("SELECT state FROM batches")] == ["submitted"]
    return config


def test_polls_that_keep_failing_pause_the_run_and_the_job_is_not_sent_again(tmp_path):
    """The endpoint failing its polls (503) while a job is pending: each failed poll is a
    retry of the job, named, with the endpoint (it went only to a log); after
    error_pause_seconds the run pauses by errors (headless: exit 3), the job still pending.
    The next session polls it (never created again) and reads its answers."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=10**6) as server:
        store, config = new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02, error_pause_seconds=0.3)
        with running(store, config) as engine:
            wait_for(lambda: server.batch_retrieves >= 1)
            server.configure(batch_poll_status=503)
            wait_for(lambda: engine.paused is not None)
            paused = engine.paused
        assert paused is not None and paused.by_errors
        assert "polling batch job 1 (batch_1) failed: HTTP 503" in paused.reason
        assert "not sent again" in paused.reason
        conn = db(run_dir)
        retries = conn.execute("SELECT cause, endpoint, prompt_id, message FROM retries"
                               ).fetchall()
        assert len(retries) >= 2 and all(
            (r["cause"], r["endpoint"], r["prompt_id"]) == ("server_error", server.base_url,
                                                            None) for r in retries)
        assert [r[0] for r in conn.execute("SELECT state FROM batches")] == ["submitted"]
        server.configure(batch_poll_status=None, batch_polls=1)
        engine = resumed(run_dir, config)
        assert engine.finished is not None and engine.finished.reason.value == "target"
        first = conn.execute("SELECT state, batch_id FROM batches WHERE id = 1").fetchone()
        assert tuple(first) == ("settled", "batch_1")
        assert server.batch_creations == conn.execute("SELECT COUNT(*) FROM batches"
                                                      ).fetchone()[0]  # none created twice
    assert_accounted(run_dir)


def test_a_resume_whose_endpoint_is_down_pauses_instead_of_crashing(tmp_path):
    """The next session's first poll of a pending job failed (connection refused): the engine
    died with a traceback and exit 1, on every resume. It now polls again, then pauses by
    errors with the job still pending."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        config = _pending_job(run_dir, server)
    closed = server.base_url  # the endpoint that holds the job is gone: connection refused
    config.error_pause_seconds = 0.3
    engine, paused = until_paused(RunStore(run_dir), config)
    assert paused is not None and paused.by_errors and "cannot connect to" in paused.reason
    assert engine.finished is not None and engine.finished.reason.value == "stopped"
    conn = db(run_dir)
    assert not conn.execute("SELECT * FROM errors WHERE kind = 'engine'").fetchall()
    assert [r[0] for r in conn.execute("SELECT state FROM batches")] == ["submitted"]
    assert {r[0] for r in conn.execute("SELECT endpoint FROM retries")} == {closed}


@pytest.mark.parametrize("gone, named", [
    ("batch", "does not know batch batch_1 (404"),
    # the batch is known and completed, its output file is not: it was named as the batch
    ("files", "does not know the file file-"),
])
def test_a_batch_the_endpoint_no_longer_knows_is_lost_and_its_requests_sent_again(tmp_path,
                                                                                 gone, named):
    """A pending job's batch answered 404 on the next session's poll (deleted, another server
    or key): reported as "no Batch API" or, on resume, a crash on every attempt. Once the 404s
    last (3 polls in a row here: batch_lost_after_seconds 0) it is recorded lost, named among
    the errors, and its requests are sent again; each 404 before that is a retry of the job."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        config = _pending_job(run_dir, server)
        config.batch_lost_after_seconds = 0
        if gone == "batch":
            server.batches.clear()  # the endpoint forgot it
        else:
            server.configure(batch_files_gone=3)  # the job's output file: 3 polls in a row
        server.configure(batch_polls=1)
        engine = resumed(run_dir, config)
        created = server.batch_creations
    assert engine.finished is not None and engine.finished.reason.value == "target"
    conn = db(run_dir)
    lost = conn.execute("SELECT * FROM batches WHERE id = 1").fetchone()
    assert lost["state"] == "lost" and named in lost["message"], lost["message"]
    assert "3 poll(s) in a row" in lost["message"]
    errors = conn.execute("SELECT kind, message, endpoint FROM errors").fetchall()
    assert [(e["kind"], e["endpoint"]) for e in errors] == [("batch_lost", server.base_url)]
    retries = conn.execute("SELECT * FROM retries WHERE cause = 'not_found'").fetchall()
    assert [(r["attempt"], r["endpoint"], r["prompt_id"]) for r in retries] == [
        (1, server.base_url, None), (2, server.base_url, None)]
    assert all(named in r["message"] and "Polled again" in r["message"] for r in retries)
    ids = json.loads(lost["prompt_ids"])
    assert all(r[0] == lost["message"] for r in conn.execute(
        f"SELECT error FROM prompts WHERE id IN ({','.join(map(str, ids))})"))
    assert created == conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    assert_accounted(run_dir)


@pytest.mark.parametrize("gone", ["batch", "files"])
def test_a_batch_answered_404_for_a_while_is_read_and_nothing_is_paid_twice(tmp_path, gone):
    """A router in front of several vLLM/SGLang replicas sends a poll to one that did not
    create the batch, or a provider answers 404 just after creating it (or before its file is
    readable): one 404 recorded the job lost and sent its requests again in a new batch, paid
    twice. A 404 is now a retry of the poll (cause not_found) and the job is polled again; an
    answer between 404s starts their count again (lost needs 3 in a row here)."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=3) as server:
        if gone == "batch":  # 2 polls of 404, a read, 2 more: never 3 in a row
            server.configure(batch_poll_script=[404, 404, 200, 404, 404])
        else:
            server.configure(batch_files_gone=2)
        engine = ended(*new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02,
                                batch_lost_after_seconds=0))
        lines, created = server.batch_lines, server.batch_creations
    assert engine.finished is not None and engine.finished.reason.value == "target", \
        engine.paused and engine.paused.reason
    conn = db(run_dir)
    jobs = conn.execute("SELECT state FROM batches").fetchall()
    assert created == len(jobs) and {j[0] for j in jobs} == {"settled"}  # none created twice
    assert lines == conn.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]  # none twice
    assert not conn.execute("SELECT * FROM errors").fetchall()
    retries = conn.execute("SELECT * FROM retries WHERE cause = 'not_found'").fetchall()
    assert [r["attempt"] for r in retries] == ([1, 2, 1, 2] if gone == "batch" else [1, 2])
    assert all("(404: " in r["message"] and r["endpoint"] == server.base_url for r in retries)
    assert tuple(conn.execute("SELECT not_found_polls, not_found_since FROM batches WHERE id = 1"
                              ).fetchone()) == (0, None)
    assert_accounted(run_dir)


def test_404s_go_on_counting_across_a_resume_and_do_not_pause_the_run(tmp_path):
    """404s for a pending job are counted in the store (the first one's time and how many in
    a row): a stop and resume does not start the wait over from zero. Before they last
    batch_lost_after_seconds the job is polled again, never sent again, and the run is not
    paused by errors (the 404s have their own end: lost)."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        config = _pending_job(run_dir, server, batch_lost_after_seconds=10**6,
                              error_pause_seconds=0.1)
        server.batches.clear()  # 404 from now on
        not_found = "SELECT COUNT(*) FROM retries WHERE cause = 'not_found'"
        with running(RunStore(run_dir), config) as engine:
            # 20 polls 0.02 s apart: 404s for longer than error_pause_seconds
            wait_for(lambda: db(run_dir).execute(not_found).fetchone()[0] >= 20)
            paused = engine.paused
        assert paused is None
        conn = db(run_dir)
        row = conn.execute("SELECT * FROM batches WHERE id = 1").fetchone()
        assert row["state"] == "submitted" and row["not_found_polls"] >= 20
        since, polls = row["not_found_since"], row["not_found_polls"]
        retried = conn.execute(not_found).fetchone()[0]
        config.batch_lost_after_seconds = 0
        server.configure(batch_polls=1)  # the jobs that send its requests again end
        # its first poll is the 3rd 404 in a row, or more
        engine = ended(RunStore(run_dir), config)
    assert engine.finished is not None and engine.finished.reason.value == "target", \
        engine.paused and engine.paused.reason
    lost = conn.execute("SELECT * FROM batches WHERE id = 1").fetchone()
    assert (lost["state"], lost["not_found_since"], lost["not_found_polls"]) == (
        "lost", since, polls + 1)
    assert f"{polls + 1} poll(s) in a row" in lost["message"]
    assert conn.execute(not_found).fetchone()[0] == retried  # lost at the resume's first poll
    assert_accounted(run_dir)


def test_polls_alternating_404_and_5xx_pause_the_run_and_the_job_is_kept(tmp_path):
    """Each 5xx answer between 404s starts their count again (the batch may well be there), so
    such a job is never recorded lost; the failed polls still pause the run by errors, the job
    pending, not sent again."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=10**6) as server:
        store, config = new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02, error_pause_seconds=0.2,
                                batch_lost_after_seconds=0)
        server.configure(batch_poll_script=[503, 404] * 1000)
        engine, paused = until_paused(store, config)
        created = server.batch_creations
    assert paused.by_errors and "injected 503 on poll" in paused.reason
    conn = db(run_dir)
    assert created == 1
    assert [r[0] for r in conn.execute("SELECT state FROM batches")] == ["submitted"]
    causes = [tuple(r) for r in conn.execute("SELECT cause, attempt FROM retries "
                                             "WHERE cause = 'not_found'")]
    assert len(causes) >= 2 and set(causes) == {("not_found", 1)}
    assert not conn.execute("SELECT * FROM errors WHERE kind = 'batch_lost'").fetchall()


def test_a_batch_command_the_shell_cannot_find_stops_the_run_after_one_job(tmp_path):
    """A typo in --batch-command (exit 127) failed each job's lines and the run started the
    command again every round; with a real command, a model load each time."""
    run_dir = tmp_path / "run"
    _, paused = until_paused(*new_run(
        run_dir, "", target=5, prompts_per_round=3, batch=True, batch_poll_seconds=0.02,
        model="m", batch_command="no-such-batch-command-xyz -i {input} -o {output}"))
    assert paused is not None and paused.by_errors
    assert "command not found (exit 127" in paused.reason and "--batch-command" in paused.reason
    assert db(run_dir).execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 1


def test_a_batch_run_resumed_with_no_batch_reads_its_jobs_and_sends_the_rest_one_by_one(
        tmp_path, run_cli):
    """Batch mode is safe to change on resume, but no flag turned it off (--batch only turns it
    on, and the stored setting wins). --no-batch does; a job already sent is still read, not
    sent again as single requests."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        _pending_job(run_dir, server)
        server.configure(batch_polls=1)
        proc = run_cli("run", "--headless", "--run-dir", str(run_dir), "--no-batch",
                       "--batch-poll", "0.02", timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert server.batch_creations == 1 and server.requests > 0
    conn = db(run_dir)
    assert [r[0] for r in conn.execute("SELECT state FROM batches")] == ["settled"]
    config = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'config'"
                                     ).fetchone()[0])
    assert config["batch"] is False
    assert_accounted(run_dir)


def test_batch_mode_and_a_pool_of_endpoints_are_refused_together(run_cli, tmp_path):
    """Jobs went to the first endpoint only, round after round, while it was down and the
    other answered (fresh-user pass)."""
    proc = run_cli("run", "--headless", "--batch", "--base-url", "http://a.example/v1",
                   "--base-url", "http://b.example/v1", "--model", "m", "--run-dir",
                   str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "batch (--batch) sends each job to one endpoint, not a pool of 2" in proc.stderr
    refused = run_cli("run", "--headless", "--batch", "--no-batch", "--run-dir",
                      str(tmp_path / "run2"))
    assert refused.returncode == 2 and "--no-batch cannot be combined" in refused.stderr


def test_an_unanswered_poll_is_one_attempt_and_counted(tmp_path):
    """A poll that got no answer was retried by the client itself (4 attempts, 4 x --timeout
    before one retry was recorded, so the pause came 4 times late). Each poll is now one
    attempt, and each unanswered one a retry of the job."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=10**6) as server:
        store, config = new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02, request_timeout=0.3,
                                error_pause_seconds=1.0)
        with running(store, config) as engine:
            wait_for(lambda: server.batch_retrieves >= 1)
            server.configure(batch_poll_hang=0.6)
            wait_for(lambda: engine.paused is not None)
        hung = server.batch_poll_hangs
    causes = [r[0] for r in db(run_dir).execute("SELECT cause FROM retries")]
    assert len(causes) >= 2 and set(causes) == {"timeout"}
    assert hung in (len(causes), len(causes) + 1)  # + one a stop left unanswered


def test_a_stop_does_not_wait_for_an_unanswered_poll(tmp_path):
    """A stop waited for a poll in flight up to --timeout (4 times, with the client's own
    retries), whatever --stop-grace said; the job stays pending for the next session."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=10**6) as server:
        store, config = new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02, request_timeout=120)
        engine = Engine(store, config)
        thread = threading.Thread(target=engine.run)
        thread.start()
        wait_for(lambda: server.batch_retrieves >= 1)
        server.configure(batch_poll_hang=120)
        wait_for(lambda: server.batch_poll_hangs >= 1)
        engine.stop()
        thread.join(timeout=30)
        alive = thread.is_alive()
        server.configure(batch_poll_hang=0)
        thread.join(timeout=150)
        store.close()
    assert not alive  # it did not wait out the unanswered poll
    assert [r[0] for r in db(run_dir).execute("SELECT state FROM batches")] == ["submitted"]


def test_a_pending_batch_is_polled_only_where_it_was_created(tmp_path):
    """Resumed with --no-batch and a pool whose first endpoint is another server, a pending job
    was polled there, answered 404, recorded lost and its requests sent again, while the batch
    ran (and was paid) where it was created. The run now stops and names that endpoint; given
    first, it reads the job."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as held, FakeOpenAI() as other:
        config = _pending_job(run_dir, held)
        held.configure(batch_polls=1)
        config.batch = False
        config.base_url = other.base_url
        config.endpoints = [{"base_url": other.base_url}, {"base_url": held.base_url}]
        engine = resumed(run_dir, config)
        assert engine.finished is not None and engine.finished.reason.value == "failing"
        assert f"was created at {held.base_url}" in engine.finished.message
        assert f"give --base-url {held.base_url}" in engine.finished.message
        conn = db(run_dir)
        assert [tuple(r) for r in conn.execute("SELECT state, endpoint FROM batches")] == [
            ("submitted", held.base_url)]
        assert other.batch_retrieves == 0 and other.requests == 0
        config.base_url = held.base_url
        config.endpoints = [{"base_url": held.base_url}, {"base_url": other.base_url}]
        engine = resumed(run_dir, config)
        assert engine.finished is not None and engine.finished.reason.value == "target"
        assert held.batch_creations == 1
    assert [r[0] for r in conn.execute("SELECT state FROM batches")] == ["settled"]
    assert_accounted(run_dir)


def test_a_resumed_command_job_that_cannot_run_says_what_happens_to_it(tmp_path):
    """A job recorded but never started (the session killed in that instant) is started on
    resume; a --batch-command with a typo then stopped the run saying "the job stays pending at
    the endpoint" (an offline job has no endpoint, and its requests are sent again). Fixed, the
    same run reaches its target."""
    import dataclasses
    import os
    import signal

    script = tmp_path / "run_batch.py"
    script.write_text(STAND_IN)
    tests = Path(__file__).resolve().parent
    good = f"{sys.executable} {script} {{input}} {{output}} {tests}"
    run_dir = tmp_path / "run"
    store, config = new_run(run_dir, "", target=5, prompts_per_round=3, batch=True,
                            batch_poll_seconds=0.02, model="m",
                            batch_command="sleep 60 # {input} {output}")
    with running(store, config):
        wait_for(lambda: db(run_dir).execute(
            "SELECT COUNT(*) FROM batches WHERE batch_id IS NOT NULL").fetchone()[0] == 1)
    (pid,) = db(run_dir).execute("SELECT batch_id FROM batches").fetchone()
    os.killpg(int(pid.removeprefix("pid ")), signal.SIGKILL)
    wait_for(lambda: exited(int(pid.removeprefix("pid "))))
    with contextlib.closing(RunStore(run_dir)) as store:  # as if never started
        (job,) = store.batches()
        store.update_batch(job, state="preparing", batch_id=None, status="")

    typo = resumed(run_dir, dataclasses.replace(config, batch_command="no-such-cmd-xyz {input}"))
    assert typo.finished is not None and typo.finished.reason.value == "failing"
    message = typo.finished.message
    assert "command not found" in message and "--batch-command" in message
    assert "at the endpoint" not in message and "sent again" in message

    fixed = resumed(run_dir, dataclasses.replace(config, batch_command=good))
    assert fixed.finished is not None and fixed.finished.reason.value == "target"
    assert_accounted(run_dir)


def test_a_resumed_run_waiting_for_its_pending_job_has_started_and_obeys_attached_uis(tmp_path):
    """A resumed batch run polls the job its last session left pending, which can take hours.
    It said nothing of the run ("resuming run ...", model, pool: RunStarted) until the job was
    done, and an attached UI's stop went unread (the control channel started after it)."""
    from selfinstruct_tui.engine import events as ev
    from selfinstruct_tui.engine.control import RemoteControl, RunState, Stop

    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        config = _pending_job(run_dir, server)
        store = RunStore(run_dir)
        seen: list[ev.Event] = []
        with running(store, config, seen.append) as engine:
            polls = server.batch_retrieves
            wait_for(lambda: server.batch_retrieves > polls + 2)  # polling the old job
            assert any(isinstance(e, ev.RunStarted) and e.resumed for e in seen)
            assert engine.state is RunState.RUNNING
            RemoteControl(run_dir).send(Stop())
            wait_for(lambda: engine.finished is not None)
        assert engine.finished is not None and engine.finished.reason.value == "stopped"
        assert server.batch_creations == 1  # the pending job was not sent again
    assert [r[0] for r in db(run_dir).execute("SELECT state FROM batches")] == ["submitted"]
    assert_accounted(run_dir)


def test_headless_on_a_terminal_shows_a_bar_for_each_pending_batch_job(isolated_env, tmp_path):
    """On a terminal (here a pty) each pending job has a bar with its request counts and status
    under the pool's; its line is printed when its state or status changes."""
    import re

    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=30) as server:
        code, screen = on_a_terminal(
            isolated_env, lambda seen, write: None, "run", "--headless", "--base-url",
            server.base_url, "--model", "m", "--run-dir", str(run_dir), "--target", "3",
            "--batch", "--batch-poll", "0.05", "--prompts-per-round", "2", columns=150,
            stdin_tty=False)
    assert code == 0, screen[-2000:]
    bars = re.findall(r"batch job 1 \(round 1, generate\) +\S+ +(\d+)/(\d+) +in_progress", screen)
    assert bars and bars[0] == ("0", "2"), screen[-3000:]
    assert screen.count("batch job 1 (round 1, generate): in_progress") == 1
    assert "batch job 1 (round 1, generate): completed 2/2 done" in screen


@pytest.mark.parametrize("command, says", [
    ("false {input} {output}", "the batch command exited with 1"),
    ("true {input} {output}", "the batch command exited with 0 but wrote no output file"),
])
def test_a_batch_command_that_answers_nothing_pauses_naming_the_command(tmp_path, command, says):
    """A command that fails (or exits 0 and writes nothing): its requests were failures of
    cause "http" and the pause said "the endpoint is up but keeps failing" of a run with no
    endpoint; an export's metadata named the placeholder URL."""
    run_dir = tmp_path / "run"
    _, paused = until_paused(*new_run(
        run_dir, "", target=5, prompts_per_round=3, batch=True, batch_poll_seconds=0.02,
        model="m", batch_command=command, error_pause_seconds=0.2))
    assert paused is not None and paused.by_errors
    assert f"Check the batch command ({command}) and its logs ({run_dir}/batches/job*.command" \
           ".log)" in paused.reason, paused.reason
    assert "endpoint" not in paused.reason and "unanswered" in paused.reason
    conn = db(run_dir)
    errors = [r[0] for r in conn.execute("SELECT error FROM prompts WHERE error IS NOT NULL")]
    assert errors and all(says in e and "no status" not in e for e in errors), errors[:2]
    # every job's lines are counted as failed (a command that exited 0 said "0 failed")
    assert all(j["failed"] == j["total"] > 0 and j["completed"] == 0
               for j in conn.execute("SELECT * FROM batches"))
    assert {r[0] for r in conn.execute("SELECT kind FROM errors")} == {"unanswered"}
    assert_accounted(run_dir)
    export_run(run_dir, "alpaca", tmp_path / "out.json")
    meta = json.loads((tmp_path / "out.json.meta.json").read_text())
    assert meta["endpoints"] == [{"command": command, "model": "m", "answers": None}]


def test_resuming_at_another_base_url_than_a_pending_job_is_refused_up_front(run_cli, tmp_path):
    """The engine refused to poll there, but only once started: exit 3 as if the endpoint had
    failed, and the printed resume command repeated the wrong --base-url."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server, FakeOpenAI() as other:
        _pending_job(run_dir, server)
        proc = run_cli("run", "--headless", "--run-dir", str(run_dir), "--batch",
                       "--base-url", other.base_url)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"is pending at {server.base_url}" in proc.stderr
        assert f"give --base-url {server.base_url}" in proc.stderr
        assert "resume with:" not in proc.stdout + proc.stderr  # no command with the wrong URL
        assert "Safe to change" not in proc.stderr  # base_url is, but not while the job waits
        assert other.batch_retrieves == server.batch_creations - 1 == 0


def test_headless_says_a_stop_that_cancels_the_jobs_cancels_them(tmp_path):
    """An attached UI's stop with "cancel them": the headless engine's log said the job
    "stays pending at the endpoint", then that it was cancelled."""
    import io

    from rich.console import Console

    from selfinstruct_tui.engine.control import RemoteControl, Stop
    from selfinstruct_tui.headless import HeadlessPrinter

    run_dir = tmp_path / "run"
    out = io.StringIO()
    printer = HeadlessPrinter(Console(file=out, width=200))
    with FakeOpenAI(batch_polls=10**6) as server:
        store, config = new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02)
        with running(store, config, printer) as engine:
            wait_for(lambda: server.batch_retrieves >= 1)
            RemoteControl(run_dir).send(Stop(cancel_batches=True))
            wait_for(lambda: engine.finished is not None)
        assert server.batches["batch_1"]["status"] == "cancelled"
    text = out.getvalue()
    assert "cancelling 1 batch job(s)" in text and "stay pending" not in text, text
    assert "batch job 1 (round 1, generate): cancelled" in text


def test_a_stop_keeping_batch_command_jobs_says_they_run_on_not_that_an_endpoint_holds_them(
        tmp_path):
    import io
    import os
    import signal

    from rich.console import Console

    from selfinstruct_tui.headless import HeadlessPrinter

    run_dir = tmp_path / "run"
    out = io.StringIO()
    store, config = new_run(run_dir, "", target=5, prompts_per_round=3, batch=True,
                            batch_poll_seconds=0.02, model="m",
                            batch_command="sleep 60 # {input} {output}")
    with running(store, config, HeadlessPrinter(Console(file=out, width=200))):
        wait_for(lambda: db(run_dir).execute(
            "SELECT COUNT(*) FROM batches WHERE batch_id IS NOT NULL").fetchone()[0] == 1)
    (pid,) = db(run_dir).execute("SELECT batch_id FROM batches").fetchone()
    os.killpg(int(pid.removeprefix("pid ")), signal.SIGKILL)
    text = out.getvalue()
    assert "1 batch command job(s) keep running on their own" in text, text
    assert "at the endpoint" not in text and "offline.invalid" not in text


VLLM_FAILED_LINES = textwrap.dedent('''
    """`vllm run-batch` failing every line: its ErrorResponse is the line's `error` (the
    message under "error", as vLLM writes it since 0.10), the response has no body."""
    import json, sys
    with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
        for n, raw in enumerate(src):
            line = json.loads(raw)
            error = {"error": {"message": "This model's maximum context length is 4096 tokens",
                               "type": "BadRequestError", "param": None, "code": 400}}
            out.write(json.dumps({"id": f"vllm-{n}", "custom_id": line["custom_id"],
                                  "response": {"status_code": 400, "request_id": f"r{n}",
                                               "body": None}, "error": error}) + "\\n")
''')


def test_a_failed_line_names_the_servers_words_in_vllms_shape_and_in_a_200_body(tmp_path):
    """vLLM's run-batch puts its error object under the line's `error` with the message one
    level down ({"error": {"message": ...}}): every failed line's reason read "None". A line of
    status 200 whose body is an error object (a proxy's) read "malformed batch line:
    'choices'". Both now carry the server's words, and the 200 one its code's handling (503:
    unanswered, taken up again)."""
    script = tmp_path / "vllm_failed.py"
    script.write_text(VLLM_FAILED_LINES)
    run_dir = tmp_path / "run"
    _, paused = until_paused(*new_run(
        run_dir, "", target=5, prompts_per_round=3, batch=True, batch_poll_seconds=0.02,
        model="m", batch_command=f"{sys.executable} {script} {{input}} {{output}}",
        max_fruitless_requests=3))
    assert paused is not None
    errors = [r[0] for r in db(run_dir).execute("SELECT error FROM prompts")]
    assert errors and all("maximum context length is 4096 tokens" in e and "None" not in e
                          for e in errors), errors
    overloaded = {"status": 200, "body": {"error": {"message": "upstream overloaded",
                                                    "type": "server_error", "code": 503}}}
    run_dir = tmp_path / "run2"
    with FakeOpenAI(batch_polls=1, script={"classify": [overloaded]},
                    repeat_last=False) as server:
        engine = run_engine(run_dir, server.base_url, target=8, prompts_per_round=3)
    assert engine.finished is not None and engine.finished.reason.value == "target"
    conn = db(run_dir)
    (error,) = [r[0] for r in conn.execute("SELECT error FROM prompts WHERE error IS NOT NULL")]
    assert "upstream overloaded" in error and "(503)" in error, error
    # (a 503 that says the server is overloaded has that cause of its own, as a request's has)
    assert [r[0] for r in conn.execute("SELECT kind FROM errors")] == ["overloaded"]
    assert [r[0] for r in conn.execute(
        "SELECT reason FROM rejections WHERE reason IN ('unanswered', 'request_failed')")] == [
        "unanswered"]
    assert_accounted(run_dir)


def test_a_batch_completed_before_it_names_its_output_file_is_polled_for_it(tmp_path):
    """A provider says "completed" a moment before it names the output file (output_file_id
    null on that poll): the job was read then, every request "without an answer", and sent again
    in a new batch: paid twice. It is polled again until the file is named."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1) as server:
        server.configure(batch_files_lag=2)
        engine = ended(*new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02))
        lines = server.batch_lines
    assert engine.finished is not None and engine.finished.reason.value == "target", \
        engine.paused and engine.paused.reason
    conn = db(run_dir)
    assert conn.execute("SELECT COUNT(*) FROM prompts WHERE response IS NULL").fetchone()[0] == 0
    assert lines == conn.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]  # none twice
    assert all(j["message"] == "" and j["output_path"]
               for j in conn.execute("SELECT * FROM batches"))
    assert_accounted(run_dir)


def test_a_cancelled_batchs_answered_lines_are_read_by_the_next_session(tmp_path):
    """A stop that cancels the pending jobs recorded them `cancelled` and never read them: the
    lines the batch answered before the cancel (paid, in its output file) were lost. The job
    stays submitted; the next session polls it to its end and reads them."""
    from selfinstruct_tui.engine.control import RemoteControl, Stop

    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=10**6) as server:
        server.configure(batch_cancel_partial=True)
        store, config = new_run(run_dir, server.base_url, target=8, prompts_per_round=4,
                                batch=True, batch_poll_seconds=0.02)
        with running(store, config) as engine:
            wait_for(lambda: server.batch_retrieves >= 1)
            RemoteControl(run_dir).send(Stop(cancel_batches=True))
            wait_for(lambda: engine.finished is not None)
        assert server.batches["batch_1"]["status"] == "cancelled"
        server.configure(batch_polls=1)
        engine = ended(RunStore(run_dir), config)
        assert engine.finished is not None and engine.finished.reason.value == "target"
    conn = db(run_dir)
    job = conn.execute("SELECT * FROM batches WHERE id = 1").fetchone()
    assert (job["state"], job["status"], job["completed"]) == ("settled", "cancelled", 2)
    ids = json.loads(job["prompt_ids"])
    answered = conn.execute(f"SELECT COUNT(*) FROM prompts WHERE id IN "
                            f"({','.join(map(str, ids))}) AND response IS NOT NULL").fetchone()
    assert answered[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM candidates WHERE round = 1").fetchone()[0] > 0
    assert_accounted(run_dir)


def test_a_batch_command_that_quotes_its_placeholders_gets_paths_with_spaces(tmp_path):
    """`-i "{input}"` (a shell habit) put the already quoted path inside the user's quotes:
    under a run directory with a space (macOS's "Application Support") the command was given
    "'/.../Application Support/...'" and every job failed. A placeholder in quotes of its own is
    replaced, quotes and all, by the quoted path."""
    script = tmp_path / "run_batch.py"
    script.write_text(STAND_IN)
    tests = Path(__file__).resolve().parent
    command = f"{sys.executable} {script} \"{{input}}\" '{{output}}' {tests}"
    run_dir = tmp_path / "Application Support" / "run"
    engine = ended(*new_run(run_dir, "", target=5, prompts_per_round=3, batch=True,
                            batch_poll_seconds=0.02, model="m", batch_command=command,
                            error_pause_seconds=2))
    assert engine.finished is not None and engine.finished.reason.value == "target", \
        engine.paused and engine.paused.reason
    assert all(j["state"] == "settled" for j in db(run_dir).execute("SELECT * FROM batches"))


def test_headless_prints_a_batch_jobs_failed_polls_by_their_own_count(run_cli, isolated_env,
                                                                       tmp_path):
    """Headless prints the first 3 retries of a run, then every 100th: a batch job's 404
    spell after 3 earlier retries printed nothing until the job was lost (by default up to
    10 minutes later). A job's failed polls are now printed by their own count (its polls
    failing in a row: the first 3, then every 10th), so every 404 of these short spells is
    shown, each as in the store."""
    Path(isolated_env["SELFINSTRUCT_CONFIG"]).write_text("batch_lost_after_seconds = 0\n")
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1) as server:
        server.configure(batch_poll_script=[404] * 8)
        proc = run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                       "--run-dir", str(run_dir), "--target", "3", "--batch", "--batch-poll",
                       "0.05", "--prompts-per-round", "2", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    printed = [line for line in output.splitlines() if line.startswith("retry (not found")]
    stored = db(run_dir).execute(
        "SELECT attempt FROM retries WHERE cause = 'not_found' ORDER BY id").fetchall()
    assert len(stored) >= 5, stored  # two jobs lost (3 polls each, 2 retries), then 2 more
    assert len(printed) == len(stored), (printed, stored)
    assert all(f"attempt {a}," in line for (a,), line in zip(stored, printed, strict=True))


ENQUEUED = {"code": "token_limit_exceeded", "message": "Enqueued token limit reached for m in "
            "organization org-1. Limit: 90,000 enqueued tokens. Please try again once some "
            "in_progress batches have been completed."}


@pytest.mark.parametrize("refusal, says", [
    ({"code": "model_not_found", "line": 1, "param": "body.model",
      "message": "The provided model 'm' is not supported by the Batch API."}, "--model"),
    ({"code": "invalid_url", "line": 1, "message": "The URL provided for this request does not "
      "match the batch endpoint."}, "--api"),
    ({"code": "invalid_request", "message": "The batch input file is not valid."}, "--extra-body"),
    ({"code": "some_code_no_one_documented", "message": "Nope."}, "then resume"),
])
def test_a_batch_refused_for_a_reason_of_the_run_stops_it_without_another_job(tmp_path, refusal,
                                                                           says):
    """A batch the endpoint's validation refused (status `failed`, `errors.data`) for a reason
    every job of the run would meet (its model, its endpoint path, the file's shape) left its
    requests unanswered: they were sent again in a new job, refused alike, job after job. The
    run now pauses at the first, with the endpoint's words and what to change, and no other job
    is created. A refusal that clears by waiting (the organisation's enqueued-token limit,
    `token_limit_exceeded`) still sends its requests again, as an expired batch's are."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1) as server:
        server.configure(batch_invalid=[ENQUEUED, refusal])
        with running(*new_run(run_dir, server.base_url, target=20, prompts_per_round=3,
                              batch=True, batch_poll_seconds=0.02)) as engine:
            wait_for(lambda: engine.paused is not None or server.batch_creations > 2)
            paused = engine.paused
        created = server.batch_creations
    assert created == 2  # the enqueued-limit one, sent again; the refused one, not
    assert paused is not None and paused.by_errors
    assert f"{refusal['code']}: {refusal['message']}" in paused.reason, paused.reason
    assert says in paused.reason, paused.reason
    jobs = db(run_dir).execute("SELECT * FROM batches ORDER BY id").fetchall()
    assert [(j["status"], j["state"]) for j in jobs] == [("failed", "settled")] * 2
    assert "token_limit_exceeded" in jobs[0]["message"]
    assert_accounted(run_dir)


def test_a_batch_failed_with_no_reason_given_sends_its_requests_again(tmp_path):
    """A batch some servers end `failed` with no `errors.data` at all: nothing says every job
    would be refused alike, so its requests go out again in a new job (it stopped the run as a
    refusal of the run with "no reason given")."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1) as server:
        server.configure(batch_invalid=[{"empty": True}])
        engine = ended(*new_run(run_dir, server.base_url, target=8, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02))
    assert engine.paused is None, engine.paused
    assert engine.finished is not None and engine.finished.reason.value == "target"
    first = db(run_dir).execute("SELECT status, state, refusal FROM batches ORDER BY id").fetchone()
    assert tuple(first) == ("failed", "settled", "")
    assert_accounted(run_dir)


def test_a_batch_job_the_endpoint_refuses_to_create_stops_the_run_after_one(tmp_path):
    """A create answered 400 (an endpoint path or completion window the server does not take)
    failed that job's requests as refused ones, and the next stage uploaded and was refused
    again, round after round, every candidate lost. It stops the run at the first, naming the
    refusal and what to change."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1) as server:
        server.configure(batch_create_error={
            "status": 400, "param": "endpoint", "code": "invalid_value",
            "message": "Invalid value for 'endpoint': '/v1/completions' is not supported."})
        with running(*new_run(run_dir, server.base_url, target=20, prompts_per_round=3,
                              batch=True, batch_poll_seconds=0.02)) as engine:
            wait_for(lambda: engine.paused is not None or server.uploads > 1)
            paused = engine.paused
        uploads = server.uploads
    assert uploads == 1
    assert paused is not None and paused.by_errors
    assert "'/v1/completions' is not supported" in paused.reason and "--api" in paused.reason
    assert_accounted(run_dir)


@pytest.mark.parametrize("lost", ["batch_upload_drop", "batch_create_drop"])
@pytest.mark.parametrize("looks_failing", [0, 6])
def test_an_upload_or_create_whose_answer_is_lost_is_found_not_sent_twice(tmp_path, lost,
                                                                         looks_failing):
    """The endpoint stored the file (or created the batch, paid) and the connection closed
    before its answer: the client sent it again, a second file (a second batch, paid twice).
    The job's own upload (batch) is looked for and used instead. When the look in the
    endpoint's list fails too (503, the endpoint in trouble), that was read as "not there" and
    it was sent again (or, a connection error, the job was given up while its batch ran): it is
    looked for again until a look answers, and found."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1) as server:
        # (the client tries a list 4 times: with 6 failing, the first look fails whole)
        server.configure(**{lost: 1}, batch_list_fail=looks_failing)
        engine = run_engine(run_dir, server.base_url, target=8, prompts_per_round=3)
        jobs = db(run_dir).execute("SELECT * FROM batches ORDER BY id").fetchall()
        assert engine.finished is not None and engine.finished.reason.value == "target"
        assert server.uploads == server.batch_creations == len(jobs)
    assert jobs[0]["input_file_id"] == "file-1" and jobs[0]["batch_id"] == "batch_1"
    assert all(j["state"] == "settled" for j in jobs)
    retries = [m for (m,) in db(run_dir).execute("SELECT message FROM retries")]
    assert any("looked for again, not sent again" in m for m in retries) == bool(looks_failing)
    assert_accounted(run_dir)


@pytest.mark.parametrize("step", ["upload", "create"])
def test_a_session_killed_while_its_upload_or_create_was_answered_does_not_send_it_again(
        isolated_env, tmp_path, step):
    """kill -9 while the endpoint had stored the job's file (or created its batch) and its
    answer was on the way: the next session uploaded the file again (and created a second
    batch, paid twice, the first one unknown to the run). It finds the first and uses it."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1) as server:
        server.configure(**{f"batch_{step}_hang": 60})
        args = cli_command("run", "--headless", "--base-url", server.base_url, "--model", "m",
                           "--run-dir", str(run_dir), "--target", "6", "--batch",
                           "--batch-poll", "0.05", "--prompts-per-round", "3")
        proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: (server.uploads if step == "upload" else server.batch_creations)
                     >= 1)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        assert db(run_dir).execute("SELECT input_file_id, batch_id FROM batches").fetchone()[
            1] is None
        server.configure(**{f"batch_{step}_hang": 0})
        done = subprocess.run(args, env=isolated_env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        jobs = db(run_dir).execute("SELECT * FROM batches ORDER BY id").fetchall()
        assert server.uploads == server.batch_creations == len(jobs), (
            server.uploads, server.batch_creations, len(jobs))
    assert (jobs[0]["input_file_id"], jobs[0]["batch_id"]) == ("file-1", "batch_1")
    assert all(j["state"] == "settled" for j in jobs)
    assert_accounted(run_dir)


HOLDER = textwrap.dedent('''
    """Writes its pid to argv[1], waits for the file argv[2], then runs the rest of its
    arguments (after --)."""
    import os, pathlib, subprocess, sys, time
    pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
    while not pathlib.Path(sys.argv[2]).exists():
        time.sleep(0.02)
    sys.exit(subprocess.call(sys.argv[sys.argv.index("--") + 1:]))
''')


def test_a_command_started_by_a_session_killed_before_it_saved_the_pid_is_not_run_again(
        isolated_env, tmp_path):
    """kill -9 of the run after it started a job's --batch-command and before the job's pid was
    in the store, a command that names its input file in no argument (`exec tool < {input} >
    {output}`): the next session found no process naming the file and ran the command again,
    beside the first. The command runs with the job in its environment, so the next session
    finds it, waits for it and reads its output; and a job recorded as starting whose command
    is gone and left nothing is read (its requests sent again as new ones), not run again.
    (The kill is real; the store is then put as a kill in that instant leaves it, the pid not
    yet written: nothing outside the engine can stop it between the two.)"""
    import asyncio

    script, holder = tmp_path / "run_batch.py", tmp_path / "holder.py"
    script.write_text(STAND_IN)
    holder.write_text(HOLDER)
    tests = Path(__file__).resolve().parent
    run_dir = tmp_path / "run"
    flag, gate = tmp_path / "started", tmp_path / "gate"
    command = (f"exec {sys.executable} {holder} {flag} {gate} -- {sys.executable} {script} - "
               f"{{output}} {tests} < {{input}}")
    args = cli_command("run", "--headless", "--model", "m", "--run-dir", str(run_dir),
                       "--target", "5", "--batch-command", command, "--batch-poll", "0.05",
                       "--prompts-per-round", "3")
    first = subprocess.Popen(args, env=isolated_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    resumed = None
    try:
        wait_for(lambda: flag.exists() and flag.read_text().strip())
        first.kill()  # the command runs on, gated
        first.wait(timeout=10)
        held = int(flag.read_text())
        conn = db(run_dir)
        with conn:
            conn.execute("UPDATE batches SET batch_id = NULL, state = 'preparing', status = "
                         "'starting' WHERE id = 1")
        resumed = subprocess.Popen(args, env=isolated_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: db(run_dir).execute(
            "SELECT batch_id FROM batches WHERE id = 1").fetchone()[0] is not None)
        assert db(run_dir).execute("SELECT batch_id FROM batches WHERE id = 1").fetchone()[0] \
            == f"pid {held}"  # the first command, waited for
        gate.write_text("")
        out = resumed.communicate(timeout=120)[0]
        assert resumed.returncode == 0, out
    finally:
        gate.write_text("")
        for proc in (first, resumed):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    output = run_dir / "batches" / "job00001-r1-generate.output.jsonl"
    assert Path(f"{output}.runs").read_text() == "1\n"  # run once
    conn = db(run_dir)
    job = conn.execute("SELECT * FROM batches WHERE id = 1").fetchone()
    assert job["state"] == "settled" and job["completed"] == job["total"] == 3
    assert_accounted(run_dir)

    # recorded as starting, its command gone without a trace: read, not run
    (tmp_path / "gone").mkdir()
    store, record, transport = command_job(tmp_path / "gone")
    record = store.update_batch(record, status="starting")
    done = asyncio.run(transport.submit(store, record))
    assert done.state == "downloaded" and (done.completed, done.failed) == (0, 1)
    assert "wrote no output file" in done.message
    assert not (tmp_path / "gone" / "run" / "job1.output.jsonl.runs").exists()
    store.close()


def test_a_batch_refused_as_a_whole_read_at_resume_stops_the_run_without_another_job(tmp_path):
    """A job an earlier session left pending, refused as a whole when the resumed session polls
    it (or any line failing for a reason every request would meet): its requests were recorded
    as failed and the run went on, its next job refused alike. It stops the run there."""
    run_dir = tmp_path / "run"
    refusal = {"code": "model_not_found", "line": 1, "param": "body.model",
               "message": "The provided model 'm' is not supported by the Batch API."}
    with FakeOpenAI(batch_polls=10_000) as server:
        store, config = new_run(run_dir, server.base_url, target=20, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02)
        with running(store, config):
            wait_for(lambda: server.batch_creations == 1 and server.batch_retrieves > 0)
        assert server.batch_creations == 1
        [pending] = server.batches.values()
        pending["_invalid"] = refusal  # the endpoint's validation refuses it at the next poll
        with running(RunStore(run_dir), config) as engine:
            wait_for(lambda: engine.finished is not None or server.batch_creations > 1)
            finished = engine.finished
        created = server.batch_creations
    assert created == 1  # none sent after the refusal
    assert finished is not None and finished.reason.value == "failing"
    assert "model_not_found: The provided model 'm' is not supported" in finished.message
    assert "--model" in finished.message
    errors = [m for (m,) in db(run_dir).execute("SELECT message FROM errors")]
    assert any("model_not_found" in m for m in errors), errors
    assert_accounted(run_dir)
