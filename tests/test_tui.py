"""The TUI with App.run_test() and Pilot, against the fake OpenAI server."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from textual.widgets import TextArea

from fake_openai import FakeOpenAI
from selfinstruct_tui.engine.invocation import command_line
from selfinstruct_tui.engine.store import RunStore
from selfinstruct_tui.tui.app import create_app
from selfinstruct_tui.tui.screens.dialogs import ConfirmScreen
from selfinstruct_tui.tui.screens.inspector import InspectorScreen, TaskEditScreen
from selfinstruct_tui.tui.screens.seed_editor import SeedEditorScreen
from selfinstruct_tui.tui.screens.seed_manager import SeedManagerScreen
from selfinstruct_tui.tui.widgets.panes import StatusLine
from selfinstruct_tui.tui.widgets.task_table import TaskTable
from tui_helpers import (
    assert_next_rounds_use_only,
    count_machine,
    deterministic_run,
    make_engine,
    run,
    until,
)


def test_live_run_fills_the_panes_and_pause_stops_growth(tmp_path, isolated_env):
    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=400)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                table = app.query_one(TaskTable)
                await until(pilot, lambda: sum(r.origin == "machine"
                                               for r in table.rows.values()) >= 10)
                status = app.query_one(StatusLine)
                assert "running" in str(status.render())
                await pilot.press("p")
                await until(pilot, lambda: app.state == "paused")
                await pilot.pause(1.0)  # in-flight requests finish
                settled = count_machine(tmp_path / "run")
                await pilot.pause(1.0)
                assert count_machine(tmp_path / "run") == settled  # no growth while paused
                assert "paused" in str(status.render())
                held = str(app.query_one("#inflight").render())
                assert held.startswith("open (held, paused): ")  # not "open": none is sent
                # a narrow pane says "held" in fewer words: it read "open (h…: 5 classify,"
                for size, said in (((80, 24), ("open (held, paused):",)),
                                   ((50, 15), ("held (paused):", "held:"))):
                    await pilot.resize_terminal(*size)
                    await pilot.pause(0.3)
                    lines = str(app.query_one("#inflight").render()).splitlines()
                    assert lines[0].startswith(said) and "…" not in "".join(lines), lines
                await pilot.resize_terminal(120, 40)
                await pilot.pause(0.3)
                # q while paused says so, and what quitting does (it said "still going")
                await pilot.press("q")
                assert isinstance(app.screen, ConfirmScreen)
                question = str(app.screen.query_one(".question").render())
                assert "The run is paused" in question and "still going" not in question
                assert "does not stay paused" in question and "selfinstruct run" in question
                assert [str(b.label) for b in app.screen.query("Button")] == \
                    ["Stop and quit (y)", "Stay paused (n)"]
                # the command alone on its line: it ended in the sentence's full stop
                assert app.view.resume_command in question.splitlines()
                await pilot.press("n")
                await pilot.pause(0.2)
                assert app.state == "paused"
                # d while paused: the run stays paused in the background (it ran again there)
                await pilot.press("d")
                assert isinstance(app.screen, ConfirmScreen)
                question = str(app.screen.query_one(".question").render())
                assert "It stays paused there" in question and "press p" in question
                assert command_line("attach", str(tmp_path / "run")) in question.splitlines()
                await pilot.press("n")
                await pilot.pause(0.2)
                assert app.state == "paused"
                await pilot.press("p")
                await until(pilot, lambda: count_machine(tmp_path / "run") > settled)
                await pilot.press("s")  # asked first, as quitting is; n: the run goes on
                assert isinstance(app.screen, ConfirmScreen)
                buttons = [str(b.label) for b in app.screen.query("Button")]
                assert buttons == ["Stop (y)", "Keep running (n)"]
                assert app.view.resume_command in str(
                    app.screen.query_one(".question").render()).splitlines()
                await pilot.press("n")
                await pilot.pause(0.3)
                assert app.state == "running" and engine.finished is None
                await pilot.press("q")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                await until(pilot, lambda: not app.is_running, timeout=40)
        stopped = count_machine(tmp_path / "run")
        assert 0 < stopped < 400
        store = RunStore(tmp_path / "run", readonly=True)
        assert store.get_meta("state")["state"] == "stopped"  # resumable, nothing lost
        pauses = store.pauses()  # the pause is recorded, for the elapsed time to leave out
        store.close()
        assert len(pauses) == 1 and pauses[0][1] is not None and pauses[0][1] > pauses[0][0]

    run(go())


def test_a_pause_whose_fix_is_a_setting_does_not_say_press_p_to_resume(tmp_path, isolated_env):
    """A thinking model's answers are all reasoning: p would only send the same requests again,
    so the pause says to stop and run the command again with the fix (an endpoint outage's
    pause still says p resumes: test_endpoint_failures)."""
    async def go():
        with FakeOpenAI(thinking=True) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=50, api="chat",
                                 concurrency=2, max_fruitless_requests=6)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: app.state == "paused")
                await until(pilot, lambda: any(n.title == "Run paused"
                                               for n in app._notifications))
                note = next(n.message for n in app._notifications if n.title == "Run paused")
                assert "--extra-body" in note and "Press p to resume" not in note
                assert note.endswith("Press s to stop, then run the command again with the fix "
                                     "(the same command resumes this run); p tries again as it "
                                     "is."), note
                await pilot.press("s", "y")
                await until(pilot, lambda: app.state in ("stopped", "finished"), timeout=40)
        store = RunStore(tmp_path / "run", readonly=True)
        assert store.get_meta("state")["needs_restart"] is True
        store.close()

    run(go())


def test_seed_edit_takes_effect_and_invalid_edit_keeps_text(tmp_path, isolated_env):
    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=300)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.press("e")  # the seed manager; r: its raw JSONL editor
                await until(pilot, lambda: isinstance(app.screen, SeedManagerScreen))
                await pilot.press("r")
                await until(pilot, lambda: isinstance(app.screen, SeedEditorScreen))
                area = app.screen.query_one(TextArea)
                lines = area.text.splitlines()
                assert len(lines) == 139
                broken = "\n".join(lines[:2] + ['{"id": "x", "instruction": ""}'] + lines[3:])
                area.text = broken
                await pilot.press("ctrl+s")
                assert isinstance(app.screen, SeedEditorScreen)  # refused
                assert area.text == broken  # nothing lost
                errors = str(app.screen.query_one("#seed-errors").render())
                assert "seed editor:3:" in errors
                # A valid edit: keep 20 seeds, change one, add a new one.
                kept = [json.loads(x) for x in lines[:20]]
                kept[0]["instruction"] = "Name three rivers in Europe and their lengths."
                kept.append({"id": "new_seed", "name": "new", "instruction":
                             "Explain the rules of chess castling to a beginner.",
                             "instances": [{"input": "", "output": "You move the king two "
                                            "squares towards a rook..."}],
                             "is_classification": False})
                area.text = "\n".join(json.dumps(k) for k in kept)
                await pilot.press("ctrl+s")
                await until(pilot, lambda: isinstance(app.screen, SeedManagerScreen))
                await pilot.press("escape")
                seeds = await assert_next_rounds_use_only(pilot, tmp_path / "run", 21)
                assert "Explain the rules of chess castling to a beginner." in seeds
                # The pool pane shows exactly the new seed set, and every row it lists exists.
                table = app.query_one(TaskTable)
                await until(pilot, lambda: sum(r.origin == "seed"
                                               for r in table.rows.values()) == 21)
                assert all(i in table.rows for i in table.sorted_ids)
                table.action_jump(-1)  # render the oldest rows (the seeds) too
                await pilot.pause()
                assert (tmp_path / "run" / "seeds.jsonl").exists()
                engine.stop()
                await until(pilot, lambda: app.state in ("stopped", "finished"), timeout=40)

    run(go())


def test_inspector_shows_provenance_and_drop_removes_task(tmp_path, isolated_env, run_cli):
    async def go():
        with FakeOpenAI() as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=20)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: app.state == "finished")
                table = app.query_one(TaskTable)
                table.focus()
                victim = table.current_id  # newest first: a machine task
                assert table.rows[victim].origin == "machine"
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
                text = str(app.screen.query_one("#inspector-text").render())
                assert f"Task #{victim}" in text
                assert "Prompt #" in text and "Raw response" in text
                assert "Most similar pool tasks" in text and "Instances" in text
                body = app.screen.query_one("#inspector-body")
                assert app.focused is body and body.scroll_y == 0  # the keys scroll it
                assert "PgDn" in str(body.border_subtitle)  # and it says so
                await pilot.press("pagedown")
                await pilot.pause()
                assert body.scroll_y > 0
                await pilot.press("d")  # asks first: no undo
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("n")
                await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
                assert victim in table.rows
                await pilot.press("d")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("y")
                await until(pilot, lambda: victim not in table.rows)
        return victim

    import asyncio

    victim = asyncio.run(go())
    store = RunStore(tmp_path / "run", readonly=True)
    assert store.task(victim).status == "dropped"
    assert store.count_tasks("machine") == 19
    reasons = [r.reason for r in store.rejections_after()]
    assert "dropped_by_user" in reasons
    store.close()
    out = tmp_path / "out.jsonl"
    run_cli("export", str(tmp_path / "run"), "--format", "self-instruct", "-o", str(out),
            check=True)
    exported = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert victim not in exported and len(exported) == 19


def test_the_task_editor_refuses_a_flag_that_is_no_boolean_and_asks_before_discarding(
        tmp_path, isolated_env):
    """The inspector's JSON editor took `"is_classification": "false"` as true (Python's bool
    of a non-empty string), and `esc` threw away the edits without asking (the seed form and
    the raw seed editor ask); a list as the whole task was an unexplained error."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.query_one(TaskTable)
            table.focus()
            victim = table.current_id
            assert victim is not None and table.rows[victim].origin == "machine"
            before = app.reader.task(victim)
            assert before is not None and not before.is_classification
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, TaskEditScreen))
            editor = app.screen
            area = editor.query_one("#task-text", TextArea)
            errors = editor.query_one("#task-errors")
            for bad, said in (('"false"', 'must be true or false, got "false"'),
                              ("[1]", "must be true or false, got [1]")):
                area.text = area.text.replace('"is_classification": false',
                                              f'"is_classification": {bad}')
                await pilot.press("ctrl+s")
                await pilot.pause()
                assert app.screen is editor and said in str(errors.render())
                area.text = area.text.replace(f'"is_classification": {bad}',
                                              '"is_classification": false')
            typed = area.text
            area.text = "[]"
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert "the task must be a JSON object" in str(errors.render())
            area.text = typed.replace(before.instruction, "An edit not to lose")
            area.focus()
            await pilot.press("escape")  # asks: the text was changed
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")
            await until(pilot, lambda: app.screen is editor)
            assert "An edit not to lose" in area.text
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            await pilot.press("e")  # unchanged: esc closes at once
            await until(pilot, lambda: isinstance(app.screen, TaskEditScreen))
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            return before

    before = asyncio.run(go())
    store = RunStore(run_dir, readonly=True)
    assert store.task(before.id) == before  # nothing was saved
    store.close()


