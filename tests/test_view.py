"""RunView without Textual: a snapshot, then events, give what the panes show."""

from __future__ import annotations

import time

import hypothesis
import pytest

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.control import read_snapshot
from selfinstruct_tui.engine.seeds import Instance
from selfinstruct_tui.engine.store import RejectionRecord, RoundStats, RunStore
from selfinstruct_tui.engine.task import Task
from selfinstruct_tui.tui.view import ROUND_COLUMNS, RunView, _one_line, active_seconds
from tui_helpers import deterministic_run


def loaded(tmp_path) -> RunView:
    deterministic_run(tmp_path / "run", machine=40)
    store = RunStore(tmp_path / "run", readonly=True)
    try:
        view = RunView("run", resume_command="selfinstruct run --run-dir X")
        view.load(read_snapshot(store))
    finally:
        store.close()
    return view


def test_a_snapshot_gives_the_pool_rounds_rejections_and_status(tmp_path):
    view = loaded(tmp_path)
    assert len(view.rows) == 139 + 40 and view.seed_count == 139
    assert view.status.accepted == 40 and view.status.target == 40
    assert view.pool_sizes == [139 + 10, 139 + 20, 139 + 30, 139 + 40]
    assert list(view.rounds) == [1, 2, 3, 4] and view.rounds[1][3] == "10"
    assert view.rejection_counts == {"near_duplicate": 4, "too_short": 4, "blacklisted_word": 4}
    assert len(view.rejection_lines) == 12 and view.state == "finished"
    assert view.status.tokens == 0  # the deterministic run records no prompts
    added, removed = view.take_pool_changes()
    assert len(added) == 179 and removed == [] and view.take_pool_changes() == ([], [])


def test_events_update_each_part_and_mark_it_dirty(tmp_path):
    view = loaded(tmp_path)
    view.dirty.clear()
    view.take_pool_changes()
    task = Task(500, "machine", "Invent a name for a quiet mountain cafe.", False,
                [Instance("", "The Still Kettle")], round=5, max_score=0.31)
    view.apply_all([
        ev.RunStarted("run", "http://x/v1", "m", "completions", 50, 40, 139, True),
        ev.PromptSent(7, 5, "generate", "prompt text", ((1, "seed", "an example"),)),
        ev.ResponseReceived(7, 5, "generate", "9. Invent a name", "stop", 0.5, 100, 20),
        ev.TaskAccepted(task, 41, 50),
        ev.CandidateRejected.of(RejectionRecord(9, 5, "Sort it", "too_short", "2 words")),
        ev.CandidateRejected.of(RejectionRecord(10, 5, "Input: x\nOutput: y",
                                                "placeholder_output", "placeholder",
                                                level="instance", task_id=500)),
        ev.RequestRetried(5, 7, "rate_limit", 1, 0.5, "429"),
        ev.RoundFinished.of(RoundStats(round=5, started=0.0, prompts=1, candidates=2,
                                       accepted=1, rejected={"too_short": 1}, status="done",
                                       pool_after=41), 50),
        ev.Paused("spend guard", by_errors=True),
    ])
    assert {"pool", "stats", "status", "prompts", "rejections"} <= view.dirty
    assert view.rows[500].instruction == task.instruction and view.status.accepted == 41
    added, _ = view.take_pool_changes()
    assert [r.id for r in added] == [500]
    assert view.latest is not None and view.latest[2] == "9. Invent a name"
    assert view.in_flight == {} and view.status.tokens == 120
    assert view.rejection_counts["too_short"] == 5
    lines = [line.text().plain for line in view.take_rejection_lines()]
    assert lines[-1].startswith("instance: placeholder output")
    assert view.status.retry_causes == {"rate_limit": 1}
    assert view.rounds[5][3] == "1" and view.pool_sizes[-1] == 139 + 41
    assert view.state == "paused" and view.status.reason == "errors"
    assert any(title == "Run paused" for _, title, _ in view.take_notices())
    view.apply(ev.SeedsReplaced((Task(900, "seed", "A new seed task for later rounds.", False,
                                      [Instance("", "x")]),)))
    assert view.seed_count == 1 and sum(r.origin == "seed" for r in view.rows.values()) == 1
    view.apply(ev.TaskDropped(500, 40))
    assert 500 not in view.rows and view.status.accepted == 40
    view.apply(ev.Finished(ev.FinishReason.LIMIT, 40, 50, "the run has cost $1"))
    assert view.state == "stopped"
    [(message, _, _)] = view.take_notices()
    assert "Resume with a higher limit:\nselfinstruct run --run-dir X" in message


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(hypothesis.strategies.text())
def test_the_one_line_shortcut_never_skips_text_that_needs_normalising(text):
    """The pool loads 100k instructions without rebuilding the ones already on one line; the
    shortcut must never take an instruction that " ".join(text.split()) would change."""
    assert not _one_line(text) or " ".join(text.split()) == text


