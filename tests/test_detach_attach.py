"""Detached runs, attached UIs, the runs list, and owner-only access."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from textual.widgets import TextArea

from conftest import cli_command, on_a_terminal, shown
from fake_openai import FakeOpenAI
from selfinstruct_tui.engine.store import RunStore
from selfinstruct_tui.tui.app import create_app
from selfinstruct_tui.tui.screens.dialogs import ConfirmScreen
from selfinstruct_tui.tui.screens.seed_editor import SeedEditorScreen
from selfinstruct_tui.tui.screens.seed_manager import SeedManagerScreen
from selfinstruct_tui.tui.widgets.task_table import TaskTable
from test_run_e2e import count_machine, wait_for
from tui_helpers import assert_next_rounds_use_only, read_run, run, until


def state_of(run_dir: Path) -> dict:
    store = RunStore(run_dir, readonly=True)
    try:
        return store.get_meta("state") or {}
    finally:
        store.close()


def detach(run_cli, server, run_dir, target, *extra):
    proc = run_cli("run", "--detach", "--base-url", server.base_url, "--model", "m",
                   "--run-dir", str(run_dir), "--target", str(target), *extra, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert shown("attach", str(run_dir)) in proc.stdout
    return int((run_dir / "engine.pid").read_text())


def offered_keys(app) -> dict[str, str]:
    """The footer's label -> key of every binding the app offers now (what the footer and the
    help panel show)."""
    return {b.binding.description: key for key, b in app.screen.active_bindings.items()
            if b.binding.show}


async def palette_titles(app, query: str) -> list[str]:
    """The command palette's titles of the app's keys (RunCommands) that match `query`."""
    from selfinstruct_tui.tui.keys import RunCommands

    provider = RunCommands(app.screen)
    return [str(hit.text) for hit in [h async for h in provider.search(query)]]


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_detached_run_outlives_its_parent_and_finishes(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.02) as server:
        pid = detach(run_cli, server, run_dir, 120)
        try:
            # The parent has exited; the engine goes on in its own session.
            assert os.getsid(pid) == pid
            wait_for(lambda: count_machine(run_dir) >= 120, timeout=120)
            wait_for(lambda: state_of(run_dir).get("state") == "finished", timeout=30)
        finally:
            kill_quietly(pid)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "run.sqlite").stat().st_mode) == 0o600
    assert stat.S_IMODE((run_dir / "engine.pid").stat().st_mode) == 0o600
    assert "done: 120/120" in (run_dir / "run.log").read_text()
    listing = run_cli("runs", check=True).stdout
    assert str(run_dir) in listing and "finished" in listing


def test_attached_ui_pauses_resumes_edits_seeds_and_stops(run_cli, tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        pid = detach(run_cli, server, run_dir, 2000, "--concurrency", "4")
        try:
            wait_for(lambda: count_machine(run_dir) >= 5, timeout=60)

            async def go():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(120, 40)) as pilot:
                    table = app.query_one(TaskTable)
                    before = len(table.rows)
                    await until(pilot, lambda: len(table.rows) > before + 3)  # tasks arrive
                    await pilot.press("p")
                    await until(pilot, lambda: app.state == "paused", timeout=15)
                    await pilot.pause(1.0)
                    settled = count_machine(run_dir)
                    await pilot.pause(1.0)
                    assert count_machine(run_dir) == settled  # the store stops growing
                    await pilot.press("p")
                    await until(pilot, lambda: count_machine(run_dir) > settled, timeout=20)
                    # Seed edit: keep 15 seeds; the engine uses them from its next round.
                    await pilot.press("e")  # the seed manager; r: its raw JSONL editor
                    await until(pilot, lambda: isinstance(app.screen, SeedManagerScreen))
                    await pilot.press("r")
                    await until(pilot, lambda: isinstance(app.screen, SeedEditorScreen))
                    area = app.screen.query_one(TextArea)
                    area.text = "\n".join(area.text.splitlines()[:15])
                    await pilot.press("ctrl+s")
                    await until(pilot, lambda: isinstance(app.screen, SeedManagerScreen))
                    await pilot.press("escape")
                    await assert_next_rounds_use_only(pilot, run_dir, 15)
                    await pilot.press("s", "y")  # stop, and yes when asked
                    await until(pilot, lambda: app.state == "stopped", timeout=30)
                    await pilot.press("q")  # leaving an attached UI: no question asked

            run(go())
            wait_for(lambda: state_of(run_dir).get("state") == "stopped", timeout=30)
            listing = run_cli("runs", check=True).stdout
            assert "stopped" in listing
        finally:
            kill_quietly(pid)


def test_closing_an_attached_ui_leaves_the_run_alone(run_cli, tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        pid = detach(run_cli, server, run_dir, 2000, "--concurrency", "2")
        try:
            wait_for(lambda: count_machine(run_dir) >= 3, timeout=60)

            async def go():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(80, 24)) as pilot:
                    await pilot.pause(0.5)
                    offered = offered_keys(app)
                    # no "Detach" (the run already runs in the background); q leaves
                    assert "Detach" not in offered and "Quit" not in offered
                    assert offered["Leave"] == "q" and offered["Pause"] == "p" and "Resume" not in offered
                    assert await palette_titles(app, "detach") == []
                    assert any(t.startswith("Leave: close this UI; the run goes on")
                               for t in await palette_titles(app, "leave"))
                    await pilot.press("d")  # not bound here: nothing asked
                    await pilot.pause(0.2)
                    assert not isinstance(app.screen, ConfirmScreen)
                    await pilot.press("q")

            run(go())
            grown = count_machine(run_dir)
            wait_for(lambda: count_machine(run_dir) > grown + 3, timeout=30)
            listing = run_cli("runs", check=True).stdout
            assert f"running (pid {pid})" in listing
            # what `attach` prints on leaving: the run goes on, its pid, how to come back or
            # stop it (it printed nothing)
            from selfinstruct_tui.engine.runs import left_attached_lines

            said = left_attached_lines(run_dir)
            assert said[0] == f"the run goes on in the background (pid {pid})"
            assert f"attach again: selfinstruct attach {run_dir}" in said
            # the command that resumes it ("the same command resumes it" named none)
            assert (f"stop it: attach and press s, or kill {pid} (a clean stop), then resume "
                    f"it with: selfinstruct run --run-dir {run_dir}") in said
        finally:
            kill_quietly(pid)


def detach_once_paused(run_dir, pause_when=None, on_paused=None):
    """A `react` for `on_a_terminal` running the TUI: p once `pause_when(seen)` holds (None: the
    run pauses by itself), then, once the store says paused, `on_paused(state)` (the state
    meta) and d, and y when the Detach question shows."""
    import time

    step = ["start" if pause_when is not None else "pausing"]

    def react(seen, write):
        if step[0] == "start" and pause_when(seen):
            write(b"p")
            step[0] = "pausing"
        elif step[0] == "pausing" and state_of(run_dir).get("state") == "paused":
            if on_paused is not None:
                on_paused(state_of(run_dir))
            time.sleep(0.5)
            write(b"d")
            step[0] = "asked"
        elif step[0] == "asked" and b"Detach (y)" in seen:
            time.sleep(0.3)
            write(b"y")
            step[0] = "detached"

    return react


def test_leaving_attach_on_a_terminal_says_the_run_goes_on_and_how_to_come_back(
        isolated_env, tmp_path):
    """`selfinstruct attach` on a terminal (here a pty), left with q: it printed nothing; now
    it says the run goes on, its pid, and how to attach again or stop it."""
    import time

    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        proc = subprocess.run(cli_command("run", "--detach", "--base-url", server.base_url,
                                          "--model", "m", "--run-dir", str(run_dir),
                                          "--target", "2000", "--concurrency", "2"),
                              capture_output=True, text=True, env=isolated_env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        pid = int((run_dir / "engine.pid").read_text())
        try:
            sent = []

            def react(seen, write):
                if not sent and b"Task pool" in seen:
                    time.sleep(0.5)
                    write(b"q")
                    sent.append(True)

            code, text = on_a_terminal(isolated_env, react, "attach", str(run_dir), timeout=90)
            assert code == 0, text[-2000:]
            assert f"the run goes on in the background (pid {pid})" in text, text[-2000:]
            assert f"attach again: {shown('attach', str(run_dir))}" in text
            assert state_of(run_dir).get("state") == "running"  # leaving never stops it
        finally:
            kill_quietly(pid)


def test_runs_reports_a_killed_engine_as_crashed_and_it_resumes(run_cli, tmp_path):
    """...and a UI attached to the crashed run follows the process that resumes it (it used
    to stay "crashed", its clock stopped, while the pool grew)."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        pid = detach(run_cli, server, run_dir, 80, "--concurrency", "2")
        wait_for(lambda: count_machine(run_dir) >= 3, timeout=60)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "crashed" in run_cli("runs").stdout, timeout=20)

        async def go():
            app = create_app(run_dir, attach=True, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: app.state == "crashed")
                table = app.query_one(TaskTable)
                before = len(table.rows)
                again = run_cli("run", "--detach", "--run-dir", str(run_dir), "--target",
                                "2000", timeout=60)  # a higher target: still running below
                assert again.returncode == 0, again.stderr
                await until(pilot, lambda: len(table.rows) > before + 3, timeout=30)
                await until(pilot, lambda: app.state == "running", timeout=10)
                await pilot.press("s", "y")  # the attached UI controls the new process
                await until(pilot, lambda: app.state == "stopped", timeout=30)
                await pilot.press("q")

        run(go())
        wait_for(lambda: state_of(run_dir).get("state") == "stopped", timeout=30)
    assert "stopped" in run_cli("runs", check=True).stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another user")