def test_filter_origin_sort_and_maximize_on_a_finished_run(tmp_path, isolated_env):
    deterministic_run(tmp_path / "run")

    async def go():
        app = create_app(tmp_path / "run", refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.query_one(TaskTable)
            assert len(table.view) == 139 + 40  # the whole history at once
            await pilot.press("o")
            assert table.origin == "seed" and len(table.view) == 139
            await pilot.press("o")
            assert table.origin == "machine" and len(table.view) == 40
            await pilot.press("slash")
            await pilot.press(*"green")
            assert all("green" in table.rows[i].lowered for i in table.view)
            assert 0 < len(table.view) < 40
            await pilot.press("enter")
            table.focus()
            await pilot.press("c")  # sort by round
            assert table.sort_column == "round"
            rounds = [table.rows[i].round for i in table.displayed_ids()]
            assert rounds == sorted(rounds, reverse=True)
            await pilot.press("v")
            rounds = [table.rows[i].round for i in table.displayed_ids()]
            assert rounds == sorted(rounds)
            await pilot.press("m")
            assert app.screen.maximized is not None
            await pilot.press("m")
            assert app.screen.maximized is None

    run(go())


def test_a_config_file_that_cannot_be_read_is_a_notice_not_a_stop(tmp_path, isolated_env):
    """Opening a run (attach, resume) does not need the config file's run settings: one that
    cannot be read is shown as a notice and the UI comes up with the default theme and refresh
    (it stopped with exit 2 before); a resumed run's notes are shown beside it."""
    deterministic_run(tmp_path / "run")
    Path(isolated_env["SELFINSTRUCT_CONFIG"]).write_text("theme = \n")

    async def go():
        app = create_app(tmp_path / "run", notices=["a resumed run's note"])
        assert app.refresh_interval == 0.5
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: len(app._notifications) >= 2)
            notes = [n.message for n in app._notifications]
            assert notes[0] == "a resumed run's note"
            assert notes[1].startswith("The config file is not read (theme and refresh take "
                                       f"their defaults): {isolated_env['SELFINSTRUCT_CONFIG']}:1: "
                                       "not valid TOML"), notes

    run(go())


