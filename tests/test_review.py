"""The quality review's engine side: Wilson intervals, the seeded sample, the store's records,
the command codec, the offline control and the follower's events, the CLI table and exports."""

from __future__ import annotations

import json

import pytest

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.control import (
    DropTask,
    OfflineControl,
    ReviewAnswer,
    ReviewSkip,
    SetReviewSample,
    StoreFollower,
    decode,
    encode,
    read_snapshot,
)
from selfinstruct_tui.engine.review import draw_sample, next_item, summarize, wilson_interval
from selfinstruct_tui.engine.store import RunStore
from tui_helpers import deterministic_run


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0) and round(high, 3) == 0.278
    low, high = wilson_interval(10, 10)
    assert round(low, 3) == 0.722 and high == pytest.approx(1.0)
    low, high = wilson_interval(50, 100)
    assert (round(low, 3), round(high, 3)) == (0.404, 0.596)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_sample_is_seeded_distinct_and_respects_instances():
    tasks = [(i, 1 + i % 3) for i in range(1, 201)]
    first = draw_sample(tasks, 50, seed=1, sample=1)
    assert first == draw_sample(tasks, 50, seed=1, sample=1)
    assert len({t for t, _ in first}) == 50
    assert all(0 <= idx < 1 + t % 3 for t, idx in first)
    assert draw_sample(tasks, 50, seed=2, sample=1) != first
    second = draw_sample(tasks, 50, seed=1, sample=2, exclude=[t for t, _ in first])
    assert not {t for t, _ in first} & {t for t, _ in second}
    assert len(draw_sample(tasks[:10], 50, seed=1, sample=1)) == 10
    with pytest.raises(ValueError):
        draw_sample(tasks, 0, seed=1, sample=1)


def test_review_commands_round_trip_through_the_codec():
    for command in (SetReviewSample((5, 9), (0, 2)), ReviewAnswer(5, "input", False),
                    ReviewSkip(9)):
        name, args = encode(command)
        assert decode(name, json.loads(json.dumps(args))) == command
    with pytest.raises(ValueError):
        decode("review_answer", {"task_id": 1, "question": "style", "answer": True})
    with pytest.raises(ValueError):
        decode("review_sample", {"task_ids": [1, 2], "instance_indexes": [0]})


def test_offline_review_is_stored_emitted_and_followed(tmp_path):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    reader = RunStore(run_dir, readonly=True)
    snapshot = read_snapshot(reader)
    assert snapshot.reviews == []
    followed: list[ev.Event] = []
    follower = StoreFollower(snapshot, followed.append)
    emitted: list[ev.Event] = []
    control = OfflineControl(run_dir, emitted.append)
    control.send(SetReviewSample((150, 151, 152), (0, 1, 0)))
    control.send(SetReviewSample((151, 153), (0, 0)))  # 151 is in already: kept as it was
    control.send(ReviewAnswer(150, "instruction", True))
    control.send(ReviewAnswer(150, "input", False))
    control.send(ReviewAnswer(150, "output", False))
    control.send(ReviewAnswer(150, "input", True))  # a changed answer replaces the first
    control.send(ReviewSkip(151))
    control.send(ReviewAnswer(999, "input", True))  # not sampled: nothing changes
    follower.poll(reader)
    stored = RunStore(run_dir, readonly=True).reviews()
    assert [(r.task_id, r.instance_index, r.sample) for r in stored] == [
        (150, 0, 1), (151, 1, 1), (152, 0, 1), (153, 0, 2)]
    assert stored[0].answers == (True, True, False) and stored[0].done
    assert stored[1].skipped and stored[1].done and not stored[1].passed
    assert next_item(stored).task_id == 152
    # the offline control's events and the follower's events end in the same state
    emitted_state: dict[int, object] = {}
    for event in emitted:
        assert isinstance(event, ev.ReviewUpdated)
        emitted_state.update({r.task_id: r for r in event.reviews})
    followed_state = {r.task_id: r for e in followed if isinstance(e, ev.ReviewUpdated)
                      for r in e.reviews}
    assert followed_state == emitted_state == {r.task_id: r for r in stored}
    summary = summarize(stored)
    assert (summary.sampled, summary.done, summary.skipped, summary.passed) == (4, 2, 1, 0)
    assert [(q.reviewed, q.yes) for q in summary.questions] == [(1, 1), (1, 1), (1, 0)]
    reader.close()


def reviewed_run(run_dir):
    """The deterministic run with a review of 4 tasks: 140 passed, 141 failed on the output,
    142 skipped, 143 not answered yet."""
    deterministic_run(run_dir)
    control = OfflineControl(run_dir, lambda event: None)
    control.send(SetReviewSample((140, 141, 142, 143), (0, 1, 0, 0)))
    for task_id, answers in ((140, (True, True, True)), (141, (True, True, False))):
        for question, answer in zip(("instruction", "input", "output"), answers, strict=True):
            control.send(ReviewAnswer(task_id, question, answer))
    control.send(ReviewSkip(142))