def test_an_endpoint_error_names_the_pools_endpoint_once(tmp_path):
    view = loaded(tmp_path)
    url = "http://10.0.0.2:8000/v1"
    view.apply(ev.RequestError(3, "server_error", "HTTP 500: boom (after 7 attempts)", url))
    view.status.endpoints = 2
    view.apply(ev.RequestError(3, "server_error", "HTTP 500: boom (after 7 attempts)", url))
    view.apply(ev.RequestError(None, "endpoint_taken_out", f"{url} taken out of the pool", url))
    messages = [message for message, _, _ in view.take_notices()]
    assert messages == [  # one endpoint: its URL is no news; a message naming it: once
        "endpoint error (server_error): HTTP 500: boom (after 7 attempts)",
        f"endpoint error (server_error) at {url}: HTTP 500: boom (after 7 attempts)",
        f"endpoint error (endpoint_taken_out): {url} taken out of the pool"]


def test_candidates_kept_open_are_not_shown_as_rejected(tmp_path):
    """Abandoned, unanswered and interrupted candidates are taken up again (many are accepted
    later): the rounds table and the rejections pane counted them as rejected. The table gives
    them an `open` column; the pane lists them apart."""
    view = loaded(tmp_path)
    stats = RoundStats(round=5, started=0.0, prompts=4, candidates=30, accepted=8,
                       rejected={"abandoned": 12, "near_duplicate": 5, "too_short": 2,
                                 "unanswered": 1}, surplus=2, status="done", pool_after=48)
    view.apply_all([ev.CandidateRejected.of(RejectionRecord(n, 5, f"Task {n}", reason, ""))
                    for n, reason in enumerate(["abandoned"] * 3 + ["unanswered"], 100)]
                   + [ev.RoundFinished.of(stats, 50)])
    row = dict(zip(ROUND_COLUMNS, view.rounds[5], strict=True))
    assert (row["cand."], row["acc."], row["rejected"], row["open"], row["surplus"]) == (
        "30", "8", "7 (near duplicate+)", "13", "2")
    assert int(row["acc."]) + 7 + int(row["open"]) + int(row["surplus"]) == 30
    assert view.round_points[-1].rejected == {"near_duplicate": 5, "too_short": 2}
    assert view.counts_labels() == ["blacklisted word: 4", "near duplicate: 4", "too short: 4",
                                    "│ kept open: abandoned 3", "unanswered 1"]
    assert view.counts_text() == ("blacklisted word: 4  near duplicate: 4  too short: 4  "
                                  "│ kept open: abandoned 3  unanswered 1")


def test_a_narrow_status_line_keeps_the_eta_and_lets_the_retry_causes_go_first():
    from selfinstruct_tui.tui.view import StatusView

    status = StatusView(run_name="run-20261201", endpoint="http://10.0.0.7:8000/v1", model="m",
                        state="running", accepted=187, target=300, tokens=139_278, errors=17)
    status.retry_causes.update({"connection": 150, "timeout": 42})
    full = status.line().plain
    assert "(connection 150, timeout 42)" in full and "ETA" in full
    for width in range(len(full) - 1, 60, -1):
        shown = status.line(width).plain
        if "(connection" not in shown:
            break
        assert "ETA" in shown, shown  # the ETA never goes before the retry causes
    narrow = status.line(100).plain
    assert "(connection" not in narrow
    assert all(part in narrow for part in ("running", "errors 17", "retries 192",
                                           "pool 187/300", "ETA"))