def test_escape_closes_the_help_panel(tmp_path, isolated_env):
    """`?` opens the keys panel; escape closes it (as it closes the filter box), and `?` again
    still toggles it."""
    deterministic_run(tmp_path / "run")

    async def go():
        app = create_app(tmp_path / "run", refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("question_mark")
            await until(pilot, lambda: bool(app.screen.query("HelpPanel")))
            await pilot.press("escape")
            await until(pilot, lambda: not app.screen.query("HelpPanel"))
            await pilot.press("question_mark")
            await until(pilot, lambda: bool(app.screen.query("HelpPanel")))
            await pilot.press("question_mark")
            await until(pilot, lambda: not app.screen.query("HelpPanel"))

    run(go())


def test_export_key_writes_the_file(tmp_path, isolated_env):
    """x exports; reopened, the dialog offers the session's last format, path and box (after an
    export and after a cancel: it went back to alpaca in the run's folder, so exporting twice
    meant typing it all again), and a format change keeps the folder the user chose."""
    deterministic_run(tmp_path / "run")

    def field(app, selector: str):
        return app.screen.query_one(selector).value

    async def go():
        app = create_app(tmp_path / "run", refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("x")
            await pilot.pause(0.2)
            path = app.screen.query_one("#path")
            path.value = str(tmp_path / "data.json")
            await pilot.click("#export")
            await until(pilot, lambda: (tmp_path / "data.json").exists())
            await until(pilot, lambda: any("Exported 40 tasks in" in str(n.message)
                                           for n in app._notifications))
            assert not any("replaced" in str(n.message) for n in app._notifications)
            # the same file again, as the dialog offers it: replaced, and said
            await pilot.press("x")
            await pilot.pause(0.2)
            assert (field(app, "#format"), field(app, "#path")) == \
                ("alpaca", str(tmp_path / "data.json"))
            await pilot.click("#export")
            await until(pilot, lambda: any("(it replaced what was there: "
                                           in str(n.message) for n in app._notifications))
            # another format, in the folder chosen; then cancelled: offered again as left
            await pilot.press("x")
            await pilot.pause(0.2)
            app.screen.query_one("#format").value = "sharegpt"
            await pilot.pause(0.2)
            assert field(app, "#path") == str(tmp_path / "data.jsonl")
            app.screen.query_one("#reviewed-only").value = True
            await pilot.press("escape")
            await pilot.pause(0.2)
            await pilot.press("x")
            await pilot.pause(0.2)
            assert (field(app, "#format"), field(app, "#path"), field(app, "#reviewed-only")) \
                == ("sharegpt", str(tmp_path / "data.jsonl"), True)

    run(go())
    rows = json.loads((tmp_path / "data.json").read_text())
    assert len(rows) == sum(1 + n % 3 for n in range(40))
    # the pool's 40 tasks, not only the rows (instances): said and in the metadata
    meta = json.loads((tmp_path / "data.json.meta.json").read_text())
    assert (meta["rows"], meta["tasks"], meta["similarity_tokenizer"]) == (len(rows), 40, "rouge")
    assert not (tmp_path / "data.jsonl").exists()


async def export_in_dialog(pilot, app, fmt: str, path: str, reviewed: bool = False) -> str:
    """Fill the export dialog (opened with x unless it is open) and press Export; wait until it
    shows an error (returned: "<field>: <text>", the field whose error line shows it) or
    closed (returned: the notifications it left, one a line)."""
    from selfinstruct_tui.tui.screens.dialogs import ExportScreen

    if not isinstance(app.screen, ExportScreen):
        await pilot.press("x")
        await pilot.pause(0.2)
    dialog = app.screen
    notified = len(app._notifications)
    dialog.query_one("#format").value = fmt
    await pilot.pause(0.1)
    dialog.query_one("#path").value = path
    dialog.query_one("#reviewed-only").value = reviewed
    await pilot.pause(0.1)
    await pilot.click("#export")

    def shown() -> list:
        return [line for line in dialog.query(".errors") if line.has_class("visible")]

    await until(pilot, lambda: app.screen is not dialog or bool(shown()))
    await pilot.pause(0.2)
    if app.screen is not dialog:
        return "\n".join(str(n.message) for n in list(app._notifications)[notified:])
    assert len(shown()) == 1 and len(app._notifications) == notified  # said there, only there
    line = shown()[0]
    # the dialog kept what was typed
    assert (dialog.query_one("#format").value, dialog.query_one("#path").value,
            dialog.query_one("#reviewed-only").value) == (fmt, path, reviewed)
    return f"{line.id.removesuffix('-error')}: {line.render()}"


def test_a_path_from_the_home_folder_is_written_there(tmp_path, isolated_env, monkeypatch):
    """"~/data.jsonl" in the dialog was a folder "~" that does not exist, refused; as in a shell,
    it is the home folder's."""
    deterministic_run(tmp_path / "run")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))

    async def go():
        app = create_app(tmp_path / "run", refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            said = await export_in_dialog(pilot, app, "alpaca", "~/data.json")
            assert f"to {home / 'data.json'}" in said, said

    run(go())
    assert len(json.loads((home / "data.json").read_text())) == sum(1 + n % 3 for n in range(40))


def test_export_dialog_refuses_stdout_names_the_path_and_marks_its_box(tmp_path, isolated_env):
    """The export dialog with "-" as its path wrote the data to the TUI's captured stdout
    (nowhere) and said "Exported 40 tasks ... to -"; it now writes nothing and says why. A
    path that cannot be written named the temporary file beside it in a raw OSError; it now
    names the path. Its "only reviewed tasks" box drew "X" when off (colour alone told)."""
    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", refresh=0.1)

    async def go():
        async with app.run_test(size=(120, 40)) as pilot:
            said = await export_in_dialog(pilot, app, "alpaca", "-")
            assert said.startswith("path: Not exported: '-' is standard output"), said
            assert "name a file" in said and "Exported" not in said
            box = app.screen.query_one("#reviewed-only")
            assert "X" not in str(box.render()).split("only")[0]
            # (a folder no one can create files in)
            said = await export_in_dialog(pilot, app, "alpaca", "/proc/out.json")
            assert said.startswith("path: ") and "/proc/out.json cannot be written" in said
            assert ".tmp" not in said, said

    run(go())
    assert not (tmp_path / "-").exists()


CLI_FLAG = re.compile(r"(?:^|[\s(])(-o|--[a-z][a-z-]+)\b")  # one of ours: not `mkdir -p`


def test_export_dialog_messages_name_its_fields_never_cli_flags(tmp_path, isolated_env):
    """The export dialog's errors told its user to "choose another -o" or "leave out
    --reviewed-only", and an openai-chat note to "resume with a higher --target": flags of a
    command they never typed. Each message reachable from the dialog now names its fields
    (the path, the 'only tasks that passed the quality review' box), and still says why.
    An error closed the dialog (a notification; reopened, it had forgotten all that was typed):
    it now stays open as typed, the error beside its field, which takes the focus. Its box
    read "... review (r)", a key that does nothing there: the review is the main screen's r."""
    from selfinstruct_tui.engine.control import OfflineControl, ReviewAnswer, SetReviewSample

    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    (tmp_path / "a-folder").mkdir()
    app = create_app(run_dir, refresh=0.1)
    messages: dict[str, str] = {}
    focused: dict[str, str | None] = {}
    shown: dict[str, str] = {}

    async def go():
        async with app.run_test(size=(120, 40)) as pilot:
            async def export(case: str, fmt: str, path: str, reviewed: bool = False) -> None:
                messages[case] = await export_in_dialog(pilot, app, fmt, path, reviewed)
                focused[case] = app.focused.id if app.focused else None

            await export("own file", "alpaca", str(run_dir / "run.log"))
            shown["label"] = str(app.screen.query_one("#reviewed-only").label)
            shown["hint"] = str(app.screen.query_one("#review-hint").render())
            await export("folder", "alpaca", str(tmp_path / "a-folder"))
            await export("no folder", "alpaca", str(tmp_path / "nope/x.json"))
            await export("file in the way", "alpaca", str(run_dir / "run.log" / "x.json"))
            await export("device", "alpaca", "/dev/null")
            await export("no review", "alpaca", str(tmp_path / "r.json"), True)
            await export("rejections", "rejections", str(tmp_path / "j.jsonl"), True)
            await pilot.press("escape")
            control = OfflineControl(run_dir, lambda event: None)
            control.send(SetReviewSample((145,), (0,)))
            for question in ("instruction", "input", "output"):
                control.send(ReviewAnswer(145, question, True))
            await export("few", "openai-chat", str(tmp_path / "c.jsonl"), True)
            assert not app.screen.query("#export-dialog")  # closed on success

    run(go())
    for case, text in messages.items():
        assert not CLI_FLAG.search(text), (case, text)
    for case in ("own file", "folder", "no folder", "file in the way", "device"):
        assert messages[case].startswith("path: Not exported: "), messages[case]
        assert focused[case] == "path", (case, focused[case])
    for case in ("no review", "rejections"):
        assert messages[case].startswith("reviewed_only: Not exported: "), messages[case]
        assert focused[case] == "reviewed-only", (case, focused[case])
    for case in ("own file", "no folder", "file in the way", "device"):
        assert "choose another path" in messages[case], messages[case]
    assert "is a directory; end the path with a file's name" in messages["folder"]
    box = "'only tasks that passed the quality review'"
    assert "leave" not in messages["no review"] and f"untick {box}" in messages["no review"]
    assert "(key r on the main screen)" in messages["no review"]
    assert "press r" not in messages["no review"]  # (pressed in the dialog, r does nothing)
    assert messages["rejections"].startswith(f"reviewed_only: Not exported: {box} keeps")
    assert "untick it" in messages["rejections"]
    assert "has 3: generate more (quit, then resume the run with a higher target)" in \
        messages["few"]
    assert not re.search(r"\([a-z]\)", shown["label"]), shown  # no key-like "(r)"
    assert shown["label"] == box.strip("'") and "key r on the main screen" in shown["hint"]


def test_a_long_export_runs_off_the_screen_and_goes_on_when_its_dialog_is_closed(
        tmp_path, isolated_env):
    """An export of many tasks (20,000: seconds) is written by a worker thread while the dialog
    says so ("Exporting", its Export button off: no second export of the same); the screen
    answers keys meanwhile, Escape closes the dialog and the export goes on, said when it
    ends."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir, machine=20_000)
    out = tmp_path / "many.json"
    app = create_app(run_dir, refresh=0.1)

    def said() -> list[str]:
        return [str(n.message) for n in app._notifications]

    async def go():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("x")
            await pilot.pause(0.2)
            dialog = app.screen
            dialog.query_one("#path").value = str(out)
            await pilot.click("#export")
            assert "Exporting (alpaca)" in str(dialog.query_one("#export-status").render())
            assert dialog.query_one("#export").disabled
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is not dialog)
            await pilot.press("x")  # the screen answers: the dialog again, as it was left
            await until(pilot, lambda: bool(app.screen.query("#export-dialog")))
            assert app.screen.query_one("#path").value == str(out)
            await pilot.press("escape")
            await until(pilot, lambda: any(m.startswith("Exported 20000 tasks") for m in said()))
            # again, and the command palette opened over the dialog meanwhile: the export's
            # end leaves the palette open (the dialog's close popped the screen on top)
            await pilot.press("x")
            await pilot.pause(0.2)
            dialog = app.screen
            await pilot.click("#export")
            await pilot.press("ctrl+p")
            palette = app.screen
            assert palette is not dialog and dialog in app.screen_stack
            await until(pilot, lambda: sum(m.startswith("Exported 20000 tasks")
                                           for m in said()) == 2)
            await pilot.pause(0.2)
            assert app.screen is palette and dialog in app.screen_stack
            await pilot.press("escape")  # the palette; the dialog, done, closes behind it
            await until(pilot, lambda: dialog not in app.screen_stack)
            assert app.screen is app.screen_stack[0]
            assert not any("failed" in m for m in said()), said()

    run(go())
    assert len(json.loads(out.read_text())) == sum(1 + n % 3 for n in range(20_000))


def test_export_while_the_engine_runs(tmp_path, isolated_env):
    """An export from the dialog while the engine writes the run: the tasks accepted so far,
    the run going on; exported again as the dialog offers it, it has at least as many."""
    run_dir = tmp_path / "run"
    out = tmp_path / "live.jsonl"

    def tasks_in(path: Path) -> int:
        return json.loads((path.parent / (path.name + ".meta.json")).read_text())["tasks"]

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(run_dir, server.base_url, target=400)
            app = create_app(run_dir, engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: count_machine(run_dir) >= 10)
                said = await export_in_dialog(pilot, app, "self-instruct", str(out))
                assert said.startswith("Exported "), said
                first = tasks_in(out)
                assert first >= 10 and len(out.read_text().splitlines()) == first
                assert app.state == "running"
                await until(pilot, lambda: count_machine(run_dir) > first)
                await pilot.press("x")
                await pilot.pause(0.2)
                assert app.screen.query_one("#path").value == str(out)  # retyped nothing
                await pilot.click("#export")
                await until(pilot, lambda: any("it replaced what was there" in str(n.message)
                                               for n in app._notifications))
                assert tasks_in(out) > first and app.state == "running"
                await pilot.press("q")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                await until(pilot, lambda: not app.is_running, timeout=40)

    run(go())


def test_broken_user_theme_is_reported_not_fatal(tmp_path, isolated_env, monkeypatch):
    deterministic_run(tmp_path / "run")
    themes = tmp_path / "user-themes"
    themes.mkdir()
    (themes / "bad.toml").write_text('name = "bad"\nprimary = "not-a-colour"\n')
    (themes / "mine.toml").write_text('name = "mine"\nprimary = "#123456"\n')
    import selfinstruct_tui.tui.themes as themes_module

    monkeypatch.setattr(themes_module, "user_themes_dir", lambda: themes)

    async def go():
        app = create_app(tmp_path / "run", refresh=0.1, theme="mine")
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.2)
            assert app.theme == "mine"
            assert {"ember", "paper", "high-contrast"} <= set(app.available_themes)
            notes = [n.message for n in app._notifications]
            assert any("bad.toml" in n and "not a colour" in n for n in notes)

    run(go())


def test_detach_key_stops_here_and_asks_for_handover(tmp_path, isolated_env):
    from selfinstruct_tui.engine.control import DETACH_EXIT

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=500)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: count_machine(tmp_path / "run") >= 3)
                actions = {b.binding.action for b in app.screen.active_bindings.values()}
                assert {"detach", "quit"} <= actions and "leave" not in actions
                await pilot.press("d")
                assert isinstance(app.screen, ConfirmScreen)
                question = str(app.screen.query_one(".question").render())
                assert "resumes the run" in question and "paused" not in question
                assert command_line("attach", str(tmp_path / "run")) in question.splitlines()  # no quote touches it
                await pilot.press("y")
                await until(pilot, lambda: not app.is_running, timeout=40)
            return app.return_value, engine.finished

    import asyncio

    code, finished = asyncio.run(go())
    assert code == DETACH_EXIT  # the CLI then resumes the run in a detached process
    assert finished is not None and finished.reason == "stopped"


def test_a_question_about_the_run_is_withdrawn_when_the_run_changes_under_it(tmp_path,
                                                                          isolated_env):
    """A question written for the run as it was stayed open when it changed: the quit question
    read "The run is still going" over a finished run, and a detach answered yes after the run
    ended handed the ended run to a background process (which would start it again, sending
    requests nobody asked for). Stop asked while paused offered "Keep running". Now stop, quit
    and detach questions are withdrawn, and said so, when the run's phase changes (going,
    paused, ended); stop while paused says "Stay paused"."""
    from selfinstruct_tui.engine.control import DETACH_EXIT

    def said(app) -> list[str]:
        return [n.message for n in app._notifications]

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            # (a target of 10 could be reached before the pause below on a busy machine)
            engine = make_engine(tmp_path / "run", server.base_url, target=60)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                server.configure(latency=0.6)
                await until(pilot, lambda: app.state == "running")  # time for the questions below
                await pilot.press("s")  # asked while going, then the run pauses under it
                assert isinstance(app.screen, ConfirmScreen)
                assert app.screen.no == "Keep running"
                engine.pause()  # (as errors, or an attached UI, pause it)
                await until(pilot, lambda: "Question closed unanswered: the run is paused now; "
                            "press s again to be asked anew." in said(app))
                assert not isinstance(app.screen, ConfirmScreen)
                assert app.state == "paused"
                await pilot.press("s")
                assert isinstance(app.screen, ConfirmScreen)
                assert app.screen.no == "Stay paused"
                assert "Stop the paused run?" in app.screen.question
                await pilot.press("n")
                await pilot.press("d")
                assert isinstance(app.screen, ConfirmScreen)
                engine.resume()  # the detach question was written for a paused run
                await until(pilot, lambda: "Question closed unanswered: the run is running now; "
                            "press d again to be asked anew." in said(app))
                assert not isinstance(app.screen, ConfirmScreen)
                await pilot.press("q")  # the quit question, open until the run ends
                assert isinstance(app.screen, ConfirmScreen)
                assert "still going" in app.screen.question
                server.configure(latency=0.05)
                await until(pilot, lambda: engine.finished is not None, timeout=40)
                await until(pilot, lambda: "Question closed unanswered: the run is finished now."
                            in said(app))
                assert not isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")  # answers nothing now
                await pilot.pause(0.3)
                assert app.is_running
            return app.return_value, engine.finished

    import asyncio

    code, finished = asyncio.run(go())
    assert code != DETACH_EXIT
    assert finished is not None and finished.reason == "target"


def test_status_line_counts_retries_and_the_rejections_pane_names_every_reason(tmp_path,
                                                                              isolated_env):
    from selfinstruct_tui.tui.widgets.panes import RejectionsPane

    limited = {"status": 429, "headers": {"Retry-After": "0"},
               "body": {"error": {"message": "Rate limit reached", "type": "x"}}}
    script = {"*": [limited, limited],
              "generate": [" Suggest a weekend itinerary for a rainy coastal village.\n"
                           "10. I'm sorry, but I can't help with that."],
              "classify": [" No"],
              "instances": ["Input: <Picture Attached>\nOutput: A harbour.\nExample 2\n"
                            "Input: (none)\nOutput: Visit the lighthouse."]}

    async def go():
        with FakeOpenAI(script=script, repeat_last=False) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=1, concurrency=1,
                                 prompts_per_round=1)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            # wide enough for the retry breakdown (on a narrower one it gives way first)
            async with app.run_test(size=(160, 40)) as pilot:
                await until(pilot, lambda: app.state == "finished")
                await pilot.pause(0.3)
                status = str(app.query_one(StatusLine).render())
                # at 160 columns the breakdown by cause may give way (to the run's name and the
                # model); the whole line has it
                assert "retries 2" in status and " run │ fake-model" in status
                assert "retries 2 (rate limit 2)" in app.view.status.line().plain
                pane = app.query_one(RejectionsPane)
                counts = app.view.rejection_counts
                assert counts["refusal"] == 1 and counts["unusable_input"] == 1
                log = "\n".join(line.text for line in pane.query_one("#rejections").lines)
                assert "instance: unusable input" in log and "refusal" in log
            # an attached UI on the finished run shows the same counts from the store
            attached = create_app(tmp_path / "run", attach=True, refresh=0.1)
            async with attached.run_test(size=(120, 40)) as pilot:
                await pilot.pause(0.3)
                assert "retries 2" in str(attached.query_one(StatusLine).render())
                assert "retries 2 (rate limit 2)" in attached.view.status.line().plain
                assert attached.view.rejection_counts["refusal"] == 1

    run(go())


def screen_contents(app) -> dict:
    """What the panes show, minus clocks: pool rows in display order, rejection and round lines,
    the prompts pane, the charts' data and the status counters."""
    from textual.widgets import DataTable, RichLog

    table = app.query_one(TaskTable)
    rounds = app.query_one("#rounds", DataTable)
    view = app.view
    return {
        "pool": [table.rows[i] for i in table.displayed_ids()],
        "rejections": [line.text for line in app.query_one("#rejections", RichLog).lines],
        "reasons": str(app.query_one("#reasons").render()),
        "rounds": [tuple(rounds.get_row(key)) for key in rounds.rows],
        "latest": [line.text for line in app.query_one("#latest", RichLog).lines],
        "charts": (view.pool_sizes, view.score_hist.counts, view.length_hist.counts,
                   list(view.round_points)),
        "status": (view.status.accepted, view.status.target, view.status.tokens,
                   round(view.status.cost, 9), view.status.errors,
                   dict(view.status.retry_causes), view.state),
    }