def test_review_command_prints_the_table(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    reviewed_run(run_dir)
    proc = run_cli("review", str(run_dir), check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"quality review of {run_dir}"
    assert lines[1] == "3 of 4 sampled tasks reviewed (1 skipped); 1 passed all three questions"
    assert lines[2].split() == ["question", "reviewed", "yes", "95%", "CI", "(Wilson)"]
    # 2 of 2 yes: Wilson 34%-100%; 1 of 2 on the output: 9%-91%
    assert lines[3].split() == ["valid", "instruction", "2", "100%", "34%-100%"]
    assert lines[4].split() == ["appropriate", "input", "2", "100%", "34%-100%"]
    assert lines[5].split() == ["acceptable", "output", "2", "50%", "9%-91%"]
    assert proc.stderr == ""


def test_review_command_on_a_run_without_review_and_on_a_non_run(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    proc = run_cli("review", str(run_dir), check=True)
    assert "no quality review yet" in proc.stdout and "press r" in proc.stdout
    (tmp_path / "plain").mkdir()
    proc = run_cli("review", str(tmp_path / "plain"))
    assert proc.returncode == 2
    assert f"{tmp_path / 'plain'}: not a run directory" in proc.stderr


def test_exports_carry_review_labels_and_keep_only_passed_tasks(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    reviewed_run(run_dir)
    everything = tmp_path / "all.jsonl"
    run_cli("export", str(run_dir), "--format", "self-instruct", "-o", str(everything),
            check=True)
    rows = {r["id"]: r for r in map(json.loads, everything.read_text().splitlines())}
    assert len(rows) == 40
    assert rows[140]["review"] == {"instance_index": 0, "instruction": True, "input": True,
                                   "output": True, "skipped": False, "passed": True,
                                   "sample": 1}
    assert rows[141]["review"]["output"] is False and not rows[141]["review"]["passed"]
    assert rows[142]["review"]["skipped"] is True
    assert rows[143]["review"]["instruction"] is None
    assert "review" not in rows[150]
    passed = tmp_path / "passed.jsonl"
    proc = run_cli("export", str(run_dir), "--format", "self-instruct", "--reviewed-only",
                   "-o", str(passed), check=True)
    assert "wrote 1 rows" in proc.stdout
    assert [json.loads(line)["id"] for line in passed.read_text().splitlines()] == [140]
    alpaca = tmp_path / "passed.json"
    run_cli("export", str(run_dir), "--format", "alpaca", "--reviewed-only", "-o", str(alpaca),
            check=True)
    # every instance of a passed task goes out (task 140 has 1 + n % 3 = 1 instance, n = 0)
    assert json.loads(alpaca.read_text()) == [
        {"instruction": rows[140]["instruction"], "input": "input 0", "output": "output 0"}]
    proc = run_cli("export", str(run_dir), "--format", "rejections", "--reviewed-only")
    assert proc.returncode == 2 and "rejections export" in proc.stderr
    bare = tmp_path / "bare"
    deterministic_run(bare)
    proc = run_cli("export", str(bare), "--format", "alpaca", "--reviewed-only",
                   "-o", str(tmp_path / "none.json"))
    assert proc.returncode == 2 and "no quality review yet" in proc.stderr
    assert not (tmp_path / "none.json").exists()


def test_a_run_made_before_reviews_gains_the_table_when_written(tmp_path, run_cli):
    import sqlite3

    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    db = sqlite3.connect(run_dir / "run.sqlite")
    db.execute("DROP TABLE reviews")  # as a run made before the quality review existed
    db.commit()
    db.close()
    reader = RunStore(run_dir, readonly=True)
    assert reader.reviews() == [] and read_snapshot(reader).reviews == []
    assert "no quality review yet" in run_cli("review", str(run_dir), check=True).stdout
    OfflineControl(run_dir, lambda event: None).send(SetReviewSample((140,), (0,)))
    assert [r.task_id for r in reader.reviews()] == [140]  # the reader sees the new table
    reader.close()


def test_reviewed_only_export_that_comes_out_empty_says_why(tmp_path, run_cli):
    """The one task that passed is dropped after its review: the export has no row, and the
    command says that a passed task is no longer a machine task instead of a bare 0."""
    run_dir = tmp_path / "run"
    reviewed_run(run_dir)
    OfflineControl(run_dir, lambda event: None).send(DropTask(140))
    out = tmp_path / "passed.jsonl"
    proc = run_cli("export", str(run_dir), "--format", "self-instruct", "--reviewed-only",
                   "-o", str(out), check=True)
    assert "wrote 0 rows" in proc.stdout
    assert "1 reviewed task(s) passed all three questions, none of them is an active" in \
        proc.stderr
    assert out.read_text() == ""
