"""Batch mode (`--batch`, `--batch-command`) against the fake server's Batch API and a stand-in
for `vllm run-batch`: the same records as the normal path, resume by polling, never paid twice."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import cli_command
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


def run_engine(run_dir: Path, base_url: str, **cfg) -> Engine:
    store, config = new_run(run_dir, base_url, **{"batch": True, "batch_poll_seconds": 0.02,
                                                  **cfg})
    engine = Engine(store, config)
    engine.run()
    store.close()
    return engine


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
    assert_accounted(run_dir)
    out = tmp_path / "tasks.jsonl"
    export_run(run_dir, "self-instruct", out)
    assert len(out.read_text().splitlines()) >= 20


def test_error_file_lines_become_named_rejections(tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(batch_polls=1,
                    batch_fail_kinds={"instances": "the prompt was flagged"}) as server:
        store, config = new_run(run_dir, server.base_url, target=5, prompts_per_round=3,
                                batch=True, batch_poll_seconds=0.02, max_fruitless_requests=0)
        engine = Engine(store, config)
        import threading
        thread = threading.Thread(target=engine.run)
        thread.start()
        wait_for(lambda: server.batch_creations >= 3)
        wait_for(lambda: db(run_dir).execute(
            "SELECT COUNT(*) FROM batches WHERE kind = 'instances' AND state = 'settled'"
        ).fetchone()[0] >= 1)
        engine.stop()
        thread.join(timeout=30)
        store.close()
    conn = db(run_dir)
    failed = conn.execute("SELECT detail FROM rejections WHERE reason = 'request_failed'"
                          ).fetchall()
    assert failed and all("instance request failed (bad_request)" in r[0] for r in failed)
    errors = [r[0] for r in conn.execute("SELECT error FROM prompts WHERE kind = 'instances'")]
    assert errors and all("the prompt was flagged" in e for e in errors)
    job = conn.execute("SELECT * FROM batches WHERE kind = 'instances'").fetchone()
    assert job["failed"] == job["total"] > 0 and job["error_path"]
    assert_accounted(run_dir)