def test_attached_and_in_process_screens_show_the_same_run(tmp_path, isolated_env):
    """The in-process UI fed by the engine's events and an attached UI fed by the store show
    the same task pool, rejections and round statistics, line for line."""
    limited = {"status": 429, "headers": {"Retry-After": "0"},
               "body": {"error": {"message": "Rate limit reached", "type": "x"}}}

    async def go():
        with FakeOpenAI(latency=0.01, script={"*": [limited, limited]},
                        repeat_last=False) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=60,
                                 price_input_per_1k=0.001, price_output_per_1k=0.002)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(160, 50)) as pilot:
                await until(pilot, lambda: app.state == "finished", timeout=60)
                await pilot.pause(0.5)
                live = screen_contents(app)
        attached = create_app(tmp_path / "run", attach=True, refresh=0.1)
        async with attached.run_test(size=(160, 50)) as pilot:
            await pilot.pause(0.5)
            later = screen_contents(attached)
        assert len(live["pool"]) >= 60 + 139 and live["rejections"] and live["rounds"]
        assert live["status"][5] == {"rate_limit": 2}
        for part in live:
            assert later[part] == live[part], part

    run(go())


def test_ctrl_q_asks_while_the_run_is_going_as_q_does(tmp_path, isolated_env):
    """ctrl+q (Textual's own quit key) stopped a running run at once, where q asks first; now
    both ask, also with the filter box focused (ctrl+q works in text boxes; q types a q), and
    a second ctrl+q does not stack a second question. The key table lists ctrl+q with q."""
    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=400)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: count_machine(tmp_path / "run") >= 3)
                await pilot.press("ctrl+q")
                await pilot.pause(0.2)
                assert isinstance(app.screen, ConfirmScreen)
                assert "The run is still going. Stop it and quit?" in str(
                    app.screen.query_one(".question").render())
                await pilot.press("ctrl+q")  # again: the question is still the one open
                await pilot.pause(0.2)
                assert len(app.screen_stack) == 2
                await pilot.press("n")
                await pilot.pause(0.3)
                assert app.is_running and app.state == "running" and engine.finished is None
                await pilot.press("slash", "ctrl+q")  # from the filter box
                await pilot.pause(0.2)
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("n")
                await pilot.pause(0.3)
                assert app.is_running and engine.finished is None
                await pilot.press("escape")  # the filter box closes; the pool has the focus
                await pilot.pause(0.1)
                quit_keys = {key for key, b in app.active_bindings.items()
                             if b.binding.action == "quit"}
                assert quit_keys == {"q", "ctrl+q"}  # one action: the help lists them together
                await pilot.press("ctrl+q")
                await pilot.pause(0.2)
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                await until(pilot, lambda: not app.is_running, timeout=40)
        store = RunStore(tmp_path / "run", readonly=True)
        assert store.get_meta("state")["state"] == "stopped"  # stopped cleanly, resumable
        store.close()

    run(go())