def test_another_user_cannot_attach(run_cli, tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                "--run-dir", str(run_dir), "--target", "3", check=True)

    def become_nobody() -> None:
        os.setgid(65534)
        os.setuid(65534)

    try:
        subprocess.run(cli_command("--version"), capture_output=True, preexec_fn=become_nobody,
                       timeout=60, cwd="/", check=True)
    except (PermissionError, subprocess.CalledProcessError):
        pytest.skip("this interpreter or its packages are not readable by another user here")
    proc = subprocess.run(cli_command("attach", str(run_dir)), capture_output=True, text=True,
                          env={**isolated_env, "HOME": "/tmp"}, preexec_fn=become_nobody,
                          timeout=60, cwd="/")
    assert proc.returncode == 2
    assert "only the run's owner" in proc.stderr or "permission denied" in proc.stderr
    assert count_machine(run_dir) == 3  # the run itself is untouched


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a run to another user")
def test_a_run_owned_by_another_user_is_refused(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                "--run-dir", str(run_dir), "--target", "3", check=True)
    os.chown(run_dir, 65534, 65534)
    proc = run_cli("attach", str(run_dir))
    assert proc.returncode == 2
    assert "belongs to another user (uid 65534)" in proc.stderr
    assert "only the run's owner" in proc.stderr