def view_accepting(clock: list[float], tasks: int, every: float, target: int) -> RunView:
    """A view of a run started now that accepts `tasks` tasks, one every `every` seconds of
    the fake `clock` (epoch s, moved on here)."""
    view = RunView("run")
    view.apply(ev.RunStarted("run", "http://x/v1", "m", "completions", target, 0, 139, False))
    for n in range(tasks):
        clock[0] += every
        view.apply(ev.TaskAccepted(Task(500 + n, "machine", f"Name a river {n}.", False,
                                        [Instance("", "x")]), n + 1, target))
    return view


@pytest.mark.parametrize("end", [ev.Finished(ev.FinishReason.TARGET, 6, 10),
                                 ev.Finished(ev.FinishReason.STOPPED, 6, 10),
                                 ev.Crashed(4321)])
def test_a_run_nothing_drives_shows_no_rate(monkeypatch, end):
    """A run that ended kept its last rate, which each UI counted from what it saw: after a
    kill -9 two attached UIs showed 1078.5 and 36.0 tasks/min. Nothing drives it: "-"."""
    from selfinstruct_tui.engine import rates as rates_module

    clock = [1000.0]
    monkeypatch.setattr(rates_module.time, "time", lambda: clock[0])
    view = view_accepting(clock, tasks=6, every=5, target=10)
    view.status.embedded = True  # (the prompt speed too)
    view.apply(ev.ResponseReceived(1, 1, "generate", "x", "stop", 0.5, 300, 40))
    assert "12.0 tasks/min" in view.status.line().plain  # 6 in 30 s
    view.apply(end)
    line = view.status.line().plain
    assert "- tasks/min" in line and "output - tok/s" in line and "prompt - tok/s" in line
    assert "ETA -" in line
    assert "12.0" not in view.status.line(100).plain  # shortened: "-/min"


def test_rates_hold_while_paused_and_leave_the_pause_out_after(monkeypatch):
    """Paused, tasks/min fell on minute by minute (the ETA grew); right after the resume it
    read 30 tasks/min for a run making 650, the paused minutes inside its window."""
    from selfinstruct_tui.engine import rates as rates_module

    clock = [1000.0]
    monkeypatch.setattr(rates_module.time, "time", lambda: clock[0])
    rates = rates_module.Rates(started=clock[0])
    for _ in range(30):  # 60 tasks/min for 30 s
        clock[0] += 1
        rates.accepted()
    assert rates.tasks_per_minute() == 60.0
    rates.pause()
    clock[0] += 600
    assert rates.tasks_per_minute() == 60.0  # held
    rates.resume()
    clock[0] += 10
    assert rates.tasks_per_minute() == 30 / 40 * 60  # 30 in the 40 s of running since start
    rates.accepted()
    assert rates.tasks_per_minute() == 31 / 40 * 60
    # the view holds its rates at a pause and resumes them
    view = view_accepting(clock, tasks=5, every=6, target=100)
    view.apply(ev.Paused("paused by the user", False))
    assert "10.0 tasks/min" in view.status.line().plain and "ETA 9:30" in view.status.line().plain
    clock[0] += 900
    assert "10.0 tasks/min" in view.status.line().plain and "ETA 9:30" in view.status.line().plain
    view.apply(ev.Resumed())
    assert view.status.rates.tasks_per_minute() == 10.0  # 5 in its 30 s of running


def test_an_attached_ui_counts_the_rate_from_the_session_start(tmp_path):
    """A UI attached to a running session counted tasks/min from the moment it attached: two
    UIs on one engine showed 30.9 and 0.0, a fresh one 111.5 against the engine's 36."""
    import os
    import time as time_module

    deterministic_run(tmp_path / "run", machine=4)
    store = RunStore(tmp_path / "run")
    now = time_module.time()
    for n in range(6):  # 6 tasks in the 30 s since the session started
        store.insert_task(Task(900 + n, "machine", f"Name a mountain range {n}.", False,
                               [Instance("", "x")], round=9, created=now - 28 + 5 * n))
    store.set_meta("session", {"started": now - 30, "pid": os.getpid()})
    store.set_meta("state", {"state": "running", "pid": os.getpid()})
    view = RunView("run")
    view.load(read_snapshot(store))
    store.close()
    assert 11.5 < view.status.rates.tasks_per_minute() <= 12.0