def test_a_pause_by_errors_keeps_its_reason_on_screen(tmp_path, isolated_env):
    """The reason of a pause by errors was only in a notification; afterwards the status line
    read "paused (errors)", and a UI attached later never saw why. Now a line under the status
    line keeps the reason and what to do while the run is paused, for the in-process UI and
    for a UI that attaches later (from what the engine recorded when it paused)."""
    from selfinstruct_tui.engine.control import RunState

    def thinking_engine(run_dir: Path, base_url: str):
        return make_engine(run_dir, base_url, target=50, api="chat", concurrency=2,
                           max_fruitless_requests=6)

    async def go():
        with FakeOpenAI(thinking=True) as server:
            app = create_app(tmp_path / "run", engine=thinking_engine(tmp_path / "run",
                                                                      server.base_url),
                             refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: app.state == "paused")
                await pilot.pause(0.3)
                app.clear_notifications()  # the notification goes; the reason stays
                await pilot.pause(0.3)
                assert "--extra-body" in on_screen(app)
                note = app.query_one("#run-note")
                shown = " ".join(str(note.render()).split())
                assert note.display and shown.startswith("Paused: ")
                assert "--extra-body" in shown and "Press s to stop" in shown
                assert "paused (errors)" in str(app.query_one(StatusLine).render())
                await pilot.press("s", "y")
                await until(pilot, lambda: app.state in ("stopped", "finished"), timeout=40)
                await pilot.pause(0.3)
                assert not note.display  # stopped by the user: nothing to explain

            # A UI attached to a run that paused before it opened
            engine = thinking_engine(tmp_path / "other", server.base_url)
            thread = engine.start_thread()
            try:
                await asyncio.to_thread(
                    lambda: until_sync(lambda: engine.state == RunState.PAUSED))
                attached = create_app(tmp_path / "other", attach=True, refresh=0.1)
                async with attached.run_test(size=(120, 40)) as pilot:
                    await pilot.pause(0.5)
                    attached.clear_notifications()
                    await pilot.pause(0.2)
                    assert "--extra-body" in on_screen(attached)
                    note = attached.query_one("#run-note")
                    shown = " ".join(str(note.render()).split())
                    assert note.display and shown.startswith("Paused: ")
                    assert "--extra-body" in shown and "Press s to stop" in shown
                    assert "paused (errors)" in str(attached.query_one(StatusLine).render())
            finally:
                engine.stop()
                thread.join(60)
                engine.store.close()

    run(go())