def test_the_tui_without_a_terminal_says_so_instead_of_hanging(run_cli, tmp_path):
    """`attach DIR </dev/null` waited forever; the TUI needs a terminal, so both commands that
    open it say what to use instead and exit 2, leaving the run alone."""
    run_dir = tmp_path / "run"
    with FakeOpenAI() as server:
        run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                "--run-dir", str(run_dir), "--target", "3", check=True)
        attach = run_cli("attach", str(run_dir), timeout=30)
        pick = run_cli("attach", timeout=30)  # no RUN_DIR: the runs to pick from, with state
        tui = run_cli("run", "--base-url", server.base_url, "--model", "m", "--run-dir",
                      str(run_dir), "--target", "6", timeout=60)
        new = run_cli("run", "--base-url", server.base_url, "--model", "m", "--run-dir",
                      str(tmp_path / "never"), timeout=60)
    assert attach.returncode == 2 and "needs a terminal (" in attach.stderr
    assert "stdout is not one" in attach.stderr or "and stdout are not" in attach.stderr
    assert shown("runs") in attach.stderr
    assert pick.returncode == 2 and f"name the run: {shown('attach')} RUN_DIR" in pick.stderr
    assert f"  1. {run_dir}  (finished, pool 3/3)" in pick.stdout, pick.stdout
    assert tui.returncode == 2 and "needs a terminal" in tui.stderr
    assert "--headless" in tui.stderr
    assert count_machine(run_dir) == 3
    assert new.returncode == 2 and not (tmp_path / "never").exists()  # refused before anything


def test_an_attached_uis_command_wakes_the_engine_at_once(tmp_path, monkeypatch):
    """An attached UI rings the engine after writing a command (a datagram on the run's wake
    socket), so the engine does not poll the commands table 4 times a second. With the
    engine's fallback poll set to a minute, only the ring can bring the pause in time."""
    import sys

    from tui_helpers import make_engine

    from selfinstruct_tui.engine import engine as engine_module
    from selfinstruct_tui.engine.control import Pause, RemoteControl, RunState, wake_address

    if wake_address(tmp_path) is None:
        pytest.skip(f"no abstract Unix sockets on {sys.platform}: the engine polls instead")
    monkeypatch.setattr(engine_module, "HEARTBEAT_SECONDS", 60.0)
    monkeypatch.setattr(engine_module, "CONTROL_POLL_SECONDS", 60.0)
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.2) as server:
        engine = make_engine(run_dir, server.base_url, target=200, concurrency=2)
        thread = engine.start_thread()
        try:
            wait_for(lambda: len(server.log) >= 2, timeout=30)
            RemoteControl(run_dir).send(Pause())
            wait_for(lambda: engine.state == RunState.PAUSED, timeout=20)
        finally:
            engine.stop()
            thread.join(60)
            engine.store.close()
    done = RunStore(run_dir, readonly=True)
    try:
        assert done.pending_commands() == []  # read and marked done
    finally:
        done.close()


def test_an_attached_ui_sees_tasks_accepted_below_the_largest_id(tmp_path):
    """A candidate taken up again (after a stop, a detach, an outage) is accepted under its own
    id, below tasks accepted since. An attached UI followed tasks by id and never showed it: 31
    of 300 tasks were missing from a UI attached for a whole run. Read at the snapshot and at
    a later poll alike."""
    from tui_helpers import deterministic_run

    from selfinstruct_tui.engine import events as ev
    from selfinstruct_tui.engine.control import StoreFollower, read_snapshot
    from selfinstruct_tui.engine.store import CandidateRecord
    from selfinstruct_tui.engine.task import Instance, Task

    run_dir = tmp_path / "run"
    deterministic_run(run_dir, machine=4)
    store = RunStore(run_dir)
    top = store.max_ids()["tasks"]
    low, mid, high = top + 1, top + 2, top + 3

    def task(tid: int) -> Task:
        return Task(id=tid, origin="machine", instruction=f"Name a river number {tid}.",
                    is_classification=False, instances=[Instance("", "The Nile.")], round=5)

    for tid in (low, mid, high):
        store.add_candidate(CandidateRecord(tid, 5, None, f"Name a river number {tid}.", None))
    store.insert_task(task(high))  # accepted first; `low` and `mid` wait for answers
    reader = RunStore(run_dir, readonly=True)
    seen: list[ev.Event] = []
    follower = StoreFollower(read_snapshot(reader), seen.append)
    store.insert_task(task(low))  # between the snapshot and the first poll
    follower.poll(reader)
    store.insert_task(task(mid))  # between two polls
    follower.poll(reader)
    follower.poll(reader)
    accepted = [e.task.id for e in seen if isinstance(e, ev.TaskAccepted)]
    assert accepted == [low, mid]
    assert store.count_tasks("machine") == 4 + 3
    reader.close()
    store.close()