def test_a_stopped_run_has_no_eta_an_unpriced_one_no_cost_and_interrupted_rounds_say_so(
        tmp_path):
    from selfinstruct_tui.tui.view import StatusView, round_row

    status = StatusView(state="stopped", accepted=10, target=50, priced=False)
    status.rates.restart(time.time() - 30)
    status.rates.accepted(5)
    line = status.line().plain
    assert "ETA -" in line and "$" not in line
    status.state, status.priced = "running", True
    assert "ETA -" not in status.line().plain and "$0.0000" in status.line().plain
    row = round_row(RoundStats(round=8, started=0.0, prompts=2, candidates=19,
                               rejected={"interrupted": 19}, status="interrupted"))
    assert row[-1] == "interrupted" and row[5] == "19"
    # without prices a round's cost is unknown, not $0.0000 (the status line's rule)
    assert round_row(RoundStats(round=8, started=0.0), priced=False)[-2] == "-"
    assert round_row(RoundStats(round=8, started=0.0, cost=0.5))[-2] == "$0.5000"


def test_why_a_run_is_not_going_is_read_from_the_store(tmp_path):
    """The note under the status line, from what the engine recorded (an attached UI opened
    later shows it too): a pause by errors and its reason, an end by errors and how to resume,
    a crash (a live state whose process is gone) with its pid; nothing for a finished run.
    A follower that finds the process gone later says so once, and never for a run already
    crashed when it was read."""
    import os
    import subprocess
    import sys

    from selfinstruct_tui.engine.control import StoreFollower

    deterministic_run(tmp_path / "run", machine=40)
    store = RunStore(tmp_path / "run")

    def view_of(meta: dict) -> RunView:
        store.set_meta("state", meta)
        view = RunView("run", resume_command="selfinstruct run --run-dir X")
        view.load(read_snapshot(store))
        return view

    assert view_of({"state": "finished", "pid": 0}).note() == ""
    assert view_of({"state": "paused", "pid": os.getpid(), "reason": "paused by the user",
                    "by_errors": False}).note() == ""
    paused = view_of({"state": "paused", "pid": os.getpid(), "by_errors": True,
                      "reason": "every endpoint is out: HTTP 503 for 60 s."})
    assert paused.note() == "Paused: every endpoint is out: HTTP 503 for 60 s. Press p to resume."
    assert paused.status.reason == "errors"
    failing = view_of({"state": "stopped", "pid": 0, "finish_reason": "failing",
                       "message": "every endpoint is out: HTTP 503 for 60 s"})
    assert failing.note() == ("Stopped at 40/40: every endpoint is out: HTTP 503 for 60 s. "
                              "Resume with (once the cause is fixed):\nselfinstruct run "
                              "--run-dir X")
    assert view_of({"state": "stopped", "pid": 0, "finish_reason": "stopped"}).note() == ""

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: its pid is dead
    crashed = view_of({"state": "running", "pid": gone.pid})
    assert crashed.state == "crashed"
    assert f"The engine process (pid {gone.pid}) is gone" in crashed.note()
    assert crashed.note().endswith("Resume it with:\nselfinstruct run --run-dir X")
    reader = RunStore(tmp_path / "run", readonly=True)
    seen: list[ev.Event] = []
    StoreFollower(read_snapshot(reader), seen.append).poll(reader)
    assert not [e for e in seen if isinstance(e, ev.Crashed)]  # it was crashed when read

    store.set_meta("state", {"state": "running", "pid": os.getpid()})
    follower = StoreFollower(read_snapshot(reader), seen.append)
    follower.poll(reader)
    store.set_meta("state", {"state": "running", "pid": gone.pid})  # as if this one died
    follower.poll(reader)
    follower.poll(reader)
    assert [e.pid for e in seen if isinstance(e, ev.Crashed)] == [gone.pid]
    reader.close()
    store.close()