def until_sync(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def on_screen(app) -> str:
    """The text of the static widgets the screen shows (the status line, the panes' lines,
    the run's note; not the notifications), whitespace made single spaces."""
    from textual.widgets import Static

    return " ".join(" ".join(str(w.render()).split()) for w in app.screen.query(Static)
                    if w.display)


def test_an_unknown_or_broken_theme_is_an_error_before_anything_starts(run_cli, tmp_path,
                                                                        isolated_env):
    """An unknown theme (--theme, or the config file's `theme`) was a toast in a UI that then
    used the default; a theme file that could not be loaded, the same. Each is now an error
    before anything is created (exit 2), naming the flag or the file and line, the theme
    names there are, or the broken file and what is wrong with it."""
    config_home = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(config_home)}
    run_dir = tmp_path / "new-run"
    proc = run_cli("run", "--theme", "nope", "--base-url", "http://127.0.0.1:9/v1", "--model",
                   "m", "--run-dir", str(run_dir), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "--theme nope: no such theme. Available: ember, high-contrast, paper; and " \
        "Textual's: ansi-dark" in " ".join(proc.stderr.split())
    assert all(name in proc.stderr for name in ("ember", "paper", "high-contrast",
                                                "textual-dark"))
    assert not run_dir.exists()  # nothing created
    deterministic_run(tmp_path / "run")
    config = Path(isolated_env["SELFINSTRUCT_CONFIG"])
    config.write_text('refresh = 0.5\ntheme = "nope"\n')
    proc = run_cli("attach", str(tmp_path / "run"), env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"{config}:2: theme = 'nope': no such theme. Available: ember" in \
        " ".join(proc.stderr.split())
    # a broken user theme file asked for by name: the file and what is wrong
    themes = config_home / "selfinstruct-tui" / "themes"
    themes.mkdir(parents=True)
    (themes / "mine.toml").write_text('name = "mine"\nprimary = "not-a-colour"\n')
    config.write_text('theme = "mine"\n')
    proc = run_cli("attach", str(tmp_path / "run"), env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"{config}:1: theme = 'mine': the theme file is broken: {themes / 'mine.toml'}: " \
           "primary = 'not-a-colour' is not a colour" in " ".join(proc.stderr.split())


@pytest.mark.parametrize("mode", ["--headless", "--detach"])
def test_a_headless_or_detached_run_refuses_an_unknown_theme_as_the_tui_does(run_cli, tmp_path,
                                                                            isolated_env, mode):
    """`run --headless --theme NAME` took any NAME and ran (as did --detach, whose background
    process is headless), where the same command without --headless exits 2. Both are now
    refused before anything is created or sent; a real theme still runs, and the config
    file's theme (the UI's business: `attach` checks it) does not stop a headless run."""
    run_dir = tmp_path / "new-run"
    with FakeOpenAI() as server:
        flags = ["--base-url", server.base_url, "--model", "m", "--target", "3"]
        proc = run_cli("run", mode, "--theme", "nope", *flags, "--run-dir", str(run_dir))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--theme nope: no such theme. Available: ember, high-contrast, paper; and " \
            "Textual's: ansi-dark" in " ".join(proc.stderr.split())
        assert not run_dir.exists() and server.requests == 0  # nothing created, nothing sent
        if mode == "--detach":
            return
        Path(isolated_env["SELFINSTRUCT_CONFIG"]).write_text('theme = "nope"\n')
        run_cli("run", mode, "--theme", "paper", *flags, "--run-dir", str(run_dir), check=True)
        run_cli("run", mode, *flags, "--run-dir", str(tmp_path / "other"), check=True)


def footer_line(app) -> str:
    """The main screen's last line: the footer as the terminal shows it."""
    strips = app.screen_stack[0]._compositor.render_strips()
    return "".join(segment.text for segment in strips[-1])


def key_states(app) -> dict[str, bool]:
    """The footer label -> whether it can act (False: shown disabled) of every key the main
    screen offers now; hidden keys are absent."""
    return {b.binding.description: b.enabled
            for b in app.screen_stack[0].active_bindings.values() if b.binding.show}


def test_pause_stop_and_detach_are_offered_only_while_they_can_act(tmp_path, isolated_env):
    """A stopped run's footer still offered p (pause) and s (stop), which only said "the run
    is not running"; at 60x18 it showed them, and the task pool's keys, but not q. Now, at
    60x18: running and paused offer p, s and d (p read "Pause/Resume" either way: now "Pause"
    while it runs, "Resume" while it is paused); while the run stops they are shown disabled
    (and do nothing); once it has stopped they are gone, from the footer and the palette.
    Quit is in the footer throughout."""
    from textual.widgets._footer import FooterKey

    from selfinstruct_tui.tui.keys import RunCommands

    async def palette(app) -> str:
        """The command palette's key commands, their titles one a line."""
        return "\n".join([str(hit.text) async for hit in RunCommands(app.screen).discover()])

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=2000)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=(60, 18)) as pilot:
                for press, state, p in (("", "running", "Pause"), ("p", "paused", "Resume"),
                                        ("p", "running", "Pause")):
                    if press:
                        await pilot.press(press)
                    await until(pilot, lambda wanted=state: app.state == wanted)
                    keys = key_states(app)
                    assert keys[p] and keys["Stop"] and keys["Detach"], keys
                    assert ({"Pause", "Resume"} - {p}).isdisjoint(keys), keys  # p says what it does
                    # (the footer is redrawn after a state change: a moment later)
                    await until(pilot, lambda p=p: all(key in footer_line(app) for key in (
                        f"p {p} ", "s Stop", "q Quit")), timeout=10)
                    titles = await palette(app)
                    assert ("Pause the run" in titles, "Resume the paused run" in titles) == (
                        p == "Pause", p == "Resume"), titles
                server.configure(latency=4)  # the stop waits for the requests in flight
                await pilot.pause(0.6)
                await pilot.press("s", "y")
                await until(pilot, lambda: app.state == "stopping")
                keys = key_states(app)
                assert not keys["Pause"] and not keys["Stop"] and not keys["Detach"]
                assert "Resume" not in keys
                assert keys["Quit"]

                def dimmed() -> set[str]:
                    return {k.description for k in app.query(FooterKey) if k.display and
                            k.has_class("-disabled")}

                await until(pilot, lambda: dimmed() == {"Pause", "Stop"}, timeout=10)
                assert all(key in footer_line(app) for key in ("p Pause", "q Quit"))
                assert "Pause" not in await palette(app) and "Stop" not in await palette(app)
                await pilot.press("p")  # disabled: no pause, no note
                await pilot.press("d")
                await pilot.pause(0.2)
                assert app.state in ("stopping", "stopped") and len(app.screen_stack) == 1
                assert not any("not running" in n.message for n in app._notifications)
                await until(pilot, lambda: app.state == "stopped", timeout=20)
                keys = key_states(app)
                assert not {"Pause", "Resume", "Stop", "Detach"} & set(keys), keys
                await until(pilot, lambda: "q Quit" in footer_line(app) and
                            "Pause" not in footer_line(app), timeout=10)
                assert "Stop" not in footer_line(app)
                titles = await palette(app)
                assert "Pause" not in titles and "Detach" not in titles and "Quit" in titles
                await pilot.press("p")
                await pilot.pause(0.2)
                assert app.state == "stopped"
                assert not any("not running" in n.message for n in app._notifications)

    run(go())


@pytest.mark.parametrize("size", [(120, 40), (60, 18)], ids=["120x40", "60x18"])
def test_the_footer_in_the_filter_box_offers_ctrl_q_and_no_key_that_types(tmp_path,
                                                                         isolated_env, size):
    """With the task pool's filter box focused, the footer showed "/ Filter", where "/" typed
    a slash (Textual reads no character from the key name "slash"), and no quit key at all:
    q types there, and ctrl+q, which quits from the box, was never in the footer. Now it
    shows "^q Quit" there (ctrl+q asks, as q does), no key that types, and "q Quit" again,
    in its place, once the box is closed."""
    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(tmp_path / "run", server.base_url, target=2000)
            app = create_app(tmp_path / "run", engine=engine, refresh=0.1)
            async with app.run_test(size=size) as pilot:
                await until(pilot, lambda: app.state == "running")
                await until(pilot, lambda: "q Quit" in footer_line(app), timeout=10)
                before = footer_line(app)
                await pilot.press("slash", "q", "slash")
                assert app.filter_box.value == "q/" and app.state == "running"
                await until(pilot, lambda: "^q Quit" in footer_line(app), timeout=10)
                line = footer_line(app)
                assert "Filter" not in line and "Pause" not in line and "Help" not in line, line
                await pilot.press("ctrl+q")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("n")
                await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
                assert app.state == "running"
                await pilot.press("escape")
                await until(pilot, lambda: footer_line(app) == before, timeout=10)

    run(go())