def test_an_attached_ui_sees_its_engine_killed_and_queues_nothing_for_it(run_cli, tmp_path,
                                                                         isolated_env):
    """kill -9 of a detached engine under an attached UI. The UI showed "running" forever, its
    clock counting; `p` queued a pause for nobody, and the next session started "paused (by
    you)". Now the UI finds the process gone (the rule of `runs`: a live state, a dead pid),
    shows the run crashed with the command that resumes it, stops its clock, and no longer
    offers the keys that need an engine (p, s: its note says why); nothing is queued. They come
    back when a new process runs it. A pause queued for the dead
    process before anyone noticed is not applied by the next session, which says so."""
    from tui_helpers import read_run

    from selfinstruct_tui.engine import control
    from selfinstruct_tui.tui.widgets.panes import StatusLine

    run_dir = tmp_path / "run"

    def pending() -> list:
        return read_run(run_dir, lambda store: store.pending_commands())

    with FakeOpenAI(latency=0.05) as server:
        pid = detach(run_cli, server, run_dir, 2000, "--concurrency", "2")
        try:
            wait_for(lambda: count_machine(run_dir) >= 3, timeout=60)

            async def go():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(120, 40)) as pilot:
                    await kill_watched(pilot, app, pid)
                    await pilot.pause(0.3)
                    resume = f"selfinstruct run --run-dir {run_dir}"
                    note = app.query_one("#run-note")
                    assert note.display
                    shown = str(note.render())
                    assert f"pid {pid}" in shown and "killed or crashed" in shown
                    assert resume in shown
                    crashed = [n.message for n in app._notifications if n.title == "Run crashed"]
                    assert len(crashed) == 1 and resume in crashed[0]
                    status = app.query_one(StatusLine)
                    frozen = str(status.render())
                    assert "crashed" in frozen and "ETA -" in frozen
                    await pilot.pause(1.2)  # a counting clock would have moved by a second
                    assert str(status.render()) == frozen
                    offered = offered_keys(app)
                    assert not {"Pause", "Resume", "Stop"} & set(offered)
                    await pilot.press("p")
                    await pilot.press("s")
                    await pilot.pause(0.3)
                    assert not isinstance(app.screen, ConfirmScreen)  # no stop question
                    assert pending() == []  # nothing waits in the commands table for nobody
                    with pytest.raises(control.NoEngine, match="engine process is gone"):
                        control.RemoteControl(run_dir).send(control.Pause())
                    assert pending() == []
                    # A pause that reached the table in the instant before the kill was seen
                    store = RunStore(run_dir)
                    store.add_command("pause")
                    store.close()
                    table = app.query_one(TaskTable)
                    before = len(table.rows)
                    again = run_cli("run", "--detach", "--run-dir", str(run_dir), timeout=60)
                    assert again.returncode == 0, again.stderr
                    await until(pilot, lambda: app.state == "running", timeout=20)
                    await until(pilot, lambda: len(table.rows) > before + 3, timeout=30)
                    assert app.state == "running"  # not "paused (by you)"
                    assert not note.display
                    assert {"Pause", "Stop"} <= set(offered_keys(app))
                    await pilot.press("s", "y")  # the new process takes commands again
                    await until(pilot, lambda: app.state == "stopped", timeout=30)
                    await pilot.press("q")

            run(go())
            log = (run_dir / "run.log").read_text()
            assert "note: a pause sent to an earlier process of this run that ended before " \
                   "reading it: not applied" in log
            assert pending() == []
            wait_for(lambda: state_of(run_dir).get("state") == "stopped", timeout=30)
        finally:
            kill_quietly(pid)
            kill_quietly(int((run_dir / "engine.pid").read_text()))


def test_every_ui_shows_no_rate_for_a_killed_run(run_cli, tmp_path, isolated_env):
    """After a kill -9 two UIs on one run showed 1078.5 and 36.0 tasks/min at the same moment
    (each counted the last minute from what it had seen), and kept them. Nothing drives a
    killed run: a UI attached before the kill and one attached after both show "-"."""
    run_dir = tmp_path / "run"

    with FakeOpenAI(latency=0.05) as server:
        pid = detach(run_cli, server, run_dir, 2000, "--concurrency", "2")
        try:
            wait_for(lambda: count_machine(run_dir) >= 3, timeout=60)
            seen: dict[str, list[str]] = {}

            async def before():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(160, 40)) as pilot:
                    await kill_watched(pilot, app, pid,
                                       lambda: not rates_shown(app)[0].startswith("0.0 "))
                    await pilot.pause(0.3)
                    seen["before"] = rates_shown(app)
                    await pilot.press("q")

            run(before())
            seen["after"] = looked_at_attached(run_dir, "crashed", rates_shown)
            assert seen["before"] == seen["after"] == ["- tasks/min", "output - tok/s"], seen
        finally:
            kill_quietly(pid)