def test_the_elapsed_time_of_earlier_sessions_counts_overlapping_rounds_once(tmp_path):
    """A resumed or attached view added up the rounds' wall times, which overlap (a round
    starts while the two before it finish): a 3:51 session showed 7:20 right after a resume."""
    rounds = [RoundStats(1, started=100.0, finished=110.0, wall_time=10.0),
              RoundStats(2, started=105.0, finished=115.0, wall_time=10.0),
              RoundStats(3, started=108.0, finished=112.0, wall_time=4.0),
              RoundStats(4, started=200.0, finished=None, wall_time=0.0)]
    assert active_seconds(rounds, None) == 15.0  # 100-115; the unfinished round ran 0 s
    assert active_seconds(rounds, 230.0) == 45.0  # live: round 4 runs until now
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    store = RunStore(run_dir)
    try:
        t0 = 1_700_000_000.0  # (when the run's tasks were made)
        for r in rounds:  # the run's rounds 1-4, as these
            store.start_round(RoundStats(r.round, t0 + r.started))
            if r.finished is not None:
                store.finish_round(RoundStats(r.round, t0 + r.started, t0 + r.finished,
                                              status="done", wall_time=r.wall_time))
        snap = read_snapshot(store)
    finally:
        store.close()
    view = RunView()
    view.load(snap)
    # round 4, left running by a process that ended, ran until its last activity: its start
    assert snap.crash_end == t0 + 200.0
    assert view.status.elapsed_before == active_seconds(snap.rounds, snap.crash_end) == 15.0


def test_paused_time_is_not_run_time(monkeypatch, tmp_path):
    """The elapsed time went on while the run was paused, live and on loading a run that had
    paused (its rounds stay open during a pause: their spans counted it)."""
    import os
    import time as time_module

    from selfinstruct_tui.tui import view as view_module

    clock = [1000.0]
    monkeypatch.setattr(view_module.time, "time", lambda: clock[0])
    view = RunView("run")
    view.apply(ev.RunStarted("run", "http://x/v1", "m", "completions", 10, 0, 139, False))
    clock[0] += 60
    view.apply(ev.Paused("paused by the user", False))
    clock[0] += 600
    assert " 1:00 " in view.status.line().plain  # not 11:00
    view.apply(ev.Resumed())
    clock[0] += 30
    assert " 1:30 " in view.status.line().plain
    view.apply(ev.Paused("paused by the user", False))
    view.apply(ev.Stopping())  # a stop while paused: the stopping time counts again
    clock[0] += 5
    view.apply(ev.Finished(ev.FinishReason.STOPPED, 0, 10))
    clock[0] += 500
    assert " 1:35 " in view.status.line().plain
    # from the store: a round open across a closed pause and a pause still open
    rounds = [RoundStats(1, started=100.0, finished=200.0, wall_time=100.0),
              RoundStats(2, started=150.0, finished=None, wall_time=0.0)]
    assert active_seconds(rounds, 400.0, [(120.0, 170.0), (300.0, None)]) == 150.0
    assert active_seconds(rounds, None, [(120.0, 170.0)]) == 50.0  # round 2 ran 0 s
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    store = RunStore(run_dir)
    try:
        now = time_module.time()
        store.start_round(RoundStats(9, started=now - 100))
        store.start_pause(now - 80)
        store.end_pause(now - 50)
        store.start_pause(now - 20)  # paused now
        store.set_meta("state", {"state": "paused", "pid": os.getpid()})
        snap = read_snapshot(store)
    finally:
        store.close()
    assert snap.pauses[0] == (now - 80, now - 50) and snap.pauses[1] == (now - 20, None)
    loaded = RunView("run")
    loaded.load(snap)
    clock[0] += 300  # paused: the clock does not move
    before = active_seconds([r for r in snap.rounds if r.round != 9], None)
    assert abs(loaded.status.elapsed() - before - 50) < 1e-6  # round 9's 100 s less 50 paused


@pytest.mark.parametrize("width", [80, 100, 120])
@pytest.mark.parametrize("name, model, state", [
    ("run-20260512-141503", "gpt-4o-mini", "running"),
    ("my-medical-qa-dataset-v3", "meta-llama/Llama-3.1-70B-Instruct", "paused"),
])
def test_the_status_line_keeps_the_run_model_and_state_at_common_widths(width, name, model,
                                                                         state):
    """Below 160 columns the run's name and the model were the first to go: 80, 100 and 120
    columns showed neither. They stay now (the name shortened around an ellipsis); the
    endpoint, the counts' words and the less important figures give way first."""
    from selfinstruct_tui.tui.view import StatusView

    status = StatusView(run_name=name, endpoint="https://api.openai.com/v1", model=model,
                        state=state, reason="errors" if state == "paused" else "",
                        accepted=1873, target=52000, tokens=13_927_812, cost=1.2345, errors=3)
    status.retry_causes.update({"rate_limit": 12})
    line = status.line(width).plain
    assert len(line) <= width, line
    parts = line.split(" │ ")
    assert parts[0].strip() == name or (parts[0].strip().startswith(name[:5]) and "…" in parts[0])
    # the model whole, or without its organisation/ prefix
    assert parts[1] in (model, model.rsplit("/", 1)[-1]) and parts[2].startswith(state)
    assert "1873/52000" in line and ("errors 3" in line or "err 3" in line)