def test_runs_lists_the_most_recent_activity_first_and_says_so(run_cli, isolated_env, tmp_path):
    """`runs` listed runs by their directories' change time, oldest first, and did not say so.
    Most recent activity first, said above the table on a terminal; scripts get the same header
    and columns as before, in that order. `attach`'s list is in the same order, the most recent
    run its default."""
    import pty

    first, second = tmp_path / "first", tmp_path / "second"
    with FakeOpenAI() as server:
        for run_dir, target in ((first, "3"), (second, "3"), (first, "6")):  # first resumed last
            run_cli("run", "--headless", "--base-url", server.base_url, "--model", "m",
                    "--run-dir", str(run_dir), "--target", target, check=True)
    listing = run_cli("runs", check=True).stdout.splitlines()
    assert listing[0] == "directory\tstate\tpool\ttarget\tlast activity"
    assert [row.split("\t")[0] for row in listing[1:]] == [str(first), str(second)]
    pick = run_cli("attach", timeout=30)
    assert pick.stdout.splitlines()[:2] == ["most recent activity first:",
                                            f"  1. {first}  (finished, pool 6/6)"]
    leader, follower = pty.openpty()  # a terminal: the table, under the line saying the order
    try:
        proc = subprocess.run(cli_command("runs"), stdin=follower, stdout=follower,
                              stderr=subprocess.PIPE, env={**isolated_env, "COLUMNS": "200"},
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the writer has gone
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    text = shown.decode()
    assert "2 runs, most recent activity first" in text
    assert text.index(str(first)) < text.index(str(second))


def test_an_attached_ui_follows_the_target_of_a_session_that_resumes_the_run(run_cli, tmp_path,
                                                                              isolated_env):
    """A UI attached to a finished run; another process resumes it with a higher --target.
    The UI followed the new session's tasks but kept the old target: "pool 40/8", ETA "-",
    and the round lines' pool figures against 8, until it was closed and attached again. It
    now reads the run's config again when a new session starts."""
    from tui_helpers import read_run

    from selfinstruct_tui.tui.widgets.panes import StatusLine

    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.02) as server:
        pid = detach(run_cli, server, run_dir, 8, "--concurrency", "2")
        try:
            wait_for(lambda: state_of(run_dir).get("state") == "finished", timeout=60)

            async def go():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(120, 40)) as pilot:
                    await until(pilot, lambda: app.state == "finished")
                    status = app.query_one(StatusLine)
                    assert "/8 " in str(status.render())
                    again = run_cli("run", "--detach", "--run-dir", str(run_dir),
                                    "--target", "40", timeout=60)
                    assert again.returncode == 0, again.stderr
                    await until(pilot, lambda: app.state == "running", timeout=20)
                    await until(pilot, lambda: app.state == "finished", timeout=60)
                    await pilot.pause(0.3)
                    pool = read_run(run_dir, lambda store: store.count_tasks("machine"))
                    assert pool >= 40
                    assert f"pool {pool}/40 " in str(status.render())
                    await pilot.press("q")

            run(go())
        finally:
            kill_quietly(pid)
            kill_quietly(int((run_dir / "engine.pid").read_text()))


def steady_requests(server, polls: int = 6, every: float = 0.5) -> int:
    """The fake server's request count, checked unchanged over `polls` looks `every` seconds
    apart (no request arrives meanwhile; not a measure of speed)."""
    import time

    seen = server.requests
    for _ in range(polls):
        time.sleep(every)
        assert server.requests == seen, f"{server.requests - seen} request(s) sent while paused"
    return seen


def test_a_run_detached_while_paused_stays_paused_until_an_attached_ui_resumes_it(
        isolated_env, tmp_path):
    """`run` (the TUI, on a pty), p, then d and y: the background process resumed the run
    ("the run continues in the background"), lifting the pause without a word, and paid
    requests again. It now starts paused with the same reason, sends nothing, and a UI
    attached to it shows it paused and resumes it with p."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        pid = None
        try:
            react = detach_once_paused(
                run_dir, pause_when=lambda seen: b"Task pool" in seen
                and count_machine(run_dir) >= 3)
            code, text = on_a_terminal(isolated_env, react, "run", "--base-url",
                                       server.base_url, "--model", "m", "--run-dir",
                                       str(run_dir), "--target", "400", "--concurrency", "2",
                                       "--refresh", "0.1")
            assert code == 0, text[-2000:]
            pid = int((run_dir / "engine.pid").read_text())
            assert f"the run stays paused in the background (pid {pid})" in text, text[-2000:]
            assert "continues in the background" not in text
            wait_for(lambda: state_of(run_dir).get("pid") == pid, timeout=60)
            state = state_of(run_dir)
            assert state["state"] == "paused" and state["reason"] == "paused by the user"
            assert not state["by_errors"]
            held = count_machine(run_dir)
            sent = steady_requests(server)
            assert count_machine(run_dir) == held
            assert f"paused (pid {pid})" in subprocess.run(
                cli_command("runs"), capture_output=True, text=True, env=isolated_env,
                timeout=60).stdout

            async def go():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(120, 40)) as pilot:
                    await until(pilot, lambda: app.state == "paused", timeout=15)
                    await pilot.pause(1.0)
                    assert server.requests == sent  # attaching sends nothing either
                    await pilot.press("p")
                    await until(pilot, lambda: count_machine(run_dir) > held + 2, timeout=30)
                    assert app.state == "running"
                    await pilot.press("s", "y")
                    await until(pilot, lambda: app.state == "stopped", timeout=30)
                    await pilot.press("q")

            run(go())
            assert server.requests > sent
            wait_for(lambda: state_of(run_dir).get("state") == "stopped", timeout=30)
        finally:
            if pid is not None:
                kill_quietly(pid)


def test_run_detach_paused_starts_paused_and_a_paused_run_resumed_by_command_runs(
        run_cli, tmp_path):
    """`run --detach --paused`: the background run starts paused and sends nothing until
    resumed. A run whose last process ended paused (here stopped by SIGTERM while paused)
    and is resumed with `run --detach` without --paused runs: the command resumes it, as
    quitting a paused TUI says, and a note says so and how to keep it paused."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(latency=0.05) as server:
        pid = detach(run_cli, server, run_dir, 400, "--concurrency", "2", "--paused")
        try:
            state = state_of(run_dir)
            assert state["state"] == "paused" and state["reason"] == "paused by the user"
            assert steady_requests(server) == 0 and count_machine(run_dir) == 0
            os.kill(pid, signal.SIGTERM)  # a clean stop, while paused
            wait_for(lambda: state_of(run_dir).get("state") == "stopped", timeout=30)
            assert server.requests == 0
            log = (run_dir / "run.log").read_text()
            # what resumes it, which a headless run cannot (it said only that it was paused)
            assert ("paused: paused by the user; to resume it, attach and press p: "
                    f"{shown('attach', str(run_dir))}") in log
            resume = [line for line in log.splitlines() if line.startswith("resume with: ")]
            assert resume and "--paused" not in resume[-1]  # resuming runs it
        finally:
            kill_quietly(pid)
        again = run_cli("run", "--detach", "--run-dir", str(run_dir), timeout=60)
        assert again.returncode == 0, again.stderr
        assert "the run was paused when its last process ended; this command runs it" in \
            again.stderr and "--paused" in again.stderr
        assert "paused:" not in again.stdout
        pid = int((run_dir / "engine.pid").read_text())
        try:
            wait_for(lambda: count_machine(run_dir) >= 3, timeout=60)
            assert state_of(run_dir)["state"] == "running"
        finally:
            kill_quietly(pid)


def test_a_run_detached_while_paused_by_errors_keeps_the_reason(isolated_env, tmp_path):
    """`d` on a run paused by errors (here a thinking model whose answers are all reasoning:
    the fruitless-requests guard) started the background run "paused by the user", which hid
    why it was paused. It now starts paused with the pause's own reason (and whether p can fix
    it), stays paused (a headless run paused by errors stops; this one waits for a UI), and a
    UI attached to it shows the reason."""
    from selfinstruct_tui.tui.widgets.panes import StatusLine

    run_dir = tmp_path / "run"
    with FakeOpenAI(thinking=True) as server:
        pid = None
        try:
            paused: dict = {}
            react = detach_once_paused(run_dir, on_paused=paused.update)
            code, text = on_a_terminal(isolated_env, react, "run", "--base-url",
                                       server.base_url, "--model", "m", "--api", "chat",
                                       "--run-dir", str(run_dir), "--target", "50",
                                       "--concurrency", "2", "--max-fruitless-requests", "6",
                                       "--refresh", "0.1")
            assert code == 0, text[-2000:]
            assert paused["by_errors"] and paused["needs_restart"], paused
            assert "--extra-body" in paused["reason"]
            pid = int((run_dir / "engine.pid").read_text())
            assert f"the run stays paused in the background (pid {pid})" in text, text[-2000:]
            wait_for(lambda: state_of(run_dir).get("pid") == pid, timeout=60)
            steady_requests(server, polls=4)  # nothing sent, and it did not stop
            state = state_of(run_dir)
            assert state["state"] == "paused" and state["reason"] == paused["reason"]
            assert state["by_errors"] and state["needs_restart"]
            from selfinstruct_tui.engine.control import pid_alive
            assert pid_alive(pid)  # waiting for a UI, not stopped as failing
            log = (run_dir / "run.log").read_text()
            assert "paused by the user" not in log

            async def go():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(120, 40)) as pilot:
                    await until(pilot, lambda: app.state == "paused", timeout=15)
                    await pilot.pause(0.3)
                    assert "paused (errors)" in str(app.query_one(StatusLine).render())
                    note = str(app.query_one("#run-note").render())
                    assert note.startswith("Paused: ") and "--extra-body" in note
                    await pilot.press("s", "y")
                    await until(pilot, lambda: app.state == "stopped", timeout=30)
                    await pilot.press("q")

            run(go())
        finally:
            if pid is not None:
                kill_quietly(pid)