def test_a_round_open_across_a_pause_leaves_the_pause_out_of_its_time(tmp_path):
    """The elapsed time left pauses out, but a round's "time" (rounds table, headless lines)
    still counted a pause that fell inside the round. Both now follow one rule
    (rates.active_seconds_of): a real engine paused mid-round and resumed."""
    import threading
    import time as time_module

    from fake_openai import FakeOpenAI
    from tui_helpers import make_engine, read_run

    from selfinstruct_tui.engine.control import Pause, Resume
    from selfinstruct_tui.engine.rates import active_seconds_of
    from selfinstruct_tui.tui.view import round_row

    def wait(predicate) -> None:
        deadline = time_module.monotonic() + 60
        while not predicate():
            assert time_module.monotonic() < deadline, "condition not reached in time"
            time_module.sleep(0.05)

    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.3) as server:
        engine = make_engine(run_dir, server.base_url, target=12, concurrency=2)
        thread = threading.Thread(target=engine.run)
        thread.start()
        try:
            wait(lambda: len(server.log) >= 1)  # a round is open, a request in flight
            engine.send(Pause())
            wait(lambda: engine.state == "paused")
            time_module.sleep(2.0)  # the pause the rounds open now must leave out
            engine.send(Resume())
        finally:
            thread.join(timeout=120)
        engine.store.close()
    rounds, pauses = read_run(run_dir, lambda s: (s.rounds(), s.pauses()))
    assert len(pauses) == 1 and pauses[0][1] is not None and pauses[0][1] - pauses[0][0] >= 2
    spanned = [r for r in rounds if r.finished is not None and r.started < pauses[0][0]
               and r.finished > pauses[0][1]]
    assert spanned, rounds  # the round open when the run paused
    for r in rounds:
        assert r.finished is not None and r.status == "done"
        assert r.wall_time == pytest.approx(
            active_seconds_of([(r.started, r.finished)], pauses), abs=1e-6)
    for r in spanned:
        paused = pauses[0][1] - pauses[0][0]
        assert r.wall_time == pytest.approx(r.finished - r.started - paused, abs=1e-6)
        assert round_row(r)[-1] == f"{r.wall_time:.1f}s"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "meta-llama/Llama-3.1-70B-Instruct",
                                   "org/an-unusually-long-fine-tuned-model-name-v2"])
@pytest.mark.parametrize("name", ["run-20260512-141503", "my-medical-qa-dataset-v3",
                                  "customer-support-instructions-from-the-2026-tickets"])
def test_a_name_is_cut_only_as_far_as_the_status_line_needs(name, model):
    """At 110 and 120 columns the run's name was cut to 16 characters ("run-2026…-141503")
    with 5 columns free at the end of the line, where the whole name fit: a cut name took the
    step's fixed length, not the room left. Now a name cut around an ellipsis (the run's, the
    model's) is cut only as far as the line needs: the line is then full to the last column."""
    from selfinstruct_tui.tui.view import StatusView

    status = StatusView(run_name=name, endpoint="https://api.openai.com/v1", model=model,
                        state="running", accepted=1873, target=52000, tokens=13_927_812,
                        cost=1.2345, errors=3)
    for width in range(80, 161):
        line = status.line(width).plain
        shown_name, shown_model = (part.strip() for part in line.split(" │ ")[:2])
        assert len(line) <= width, (width, line)
        if shown_name != name or "…" in shown_model:  # cut: there was no room for more
            assert len(line) == width, (width, line)
        assert shown_name == name or (shown_name[:4] == name[:4] and "…" in shown_name)
    if name == "run-20260512-141503" and model == "gpt-4o-mini":  # the case reported
        assert all(status.line(width).plain.startswith(f" {name} │ ") for width in (110, 120))