async def kill_watched(pilot, app, pid: int, ready=lambda: True) -> None:
    """With an attached UI: once it shows the run running and `ready()` holds, kill -9 the
    run's process and wait until the UI shows it crashed."""
    await until(pilot, lambda: app.state == "running")
    await until(pilot, ready)
    os.kill(pid, signal.SIGKILL)
    await until(pilot, lambda: app.state == "crashed", timeout=20)


def looked_at_attached(run_dir: Path, state: str, read):
    """`read(app)` of a UI attached to `run_dir` once it shows the run `state` and has settled
    (the UI then quits)."""
    seen = []

    async def go():
        app = create_app(run_dir, attach=True, refresh=0.1)
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: app.state == state)
            await pilot.pause(0.3)
            seen.append(read(app))
            await pilot.press("q")

    run(go())
    return seen[0]


def rates_shown(app) -> list[str]:
    """The status line's rates: tasks per minute and output tokens per second, as shown."""
    from selfinstruct_tui.tui.widgets.panes import StatusLine

    line = str(app.query_one(StatusLine).render())
    return [part for part in line.split(" │ ") if "/min" in part or "tok/s" in part]


def test_every_ui_shows_a_killed_runs_time_up_to_its_last_recorded_work(run_cli, tmp_path,
                                                                          isolated_env):
    """kill -9 under an attached UI: its clock stopped when it noticed, one attached after
    the kill counted the rounds left running as 0 s. Both end the killed session's time at
    its last recorded work (`RunStore.last_activity`, the rule of `recover_interrupted`).
    The UI that saw the kill counted on a clock between its attach and the kill; the rounds'
    spans may leave gaps in that stretch (between rounds), which a clock counts: the
    tolerance is those gaps, read from the rounds."""
    from test_resume import engine_activity, spans_length, view_elapsed

    run_dir = tmp_path / "run"
    seen: dict[str, float] = {}
    with FakeOpenAI(latency=0.2) as server:
        pid = detach(run_cli, server, run_dir, 2000, "--concurrency", "2")
        try:
            wait_for(lambda: count_machine(run_dir) >= 3, timeout=60)

            async def go():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(160, 40)) as pilot:
                    held = count_machine(run_dir)
                    await kill_watched(pilot, app, pid,
                                       lambda: count_machine(run_dir) >= held + 3)
                    await pilot.pause(0.3)
                    seen["before"] = app.view.status.elapsed()
                    await pilot.press("q")

            run(go())
        finally:
            kill_quietly(pid)
    import sqlite3

    conn = sqlite3.connect(run_dir / "run.sqlite")
    last = engine_activity(conn)
    spans = [(s, min(last, f if f is not None else last))
             for s, f in conn.execute("SELECT started, finished FROM rounds")]
    gaps = (last - min(s for s, _ in spans)) - spans_length(spans)
    after = view_elapsed(run_dir)
    assert after == pytest.approx(spans_length(spans), abs=1e-6)
    assert abs(seen["before"] - after) <= gaps + 0.01, (seen, after, gaps)


def test_an_attached_ui_shows_the_engines_rates_for_a_run_resumed_paused_after_a_kill(
        run_cli, tmp_path, isolated_env):
    """kill -9, then `run --detach --paused`: a UI attached after showed 3100 tasks/min (the
    killed session's last minute over the first second of the new one), falling while the
    run stayed paused; one attached across the kill kept the killed session's rates (it saw
    a pause, not a new session). The engine's own UI shows the new session's: nothing yet,
    held while paused. Every UI now does."""
    run_dir = tmp_path / "run"
    seen: dict[str, list[list[str]]] = {}
    with FakeOpenAI(latency=0.05) as server:
        pid = detach(run_cli, server, run_dir, 2000, "--concurrency", "2")
        try:
            wait_for(lambda: count_machine(run_dir) >= 10, timeout=60)

            async def following():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(160, 40)) as pilot:
                    await kill_watched(pilot, app, pid)
                    again = run_cli("run", "--detach", "--paused", "--run-dir", str(run_dir),
                                    timeout=60)
                    assert again.returncode == 0, again.stderr
                    await until(pilot, lambda: app.state == "paused", timeout=20)
                    await pilot.pause(0.3)
                    first = rates_shown(app)
                    await pilot.pause(1.2)  # held: a rate over a running clock would fall
                    seen["following"] = [first, rates_shown(app)]
                    await pilot.press("q")

            async def after():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(160, 40)) as pilot:
                    await until(pilot, lambda: app.state == "paused")
                    await pilot.pause(0.3)
                    first = rates_shown(app)
                    await pilot.pause(1.2)
                    seen["after"] = [first, rates_shown(app)]
                    await pilot.press("q")

            run(following())
            pid = int((run_dir / "engine.pid").read_text())
            run(after())
        finally:
            kill_quietly(pid)
    nothing_yet = ["0.0 tasks/min", "output 0 tok/s"]
    assert seen == {"following": [nothing_yet] * 2, "after": [nothing_yet] * 2}, seen


def time_figures(app) -> tuple:
    """What an attached UI's status line shows that is derived from time, as shown (the rates,
    the elapsed time, the ETA) and as the view holds them (exact, while paused held)."""
    from selfinstruct_tui.tui.widgets.panes import StatusLine

    status = app.view.status
    line = str(app.query_one(StatusLine).render())
    shown = [part for part in line.split(" │ ")
             if "/min" in part or "tok/s" in part or part.startswith("ETA")
             or re.fullmatch(r"\d+:\d\d(:\d\d)?", part)]
    return (shown, status.elapsed(), status.rates.tasks_per_minute(),
            status.rates.tokens_per_second())


def engine_rule(run_dir: Path) -> tuple[float, float]:
    """(elapsed seconds, tasks/min) of a paused fresh run by the engine's rule, from what the
    store recorded: the session's run time from its start to the open pause, the pauses left
    out; the tasks accepted in its last minute of run time over that minute (or the run time,
    when shorter). A single session: no earlier rounds."""
    from selfinstruct_tui.engine.rates import active_seconds_of

    store = RunStore(run_dir, readonly=True)
    try:
        started = store.get_meta("session")["started"]
        pauses = store.pauses()
        assert pauses[-1][1] is None  # paused
        paused_at = pauses[-1][0]
        run = active_seconds_of([(started, paused_at)], pauses, paused_at)
        # the last minute of run time before the pause, walking back over closed pauses
        since, left = paused_at, 60.0
        for p_start, p_end in reversed(pauses[:-1]):
            if since - p_end >= left:
                break
            left -= since - p_end
            since = p_start
        since = max(started, since - left)
        # (tasks accepted during the pause, from answers in flight, count as of its start)
        return run, len(store.accepted_since(since)) / min(60.0, run) * 60
    finally:
        store.close()


def settled(run_dir: Path, server) -> bool:
    """Paused and every request the endpoint received answered and recorded (those held by
    the pause are never sent): no figure can change any more."""
    return state_of(run_dir).get("state") == "paused" and read_run(
        run_dir, lambda store: store.db.execute(
            "SELECT COUNT(*) FROM prompts WHERE finished IS NOT NULL").fetchone()[0]
    ) >= len(server.log)


def test_every_ui_shows_the_engines_time_figures_paused_resumed_and_attached_again(
        run_cli, tmp_path, isolated_env):
    """Paused through a UI attached to a detached run (tmux, the loopback endpoint): it showed
    "0.0/min" and "ETA -" where the run's own TUI showed 137.8/min and an ETA; attached UIs
    disagreed with each other and with the engine on tasks/min, tok/s, the ETA and the
    elapsed time, as each stamped the events with its own clock when it saw them (a poll and
    a refresh late, its pause when its follower noticed it) and counted the elapsed time from
    the rounds up to its attach and by a clock after. Every UI now takes them from the times
    the engine recorded: the UI that paused, one attached while paused that resumes and
    pauses again, one attached after: the same figures, the engine's rule over the store's
    records exactly."""
    run_dir = tmp_path / "run"
    seen: dict[str, tuple] = {}
    with FakeOpenAI(latency=0.1) as server:
        pid = detach(run_cli, server, run_dir, 2000, "--concurrency", "2")
        try:
            wait_for(lambda: count_machine(run_dir) >= 10, timeout=60)

            async def pausing():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(160, 40)) as pilot:
                    await until(pilot, lambda: app.state == "running")
                    await pilot.press("p")
                    await until(pilot, lambda: app.state == "paused" and settled(run_dir, server))
                    await pilot.pause(0.5)  # (the follower brings the last answers)
                    seen["pausing"] = time_figures(app)
                    await pilot.pause(1.2)  # held while paused (they fell while nothing was sent)
                    assert time_figures(app) == seen["pausing"]
                    await pilot.press("q")

            async def resuming():
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(160, 40)) as pilot:
                    await until(pilot, lambda: app.state == "paused")
                    await pilot.pause(0.3)
                    seen["attached paused"] = time_figures(app)
                    held = count_machine(run_dir)
                    await pilot.press("p")
                    await until(pilot, lambda: count_machine(run_dir) >= held + 5, timeout=60)
                    await pilot.press("p")
                    await until(pilot, lambda: app.state == "paused" and settled(run_dir, server))
                    await pilot.pause(0.5)
                    seen["paused again"] = time_figures(app)
                    await pilot.press("q")

            run(pausing())
            first = engine_rule(run_dir)
            run(resuming())
            second = engine_rule(run_dir)
            seen["later"] = looked_at_attached(run_dir, "paused", time_figures)
        finally:
            kill_quietly(pid)
    assert seen["pausing"] == seen["attached paused"], seen
    assert seen["paused again"] == seen["later"], seen
    for figures, (elapsed, per_min) in ((seen["pausing"], first), (seen["later"], second)):
        assert figures[1] == pytest.approx(elapsed, abs=1e-6)
        assert figures[2] == pytest.approx(per_min, rel=1e-9)
        assert figures[2] > 0 and not any(p.startswith("ETA -") for p in figures[0]), figures
