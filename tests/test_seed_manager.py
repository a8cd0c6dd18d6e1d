"""The seed manager (key e), its form, promote/demote in the inspector, the pending seed set and
`selfinstruct seeds export`: Pilot against real run directories (offline control when no engine
runs, a running engine on the fake server, an attached UI), the CLI in a subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path

from textual.widgets import Checkbox, DataTable, TextArea

from fake_openai import FakeOpenAI
from selfinstruct_tui.engine.control import current_seeds
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.seeds import (
    bundled_seeds_path,
    load_seeds,
    seed_fingerprint,
    seed_to_record,
    write_seeds,
)
from selfinstruct_tui.engine.store import RunStore
from selfinstruct_tui.tui.app import create_app
from selfinstruct_tui.tui.screens.dialogs import ConfirmScreen
from selfinstruct_tui.tui.screens.inspector import InspectorScreen
from selfinstruct_tui.tui.screens.seed_editor import SeedEditorScreen
from selfinstruct_tui.tui.screens.seed_manager import SeedFormScreen, SeedManagerScreen
from selfinstruct_tui.tui.widgets.panes import StatusLine
from selfinstruct_tui.tui.widgets.task_table import TaskTable
from tui_helpers import (
    assert_next_rounds_use_only,
    deterministic_run,
    make_engine,
    new_run,
    read_run,
    run,
    until,
)

NEW_INSTRUCTION = "List three birds that cannot fly and say where each one lives."
NEW_OUTPUT = "1. Ostrich: Africa\n2. Emu: Australia\n3. Kiwi: New Zealand"


def active_seeds(run_dir):
    return read_run(run_dir, lambda store: store.tasks(status="active", origin="seed"))


def task_row(run_dir, task_id):
    return read_run(run_dir, lambda store: store.task(task_id))


async def open_manager(pilot, app) -> SeedManagerScreen:
    await pilot.press("e")
    await until(pilot, lambda: isinstance(app.screen, SeedManagerScreen))
    return app.screen


async def fill_new_seed(pilot, app) -> SeedFormScreen:
    form = app.screen
    assert isinstance(form, SeedFormScreen)
    form.query_one("#f-instruction", TextArea).text = NEW_INSTRUCTION
    form.query(".f-output").first(TextArea).text = NEW_OUTPUT
    await pilot.pause()
    return form


async def new_seed_form(pilot, app) -> SeedFormScreen:
    """`a` in the open manager: the new seed's form."""
    await pilot.press("a")
    await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
    return app.screen


async def add_new_seed(pilot, app, manager: SeedManagerScreen) -> None:
    """`a` in the manager, the form filled with NEW_INSTRUCTION / NEW_OUTPUT, saved."""
    await new_seed_form(pilot, app)
    await fill_new_seed(pilot, app)
    await pilot.press("ctrl+s")
    await until(pilot, lambda: app.screen is manager)


def run_marked_running(run_dir: Path) -> Path:
    """A run whose store says an engine (this process) drives it: a UI attaches to it and its
    seed edits stay pending, as with a detached engine."""
    deterministic_run(run_dir)
    store = RunStore(run_dir)
    store.set_meta("state", {"state": "running", "pid": os.getpid(), "ts": 0, "reason": ""})
    store.close()
    return run_dir


def test_manager_adds_edits_duplicates_and_deletes_seeds(tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            table = manager.query_one("#seed-table", DataTable)
            assert table.row_count == 139
            assert "the run's active seeds" in str(manager.query_one("#seeds-title").render())
            # add
            await add_new_seed(pilot, app, manager)
            seeds = active_seeds(run_dir)
            assert len(seeds) == 140
            added = seeds[-1]
            assert (added.instruction, added.seed_origin, added.seed_id) == (
                NEW_INSTRUCTION, "added", "added_1")
            assert added.instances[0].output == NEW_OUTPUT and added.instances[0].input == ""
            assert table.row_count == 140
            # edit the first seed: new instruction, classification on; its origin stays "file"
            table.move_cursor(row=0)
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
            form = app.screen
            assert form.query_one("#f-instruction", TextArea).soft_wrap
            form.query_one("#f-instruction", TextArea).text = "Give three tips for new cyclists."
            await pilot.press("ctrl+t")
            assert form.query_one("#f-cls", Checkbox).value
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.screen is manager)
            first = active_seeds(run_dir)[0]
            assert (first.seed_id, first.instruction, first.is_classification,
                    first.seed_origin) == ("seed_task_1", "Give three tips for new cyclists.",
                                           True, "file")
            # duplicate the first seed: the form opens on a copy; saving puts it right after
            table.move_cursor(row=0)
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
            assert "Duplicate of seed_task_1" in str(app.screen.query_one(".question").render())
            await pilot.press("ctrl+s")  # saved unchanged it is the same text: asked first
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "the same instruction as seed seed_task_1" in str(
                app.screen.query_one(".question").render())
            await pilot.press("y")
            await until(pilot, lambda: app.screen is manager)
            seeds = active_seeds(run_dir)
            assert len(seeds) == 141
            assert seeds[1].instruction == seeds[0].instruction
            assert (seeds[1].seed_id, seeds[1].seed_origin) == ("added_2", "added")
            # delete the duplicate, after a confirmation
            table.move_cursor(row=1)
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: app.screen is manager)
            seeds = active_seeds(run_dir)
            assert len(seeds) == 140 and "added_2" not in {s.seed_id for s in seeds}
            # the filter narrows the table like the pool's
            await pilot.press("slash")
            await pilot.press(*"birds that")
            assert table.row_count == 1
            await pilot.press("enter")
            assert table.has_focus
            await pilot.press("escape")
            assert not isinstance(app.screen, SeedManagerScreen)
            # the pool pane shows the new seed set
            pool = app.query_one(TaskTable)
            await until(pilot, lambda: sum(r.origin == "seed" for r in pool.rows.values())
                        == 140)
        assert json.loads((run_dir / "seeds.jsonl").read_text().splitlines()[-1])[
            "instruction"] == NEW_INSTRUCTION

    run(go())


def test_form_validation_names_the_field_and_keeps_the_text(tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            form = await new_seed_form(pilot, app)
            await pilot.press("ctrl+s")  # everything empty
            errors = str(form.query_one("#form-errors").render())
            assert "instruction is empty" in errors and "instance 1: output is empty" in errors
            form.query_one("#f-cls", Checkbox).focus()
            await pilot.press("e")  # the app's key does not open a manager over the form
            assert app.screen is form
            await fill_new_seed(pilot, app)
            await pilot.press("ctrl+n")  # a second instance, left without an output
            await pilot.pause()
            assert len(form.query(".f-output")) == 2
            form.query(".f-input").last(TextArea).text = "a typed input that must survive"
            await pilot.press("ctrl+s")
            assert app.screen is form  # refused, still open
            errors = str(form.query_one("#form-errors").render())
            assert "instance 2: output is empty" in errors
            assert "instruction" not in errors
            assert form.query_one("#f-instruction", TextArea).text == NEW_INSTRUCTION
            assert form.query(".f-input").last(TextArea).text == "a typed input that must survive"
            assert len(active_seeds(run_dir)) == 139  # nothing sent
            # remove the focused (second) instance; the first is kept, then it saves
            form.query(".f-input").last(TextArea).focus()
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert len(form.query(".f-output")) == 1
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.screen is manager)
            seeds = active_seeds(run_dir)
            assert len(seeds) == 140 and len(seeds[-1].instances) == 1

    run(go())


def test_raw_editor_is_reachable_from_the_manager_and_keeps_origins(tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            await add_new_seed(pilot, app, manager)
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, SeedEditorScreen))
            area = app.screen.query_one(TextArea)
            lines = area.text.splitlines()
            assert len(lines) == 140
            brand_new = {"id": "bulk_1", "instruction": "Name the capital of the country.",
                         "instances": [{"input": "France", "output": "Paris"}]}
            area.text = "\n".join(lines[1:] + [json.dumps(brand_new)])  # drop one, add one
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.screen is manager)
            assert manager.query_one("#seed-table", DataTable).row_count == 140
        seeds = {s.seed_id: s for s in active_seeds(run_dir)}
        assert "seed_task_1" not in seeds
        assert seeds["added_1"].seed_origin == "added"  # kept through the raw edit
        assert seeds["seed_task_2"].seed_origin == "file"
        assert seeds["bulk_1"].seed_origin == "added"

    run(go())


async def inspect_newest(pilot, app, origin: str) -> int:
    """Open the inspector on the newest task of `origin` in the pool pane; returns its id."""
    pool = app.query_one(TaskTable)
    pool.focus()
    while pool.origin != origin:
        await pilot.press("o")
    await pilot.press("home")
    if pool.follow:  # hold the cursor on this task while new ones arrive
        await pilot.press("f")
    task_id = pool.current_id
    assert task_id is not None
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
    return task_id


def test_promote_and_demote_in_the_inspector(tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            pool = app.query_one(TaskTable)
            machine_id = await inspect_newest(pilot, app, "machine")
            original = task_row(run_dir, machine_id)
            await pilot.press("plus")
            await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))
            # applied (no engine runs): the task left the machine pool and is a seed now
            assert task_row(run_dir, machine_id).status == "promoted"
            seeds = active_seeds(run_dir)
            promoted = seeds[-1]
            assert (promoted.seed_origin, promoted.source_task, promoted.instruction) == (
                "promoted", machine_id, original.instruction)
            assert promoted.instances == original.instances
            assert sum(s.instruction == original.instruction for s in seeds) == 1
            store = RunStore(run_dir, readonly=True)
            assert store.count_tasks("machine") == 39
            assert original.instruction not in {t.instruction for t in store.tasks(
                origin="machine")}  # never in both
            store.close()
            await until(pilot, lambda: machine_id not in pool.rows
                        and promoted.id in pool.rows)
            status = app.query_one(StatusLine)
            await until(pilot, lambda: "pool 39/40" in str(status.render()))
            # the seed manager shows where it came from
            manager = await open_manager(pilot, app)
            table = manager.query_one("#seed-table", DataTable)
            assert table.get_row_at(table.row_count - 1)[-1] == f"promoted #{machine_id}"
            await pilot.press("escape")
            # a second + on a seed is refused with a notice; - demotes it
            seed_id = await inspect_newest(pilot, app, "seed")
            assert seed_id == promoted.id
            text = str(app.screen.query_one("#inspector-text").render())
            assert f"from machine task #{machine_id}" in text
            await pilot.press("minus")
            await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))
            back = task_row(run_dir, machine_id)
            assert back.status == "active" and back.origin == "machine"
            assert back.instruction == original.instruction
            assert len(active_seeds(run_dir)) == 139
            assert task_row(run_dir, seed_id).status == "removed"
            await until(pilot, lambda: machine_id in pool.rows and seed_id not in pool.rows)
            await until(pilot, lambda: "pool 40/40" in str(status.render()))
            # demoting a seed from the file is refused, nothing changes
            await inspect_newest(pilot, app, "seed")
            await pilot.press("minus")
            await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))
            assert len(active_seeds(run_dir)) == 139

    run(go())


def test_attached_edits_stay_pending_build_on_each_other_and_apply_at_start(tmp_path,
                                                                           isolated_env):
    """The bug this fixes: a second edit before the next round used to start from the active
    seeds and lose the first. Through RemoteControl (an attached UI, engine elsewhere) the set
    is recorded as pending; the second edit starts from it; an engine applies it on start-up."""
    run_dir = run_marked_running(tmp_path / "run")

    async def go():
        app = create_app(run_dir, attach=True, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            assert app.engine_active
            manager = await open_manager(pilot, app)
            await add_new_seed(pilot, app, manager)
            await pilot.press("escape")
            # a second edit in a new manager: it starts from the pending set
            manager = await open_manager(pilot, app)
            assert "pending: applies at the next round" in str(
                manager.query_one("#seeds-title").render())
            table = manager.query_one("#seed-table", DataTable)
            assert table.row_count == 140
            table.move_cursor(row=0)
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: app.screen is manager)

    run(go())
    reader = RunStore(run_dir, readonly=True)
    pending, is_pending = current_seeds(reader)
    assert is_pending and len(pending) == 139
    assert pending[-1].instruction == NEW_INSTRUCTION and pending[0].id == "seed_task_2"
    assert len(reader.tasks(origin="seed")) == 139  # not applied: no engine ran
    reader.close()
    # An engine starting on the run (as after a crash) applies the pending set first.
    with FakeOpenAI() as server:
        store = RunStore(run_dir)
        config = store.config()
        assert config is not None
        Engine(store, config, base_url=server.base_url).run()
        store.close()
    seeds = active_seeds(run_dir)
    assert [s.seed_id for s in seeds][0] == "seed_task_2" and len(seeds) == 139
    assert seeds[-1].instruction == NEW_INSTRUCTION and seeds[-1].seed_origin == "added"
    reader = RunStore(run_dir, readonly=True)
    assert reader.pending_seeds() is None
    reader.close()


def test_an_edit_from_an_attached_ui_survives_the_in_process_uis_next_edit(tmp_path,
                                                                           isolated_env):
    """The in-process UI kept offering the set it had sent last, whatever the store said once
    another UI had sent one since: its next edit removed the other UI's seed (and gave its
    own the same id, added_1)."""
    run_dir = tmp_path / "run"
    other = "Name the capital city of each country in the list below."

    def texts() -> list[str]:
        reader = RunStore(run_dir, readonly=True)
        try:
            return [seed.instruction for seed in current_seeds(reader)[0]]
        finally:
            reader.close()

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(run_dir, server.base_url, target=5000)
            app = create_app(run_dir, engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.press("p")  # paused: the edits stay pending
                await until(pilot, lambda: app.state == "paused")
                manager = await open_manager(pilot, app)
                await add_new_seed(pilot, app, manager)
                await pilot.press("escape")
                await until(pilot, lambda: NEW_INSTRUCTION in texts())
                attached = create_app(run_dir, attach=True, refresh=0.1)
                async with attached.run_test(size=(120, 40)) as other_pilot:
                    theirs = await open_manager(other_pilot, attached)
                    await other_pilot.press("a")
                    await until(other_pilot,
                                lambda: isinstance(attached.screen, SeedFormScreen))
                    attached.screen.query_one("#f-instruction", TextArea).text = other
                    attached.screen.query(".f-output").first(TextArea).text = "Paris"
                    await other_pilot.pause()
                    await other_pilot.press("ctrl+s")
                    await until(other_pilot, lambda: attached.screen is theirs)
                await until(pilot, lambda: other in texts(), timeout=30)
                manager = await open_manager(pilot, app)
                assert other in [seed.instruction for seed in manager.seeds]
                await pilot.press("escape")
                engine.stop()
                await until(pilot, lambda: app.state in ("stopped", "finished"), timeout=40)

    run(go())
    assert NEW_INSTRUCTION in texts() and other in texts()


def test_changes_apply_at_the_next_round_of_a_running_engine(tmp_path, isolated_env):
    run_dir = tmp_path / "run"

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(run_dir, server.base_url, target=5000)
            app = create_app(run_dir, engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                pool = app.query_one(TaskTable)
                await until(pilot, lambda: sum(r.origin == "machine"
                                               for r in pool.rows.values()) >= 3)
                machine_id = await inspect_newest(pilot, app, "machine")
                await pilot.press("plus")
                await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))
                manager = await open_manager(pilot, app)
                # the manager shows the promotion at once (pending, or applied already)
                assert manager.seeds[-1].source_task == machine_id
                assert manager.seeds[-1].origin == "promoted"
                await add_new_seed(pilot, app, manager)
                await pilot.press("escape")
                seeds = await assert_next_rounds_use_only(pilot, run_dir, 141)
                assert NEW_INSTRUCTION in seeds
                assert task_row(run_dir, machine_id).status == "promoted"
                assert machine_id not in engine.pool
                store = RunStore(run_dir, readonly=True)
                assert store.pending_seeds() is None
                promoted = [t for t in store.tasks(origin="seed") if t.source_task]
                assert [t.source_task for t in promoted] == [machine_id]
                store.close()
                engine.stop()
                await until(pilot, lambda: app.state in ("stopped", "finished"), timeout=40)

    run(go())


def test_seeds_export_writes_the_current_set_and_round_trips(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    out = tmp_path / "out" / "seeds.jsonl"
    out.parent.mkdir()  # a folder the user made: -o never makes one
    proc = run_cli("seeds", "export", str(run_dir), "-o", str(out), check=True)
    assert "wrote 139 seeds" in proc.stdout
    exported = load_seeds(out)
    store = RunStore(run_dir, readonly=True)
    run_seeds = [t.to_seed() for t in store.tasks(origin="seed")]
    store.close()
    assert seed_fingerprint(exported) == seed_fingerprint(run_seeds)
    assert [s.id for s in exported] == [s.id for s in run_seeds]
    assert set(json.loads(out.read_text().splitlines()[0])) == {
        "id", "name", "instruction", "instances", "is_classification"}
    assert [p.name for p in out.parent.iterdir()] == ["seeds.jsonl"]  # no temp file left
    assert "replaced" not in proc.stderr
    again = run_cli("seeds", "export", str(run_dir), "-o", str(out), check=True)
    assert f"note: replaced what was there: {out}" in again.stderr  # as `export` says it
    # stdout (no -o, or -o -) and a pending set wins over the active seeds
    store = RunStore(run_dir)
    pending = [dict(json.loads(line), origin="added", source_task=None)
               for line in out.read_text().splitlines()[:5]]
    store.set_pending_seeds(pending)
    store.close()
    for args in ((), ("-o", "-")):
        proc = run_cli("seeds", "export", str(run_dir), *args, check=True)
        lines = proc.stdout.splitlines()
        assert len(lines) == 5 and json.loads(lines[0])["id"] == "seed_task_1"
        assert "pending" in proc.stderr
    # not a run directory: a clear error, non-zero exit, nothing written
    proc = run_cli("seeds", "export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.jsonl"))
    assert proc.returncode == 2
    assert "not a run directory" in proc.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_origins_do_not_change_the_resume_fingerprint_and_old_runs_read_as_file(tmp_path,
                                                                               isolated_env):
    """A seed file exported from a run with promoted and added seeds is that run's seed set for
    `--seeds` on resume (content only); a run made before origins were recorded reads them as
    "file" and gains the columns when opened for writing."""
    import sqlite3

    from selfinstruct_tui.engine.control import OfflineControl, ReplaceSeeds
    from selfinstruct_tui.engine.exports import export_seeds
    from selfinstruct_tui.engine.seeds import SeedTask
    from selfinstruct_tui.session import seeds_differ

    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    store = RunStore(run_dir, readonly=True)
    machine = store.tasks(origin="machine")[0]
    seeds, _ = current_seeds(store)
    store.close()
    promoted = SeedTask("p1", "p1", machine.instruction, machine.instances,
                        machine.is_classification, "promoted", machine.id)
    OfflineControl(run_dir, lambda event: None).send(ReplaceSeeds(tuple([*seeds, promoted])))
    out = tmp_path / "seeds.jsonl"
    export_seeds(run_dir, out)
    store = RunStore(run_dir, readonly=True)
    assert seeds_differ(out, store) is None
    assert store.task(machine.id).status == "promoted"
    store.close()
    # an older run: no origin columns
    db = sqlite3.connect(run_dir / "run.sqlite")
    db.execute("ALTER TABLE tasks DROP COLUMN seed_origin")
    db.execute("ALTER TABLE tasks DROP COLUMN source_task")
    db.commit()
    db.close()
    store = RunStore(run_dir, readonly=True)
    old, pending = current_seeds(store)
    store.close()
    assert not pending and {s.origin for s in old} == {"file"} and len(old) == 140
    RunStore(run_dir).close()  # a writer migrates
    assert {s.seed_origin for s in active_seeds(run_dir)} == {None}  # read as "file"


def test_a_pending_set_exported_is_accepted_as_seeds_on_resume(tmp_path, isolated_env):
    from selfinstruct_tui.engine.control import RemoteControl, ReplaceSeeds
    from selfinstruct_tui.engine.exports import export_seeds
    from selfinstruct_tui.session import seeds_differ

    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    store = RunStore(run_dir, readonly=True)
    seeds, _ = current_seeds(store)
    store.close()
    RemoteControl(run_dir).send(ReplaceSeeds(tuple(seeds[:50])))  # not applied: no engine
    out = tmp_path / "pending.jsonl"
    assert export_seeds(run_dir, out)[1:] == (50, True)
    store = RunStore(run_dir, readonly=True)
    assert seeds_differ(out, store) is None
    store.close()


def test_two_attached_uis_never_overwrite_each_others_seed_edits(tmp_path, isolated_env):
    """A manager opened before another UI changed the seed set applies its own change to the
    set as it is now (the other change survives), and says so; a raw JSONL edit over a set that
    changed meanwhile is not applied (it would undo the other change) and is kept in a file."""
    run_dir = run_marked_running(tmp_path / "run")

    async def edit_first_instruction(pilot, app, manager, row: int, suffix: str) -> None:
        manager.query_one("#seed-table", DataTable).move_cursor(row=row)
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
        area = app.screen.query_one("#f-instruction", TextArea)
        area.text = area.text + suffix
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is manager)

    async def go():
        a = create_app(run_dir, attach=True, refresh=0.1)
        b = create_app(run_dir, attach=True, refresh=0.1)
        async with a.run_test(size=(120, 40)) as pa, b.run_test(size=(120, 40)) as pb:
            manager_a = await open_manager(pa, a)  # A opens first and keeps it open
            manager_b = await open_manager(pb, b)
            await edit_first_instruction(pb, b, manager_b, 0, " FROM-B")
            notes_before = len(a._notifications)
            await edit_first_instruction(pa, a, manager_a, 24, " FROM-A")
            assert len(a._notifications) > notes_before
            assert any("changed elsewhere" in n.message for n in a._notifications)
            # A's table now shows both edits
            assert manager_a.seeds[0].instruction.endswith(" FROM-B")
            assert manager_a.seeds[24].instruction.endswith(" FROM-A")
            # B, still holding the set before A's edit, opens the raw editor and saves it
            await pb.press("r")
            await until(pb, lambda: isinstance(b.screen, SeedEditorScreen))
            area = b.screen.query_one(TextArea)
            area.text = area.text.replace("Explain what inflation is", "Explain what deflation is")
            await pb.pause()
            await pb.press("ctrl+s")
            await until(pb, lambda: b.screen is manager_b)
            assert any("was not applied" in n.message for n in b._notifications)

    run(go())
    reader = RunStore(run_dir, readonly=True)
    seeds, pending = current_seeds(reader)
    reader.close()
    assert pending
    texts = [s.instruction for s in seeds]
    assert texts[0].endswith(" FROM-B") and texts[24].endswith(" FROM-A")
    assert not any("deflation" in t for t in texts)
    kept = list(run_dir.glob("seeds-not-applied-*.jsonl"))
    assert len(kept) == 1 and "deflation" in kept[0].read_text()


def test_escape_asks_before_discarding_edits_in_the_raw_editor_and_the_form(tmp_path,
                                                                          isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    before = [s.instruction for s in active_seeds(run_dir)]

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, SeedEditorScreen))
            editor = app.screen
            editor.query_one(TextArea).text = editor.query_one(TextArea).text + "\n{bad"
            await pilot.press("escape")  # the text area has the focus: still asks
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")
            await until(pilot, lambda: app.screen is editor)
            assert editor.query_one(TextArea).text.endswith("{bad")
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: app.screen is manager)
            await pilot.press("e")  # the form: unchanged closes at once, changed asks
            await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is manager)
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
            form = app.screen
            form.query_one("#f-instruction", TextArea).text = "Changed."
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")
            await until(pilot, lambda: app.screen is form)
            assert form.query_one("#f-instruction", TextArea).text == "Changed."

    run(go())
    assert [s.instruction for s in active_seeds(run_dir)] == before


def test_the_classification_check_box_shows_its_state_without_colour(tmp_path, isolated_env):
    """Textual's check box draws "X" on and off alike (colour tells them apart), which a
    terminal with few colours shows the same: the mark is now "X" or blank."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await open_manager(pilot, app)
            await new_seed_form(pilot, app)
            box = app.screen.query_one("#f-cls", Checkbox)
            marks = []
            for _ in range(2):
                marks.append(str(box.render()).split("classification")[0])
                box.toggle()
                await pilot.pause()
            assert box.value is False
            assert "X" not in marks[0] and "X" in marks[1]

    run(go())


def test_a_seed_edit_gives_ids_only_to_the_seeds_it_adds(tmp_path, isolated_env):
    """Adding one seed at the end of the 139+ bundled ones made the next ids jump by the set's
    size: ids were taken for every seed of the new set, and the seeds that kept theirs left
    theirs unused. The seed added now takes the next id, offline and in the engine, and the
    machine tasks go on from there."""
    from selfinstruct_tui.engine.control import OfflineControl, ReplaceSeeds
    from selfinstruct_tui.engine.seeds import SeedTask, seed_from_record, seed_to_record

    def added(n: int) -> SeedTask:
        return SeedTask(f"added_{n}", f"added_{n}", f"Write a limerick about a lighthouse {n}.",
                        [], False, "added")

    # no engine: OfflineControl applies the set at once
    run_dir = tmp_path / "offline"
    deterministic_run(run_dir)
    store = RunStore(run_dir)
    seeds, _ = current_seeds(store)
    before = store.max_used_id()
    store.close()
    OfflineControl(run_dir, lambda e: None).send(ReplaceSeeds(tuple([*seeds, added(1)])))
    store = RunStore(run_dir, readonly=True)
    new = [t for t in store.tasks(origin="seed") if t.seed_id == "added_1"]
    store.close()
    assert len(seeds) > 100 and [t.id for t in new] == [before + 1]
    # the engine: a pending set is applied as it starts
    with FakeOpenAI(latency=0.01) as server:
        store, config = new_run(tmp_path / "engine", server.base_url, target=3)
        seeds, _ = current_seeds(store)
        before = store.max_used_id()
        store.set_pending_seeds([seed_to_record(s) for s in [*seeds, added(2)]])
        assert [seed_from_record(r).id for r in store.pending_seeds()][-1] == "added_2"
        engine = Engine(store, config)
        engine.run()
        new = [t for t in store.tasks(origin="seed") if t.seed_id == "added_2"]
        machine = [t.id for t in store.tasks(origin="machine")]
        store.close()
    assert [t.id for t in new] == [before + 1]
    assert machine and min(machine) < before + 1 + 40  # (not past before + 1 + the set's size)


def test_the_delete_question_quotes_the_seed_whole_or_marked_where_it_is_cut(tmp_path,
                                                                              isolated_env):
    """`d` in the manager asks about the seed it deletes, quoting its instruction cut to 60
    characters; the cut was silent: "Delete seed seed_task_1 ('Give three practical tips for
    someone who wants to start run')?" read as the seed's whole text. The quote now ends with
    an ellipsis where it is cut, and a short instruction is quoted whole."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            table = manager.query_one("#seed-table", DataTable)
            seeds = active_seeds(run_dir)
            for row in (0, 1):
                instruction = seeds[row].instruction
                table.move_cursor(row=row)
                await pilot.press("d")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                question = " ".join(str(app.screen.query_one(".question").render()).split())
                quoted = instruction if len(instruction) <= 60 else instruction[:59] + "…"
                assert f"({quoted!r})?" in question
                await pilot.press("n")
                await until(pilot, lambda: app.screen is manager)
            assert len(seeds[0].instruction) > 60 and len(seeds[1].instruction) <= 60
            assert len(active_seeds(run_dir)) == 139

    run(go())


def test_saving_a_near_or_exact_duplicate_seed_names_the_other_and_asks_first(tmp_path,
                                                                             isolated_env):
    """The form saved "Explain what inflation is to a ten-year-old." beside seed_task_2 (that
    text) without a word, while `seeds check` warns of it. Now the form names the other seed
    and the score (seeds check's rule) and saves only when the user confirms: for an exact
    copy, a near one, an edit that makes a seed a copy of another, and an exact copy of a text
    the tokenizer finds no word in (ROUGE-L 0 there); a distinct seed saves without a question."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    inflation = "Explain what inflation is to a ten-year-old."
    no_words = "日本の首都はどこですか？"

    async def save(pilot, app, form, instruction: str) -> str:
        """Type `instruction`, save; the confirmation's question (the form's warning checked)."""
        form.query_one("#f-instruction", TextArea).text = instruction
        form.query(".f-output").first(TextArea).text = "an answer"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        return str(app.screen.query_one(".question").render())

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            # an exact duplicate: "keep editing" keeps the form and its text, sends nothing
            form = await new_seed_form(pilot, app)
            question = await save(pilot, app, form, inflation)
            assert "the same instruction as seed seed_task_2 (ROUGE-L 1.00)" in question
            await pilot.press("n")
            await until(pilot, lambda: app.screen is form)
            said = str(form.query_one("#form-errors").render())
            assert "seed_task_2 (ROUGE-L 1.00)" in said and inflation in said
            assert form.query_one("#f-instruction", TextArea).text == inflation
            assert len(active_seeds(run_dir)) == 139
            # a near duplicate: named with its score; "save anyway" saves it
            question = await save(pilot, app, form,
                                  "Explain what inflation is to a 10-year-old child.")
            assert "a near duplicate of seed seed_task_2 (ROUGE-L 0.84)" in question
            await pilot.press("y")
            await until(pilot, lambda: app.screen is manager)
            assert active_seeds(run_dir)[-1].instruction == \
                "Explain what inflation is to a 10-year-old child."
            # an edit that makes seed_task_1 a copy of seed_task_2 asks too
            manager.query_one("#seed-table", DataTable).move_cursor(row=0)
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
            question = await save(pilot, app, app.screen, inflation)
            assert "seed_task_2 (ROUGE-L 1.00)" in question
            await pilot.press("n")
            await pilot.press("escape")  # the form's cancel: discard the change
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: app.screen is manager)
            assert active_seeds(run_dir)[0].instruction != inflation
            # a text without words for the rouge tokenizer, twice: the second is the same text
            for n in (1, 2):
                await new_seed_form(pilot, app)
                app.screen.query_one("#f-instruction", TextArea).text = no_words
                app.screen.query(".f-output").first(TextArea).text = "東京"
                await pilot.press("ctrl+s")
                if n == 2:
                    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                    question = str(app.screen.query_one(".question").render())
                    assert "the same instruction as seed added_2 (ROUGE-L 1.00)" in question
                    await pilot.press("y")
                await until(pilot, lambda: app.screen is manager)
            # a distinct seed saves without a question
            await add_new_seed(pilot, app, manager)
            seeds = active_seeds(run_dir)
            assert [s.instruction for s in seeds[-3:]] == [no_words, no_words, NEW_INSTRUCTION]

    run(go())


def test_a_seed_file_that_cannot_be_written_back_is_said_and_the_edit_still_applies(
        tmp_path, isolated_env):
    """The raw editor's "write back to the seed file" with the seed file's folder gone since
    the run started: FileNotFoundError went unhandled (the temp-file writer no longer makes
    folders). Now an error notification names the file, and the new set is still sent."""
    folder = tmp_path / "seeds"
    folder.mkdir()
    seeds_file = folder / "mine.jsonl"
    write_seeds(seeds_file, load_seeds(bundled_seeds_path())[:10])

    async def go():
        deterministic_run(tmp_path / "run")
        app = create_app(tmp_path / "run", seeds_file=str(seeds_file))
        async with app.run_test(size=(120, 40)) as pilot:
            seeds_file.unlink()
            folder.rmdir()
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, SeedManagerScreen))
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, SeedEditorScreen))
            area = app.screen.query_one(TextArea)
            area.text = "\n".join(area.text.splitlines()[:5])
            app.screen.query_one("#write-back", Checkbox).value = True
            await pilot.press("ctrl+s")
            await until(pilot, lambda: isinstance(app.screen, SeedManagerScreen))
            said = [n.message for n in app._notifications]
            assert any(f"The seed file {seeds_file} could not be written back" in m
                       for m in said), said
            assert not folder.exists()  # no folder made
            assert len((tmp_path / "run" / "seeds.jsonl").read_text().splitlines()) == 5

    run(go())


def test_the_forms_not_saved_line_follows_the_fields_as_they_are_fixed(tmp_path, isolated_env):
    """"Not saved: instruction is empty" stayed on screen after the fields were filled. It now
    names what still keeps the form from saving as the user types, and goes once nothing does."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            form = await new_seed_form(pilot, app)
            line = form.query_one("#form-errors")

            def said() -> str:
                return str(line.render()) if line.has_class("visible") else ""

            await pilot.press("ctrl+s")
            assert said() == "Not saved: instruction is empty; instance 1: output is empty"
            await pilot.press(*"Name")  # typed into the instruction (it has the focus)
            await until(pilot, lambda: said() == "Not saved: instance 1: output is empty")
            form.query(".f-output").first(TextArea).text = "Nile"
            await until(pilot, lambda: said() == "")
            await pilot.press("ctrl+n")  # a new instance without an output: said again
            await until(pilot, lambda: said() == "")  # (nothing said before a save)
            await pilot.press("ctrl+s")
            assert said() == "Not saved: instance 2: output is empty"
            await pilot.press("ctrl+r")  # the focused (new) instance removed
            await until(pilot, lambda: said() == "")
            form.query_one("#f-instruction", TextArea).text = ""
            await pilot.pause()
            assert said() == ""  # nothing said until the next save
            form.query_one("#f-instruction", TextArea).text = NEW_INSTRUCTION
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.screen is manager)

    run(go())


def test_a_field_the_form_did_not_edit_keeps_its_line_separators(tmp_path, isolated_env):
    """TextArea splits lines at U+2028, U+0085, U+2029 and form feeds (str.splitlines) and
    gives them back as "\\n": saving a seed in the form changed every such field, edited or
    not. An untouched field keeps its value exactly; an edited one is saved as edited."""
    from selfinstruct_tui.engine.seeds import Instance, SeedTask
    from selfinstruct_tui.engine.store import seed_tasks_to_pool

    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    odd = SeedTask("odd_1", "odd_1", "Read the lines:\u2028one\x85two\u2029three\x0cfour.",
                   [Instance("a\u2028b", "c\x85d"), Instance("e\u2029f", "g\u2028h")],
                   False, "file", None)
    store = RunStore(run_dir)
    store.replace_seeds(seed_tasks_to_pool([odd] + load_seeds(bundled_seeds_path()), 5000))
    store.close()

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            manager.query_one("#seed-table", DataTable).move_cursor(row=0)
            for edit in ("classification", "output 2"):
                await pilot.press("e")
                await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
                form = app.screen
                assert form.seed.id == "odd_1"
                if edit == "classification":
                    await pilot.press("ctrl+t")
                else:
                    form.query(".f-output").last(TextArea).text = "g\nh edited"
                await pilot.pause()
                await pilot.press("ctrl+s")
                await until(pilot, lambda: app.screen is manager)

    run(go())
    seed = next(t for t in active_seeds(run_dir) if t.seed_id == "odd_1")
    assert seed.instruction == odd.instruction and seed.is_classification
    assert seed.instances[0] == odd.instances[0]
    assert seed.instances[1] == Instance("e\u2029f", "g\nh edited")


def test_a_raw_save_that_adds_a_near_duplicate_names_the_pair_and_saves(tmp_path, isolated_env):
    """The form names a near-duplicate seed before saving; the raw JSONL editor said nothing.
    A raw save is a bulk edit: it is saved, then the pairs it introduced are named with their
    score (the rule of `seeds check`), and a pair already there is not said again."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def raw_save(pilot, app, manager, edit) -> list[str]:
        """Open the raw editor, `edit(lines)` its lines, save; the warnings said after."""
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, SeedEditorScreen))
        area = app.screen.query_one(TextArea)
        area.text = "\n".join(edit(area.text.splitlines()))
        before = len(app._notifications)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is manager)
        await pilot.pause()
        return [n.message for n in list(app._notifications)[before:]
                if n.title == "Near-duplicate seeds"]

    def seed(sid: str, instruction: str) -> str:
        return json.dumps({"id": sid, "instruction": instruction,
                           "instances": [{"input": "", "output": "an answer"}]})

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            said = await raw_save(pilot, app, manager, lambda lines: lines + [
                seed("bulk_near", "Explain what inflation is to a 10-year-old child.")])
            assert len(said) == 1, said
            assert "bulk_near ~ seed_task_2 (ROUGE-L 0.84)" in said[0]
            assert "1 near-duplicate seed pair" in said[0]
            said = await raw_save(pilot, app, manager, lambda lines: lines + [
                seed("bulk_copy", "explain what inflation is  to a ten-year-old.")])
            assert len(said) == 1 and "bulk_copy ~ seed_task_2 (ROUGE-L 1.00, the same " \
                "instruction)" in said[0], said
            assert "bulk_near ~" not in said[0]  # already there: not said again
            said = await raw_save(pilot, app, manager, lambda lines: lines + [
                seed("bulk_other", "Name three rivers of South America.")])
            assert said == []

    run(go())
    seeds = {s.seed_id for s in active_seeds(run_dir)}
    assert {"bulk_near", "bulk_copy", "bulk_other"} <= seeds  # saved, never blocked


def write_editor(path, body: str):
    """An executable stand-in for $EDITOR: a shell script; the file to edit, its last
    argument, is $1 in `body`."""
    path.write_text('#!/bin/sh\nfor last in "$@"; do :; done\nset -- "$last"\n' + body + "\n",
                    encoding="utf-8")
    path.chmod(0o755)
    return path


def test_external_editor_returns_the_saved_text_and_names_each_failure(tmp_path):
    """$EDITOR (ctrl+o in the raw seed editor) is run on a temporary copy of the text; its
    saved text comes back. A missing program, a non-zero exit (vim's :cq, an editor that
    failed) or an unreadable $EDITOR setting was an unhandled exception that ended the app,
    or (non-zero exit) took the file as edited; each now raises EditorFailed naming the
    command and why, and the temporary file is gone in every case."""
    from selfinstruct_tui.tui.screens.seed_editor import EditorFailed, edit_externally

    log = tmp_path / "edited"  # each stand-in writes the path it was given here
    appends = write_editor(tmp_path / "appends", f'echo "$1" >> "{log}"; '
                           'printf \'{"x": 1}\\n\' >> "$1"')
    assert edit_externally("line one\n", str(appends)) == 'line one\n{"x": 1}\n'
    # arguments in $EDITOR are split as a shell would ("code --wait")
    assert edit_externally("a\n", f"{appends} --wait") == 'a\n{"x": 1}\n'

    gives_up = write_editor(tmp_path / "gives up", f'echo "$1" >> "{log}"; '
                            'echo changed > "$1"; exit 3')
    try:
        edit_externally("kept\n", shlex_quote(str(gives_up)))
        raise AssertionError("a failed editor's text was taken")
    except EditorFailed as exc:
        assert "exited with status 3" in str(exc) and "gives up" in str(exc)
        assert "unchanged" in str(exc)
    for editor, why in (("no-such-editor-xyz", "no-such-editor-xyz"),
                        ("vim 'unclosed", "cannot be read")):
        try:
            edit_externally("kept\n", editor)
            raise AssertionError(f"{editor!r} did not fail")
        except EditorFailed as exc:
            assert why in str(exc) and "$EDITOR" in str(exc), exc
    files = log.read_text().split("\n")[:-1]
    assert len(files) == 3 and all(f.endswith(".jsonl") for f in files)
    assert not any(os.path.exists(f) for f in files)  # the temporary copies are gone


def test_external_editor_whose_file_cannot_be_read_back_is_a_failure(tmp_path):
    """An editor that saved the text in another encoding (Latin-1) or removed the file: the
    read-back raised UnicodeDecodeError / FileNotFoundError, which ended the app with a
    traceback; each is now an EditorFailed naming $EDITOR and why, the text unchanged."""
    from selfinstruct_tui.tui.screens.seed_editor import EditorFailed, edit_externally

    latin1 = write_editor(tmp_path / "latin1", "printf 'caf\\351\\n' > \"$1\"")
    removes = write_editor(tmp_path / "removes", 'rm -f "$1"')
    for editor, why in ((latin1, "other than UTF-8 (byte 0xe9 at offset 3)"),
                        (removes, "left no file to read back")):
        try:
            edit_externally("kept\n", str(editor))
            raise AssertionError(f"{editor.name}: its file was taken")
        except EditorFailed as exc:
            assert why in str(exc) and "$EDITOR" in str(exc) and "unchanged" in str(exc), exc


def test_a_failed_external_editor_gives_the_terminal_back_to_the_app(isolated_env, tmp_path):
    """ctrl+o with an $EDITOR that fails (exits 1; saves in another encoding): Textual resumes
    a suspended app only when the `suspend()` block ends normally, and the failure was raised
    inside it, so the app stayed suspended (a blank screen that took no keys; the run could
    only be killed), or the read-back error ended it. Now the failure is said on the app's
    screen and the app takes keys again: ctrl+q asks and quits."""
    import re
    import time

    from conftest import on_a_terminal

    RESUMED = b"\x1b[?1049h"  # the alternate screen again: Textual resumes the app
    for body, said in (("exit 1", "exited with status 1"),
                       ("printf 'caf\\351\\n' > \"$1\"", "other than UTF-8")):
        run_dir = tmp_path / f"run-{len(body)}"
        editor = write_editor(tmp_path / "ed", body)
        steps = [(b"Task pool", b"e"), (b"Seeds: 139", b"r"), (b"opens $EDITOR", b"\x0f"),
                 (RESUMED, b"\x11"), (b"Stop and quit (y)", b"y")]
        seen_at = [0]  # the output already matched: each step looks after the previous one

        def react(seen, write):
            if steps and steps[0][0] in seen[seen_at[0]:]:
                seen_at[0] = len(seen)
                time.sleep(1.0 if steps[0][0] == RESUMED else 0.3)
                write(steps.pop(0)[1])

        with FakeOpenAI() as server:
            code, text = on_a_terminal({**isolated_env, "EDITOR": str(editor), "VISUAL": ""},
                                       react, "run", "--paused", "--base-url", server.base_url,
                                       "--model", "m", "--run-dir", str(run_dir),
                                       "--target", "5", timeout=60)
        assert not steps, (steps[0], text[-3000:])
        assert code == 130 and "Traceback" not in text, text[-3000:]
        assert said in re.sub(r"[\s▌]+", " ", text), text[-3000:]  # (the note, as wrapped)


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def test_ctrl_o_where_the_terminal_cannot_be_handed_over_keeps_the_app_and_the_text(
        tmp_path, isolated_env, monkeypatch):
    """ctrl+o in the raw editor where the app cannot suspend (Textual's headless driver, as
    in Textual Web) raised SuspendNotSupported and ended the app, losing the unsaved text; it
    now says why $EDITOR cannot be opened there and the text stays."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    monkeypatch.setenv("EDITOR", str(write_editor(tmp_path / "ed", 'echo changed > "$1"')))
    monkeypatch.delenv("VISUAL", raising=False)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await open_manager(pilot, app)
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, SeedEditorScreen))
            editor = app.screen
            editor.query_one(TextArea).text += "\n{unsaved"
            await pilot.press("ctrl+o")
            await pilot.pause(0.2)
            assert app.screen is editor and app.is_running
            assert editor.query_one(TextArea).text.endswith("\n{unsaved")
            said = [n.message for n in app._notifications]
            assert any("$EDITOR" in m and "cannot" in m for m in said), said

    run(go())


async def inspect_text(pilot, app, text: str) -> int:
    """Open the inspector on the one pool task whose text holds `text`; returns its id."""
    pool = app.query_one(TaskTable)
    pool.focus()
    if pool.follow:
        await pilot.press("f")
    pool.set_filter(text)
    await until(pilot, lambda: len(pool.displayed_ids()) == 1)
    task_id = pool.current_id
    assert task_id is not None
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
    return task_id


def test_a_seed_dropped_or_edited_in_the_inspector_stays_so_when_a_pending_set_applies(
        tmp_path, isolated_env):
    """The inspector dropped or edited a seed's task row at once, beside the seed set: a set
    pending from the seed manager then applied as it was at the next round, bringing the
    dropped seed back and the edited one as it had been. Now both go through the seed set
    (as the manager's delete and form do) and hold after the next round."""
    run_dir = tmp_path / "run"
    bundled = load_seeds(bundled_seeds_path())
    dropped, edited = bundled[0], bundled[1]
    new_text = "Explain what a budget deficit is to a twelve-year-old, in three sentences."

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(run_dir, server.base_url, target=5000)
            app = create_app(run_dir, engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.press("p")  # paused: the manager's edit stays pending
                await until(pilot, lambda: app.state == "paused")
                manager = await open_manager(pilot, app)
                await add_new_seed(pilot, app, manager)
                await pilot.press("escape")
                await until(pilot, lambda: not isinstance(app.screen, SeedManagerScreen))
                await inspect_text(pilot, app, dropped.instruction)
                await pilot.press("d")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                assert f"Delete seed {dropped.id}" in str(
                    app.screen.query_one(".question").render())
                await pilot.press("y")
                await until(pilot, lambda: not isinstance(app.screen, (ConfirmScreen,
                                                                       InspectorScreen)))
                await inspect_text(pilot, app, edited.instruction)
                await pilot.press("e")
                await until(pilot, lambda: isinstance(app.screen.query("#task-text").first(),
                                                      TextArea))
                area = app.screen.query_one("#task-text", TextArea)
                area.text = area.text.replace(json.dumps(edited.instruction)[1:-1], new_text)
                await pilot.press("ctrl+s")
                await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))
                app.query_one(TaskTable).set_filter("")
                await pilot.press("p")
                seeds = await assert_next_rounds_use_only(pilot, run_dir, len(bundled))
                assert dropped.instruction not in seeds and edited.instruction not in seeds
                assert {new_text, NEW_INSTRUCTION} <= seeds
                engine.stop()
                await until(pilot, lambda: app.state in ("stopped", "finished"), timeout=40)

    run(go())
    seeds = active_seeds(run_dir)
    assert [s.seed_id for s in seeds if s.instruction == new_text] == [edited.id]
    assert dropped.id not in [s.seed_id for s in seeds]


def test_a_promoted_seed_dropped_in_the_inspector_gives_its_task_back_to_the_pool(
        tmp_path, isolated_env):
    """Dropping a promoted seed's task row left its machine task "promoted", in neither pool,
    until some later seed edit; the last seed could be dropped too. Now the drop is the seed
    manager's delete: the machine task returns at once (no engine runs), and the last seed
    stays with a notice."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            machine_id = await inspect_newest(pilot, app, "machine")
            await pilot.press("plus")
            await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))
            assert task_row(run_dir, machine_id).status == "promoted"
            seed_id = await inspect_newest(pilot, app, "seed")
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert f"machine task #{machine_id}, which returns to the pool" in str(
                app.screen.query_one(".question").render())
            await pilot.press("y")
            await until(pilot, lambda: task_row(run_dir, machine_id).status == "active")
            assert task_row(run_dir, seed_id).status != "active"
            assert len(active_seeds(run_dir)) == 139
            pool = app.query_one(TaskTable)
            await until(pilot, lambda: machine_id in pool.rows and seed_id not in pool.rows)
            # the last seed is kept, as in the manager
            store = RunStore(run_dir)
            store.apply_seed_set(store.tasks(origin="seed")[:1])
            store.close()
            last = active_seeds(run_dir)[0]
            app.on_task_table_inspect(TaskTable.Inspect(last.id))
            await until(pilot, lambda: isinstance(app.screen, InspectorScreen))
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: not isinstance(app.screen, (ConfirmScreen,
                                                                   InspectorScreen)))
            await pilot.pause(0.3)
            assert [t.id for t in active_seeds(run_dir)] == [last.id]
            assert any("at least one seed" in n.message for n in app._notifications)

    run(go())


def test_saving_a_seed_form_unchanged_sends_nothing(tmp_path, isolated_env):
    """Saving the form as it opened sent the same seed set again: the run showed it "pending:
    applies at the next round" and said "139 seeds saved" though nothing had changed."""
    run_dir = run_marked_running(tmp_path / "run")

    async def go():
        app = create_app(run_dir, attach=True, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            manager = await open_manager(pilot, app)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, SeedFormScreen))
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.screen is manager)
            await pilot.pause(0.2)
            assert "the run's active seeds" in str(manager.query_one("#seeds-title").render())
            assert any("unchanged" in n.message for n in app._notifications)
            assert not any("seeds saved" in n.message for n in app._notifications)

    run(go())
    assert read_run(run_dir, lambda store: store.pending_seeds()) is None


def test_the_inspectors_edit_of_a_seed_builds_on_its_pending_edit(tmp_path, isolated_env):
    """A seed edited in the manager (pending until the next round) and then edited in the
    inspector: the editor opened on the seed as last applied (the pool's row), so its save put
    the old instruction back over the pending one. It opens on the pending version."""
    run_dir = run_marked_running(tmp_path / "run")
    seeds = [s.to_seed() for s in active_seeds(run_dir)]
    target = seeds[1]
    pending_text = "Name two rivers of Europe that flow into the Black Sea."
    records = [seed_to_record(s) for s in seeds]
    records[1] = {**records[1], "instruction": pending_text}
    store = RunStore(run_dir)
    store.set_pending_seeds(records)  # another UI's edit, pending for the next round
    store.close()
    new_output = "The Danube and the Dnieper."

    async def go():
        app = create_app(run_dir, attach=True, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await inspect_text(pilot, app, target.instruction)
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen.query("#task-text").first(),
                                                  TextArea))
            area = app.screen.query_one("#task-text", TextArea)
            data = json.loads(area.text)
            assert data["instruction"] == pending_text
            data["instances"][0]["output"] = new_output
            area.text = json.dumps(data)
            await pilot.press("ctrl+s")
            await until(pilot, lambda: not isinstance(app.screen, InspectorScreen))

    run(go())
    store = RunStore(run_dir)
    pending = store.pending_seeds()
    store.close()
    [saved] = [r for r in pending if r["id"] == target.id]
    assert saved["instruction"] == pending_text
    assert saved["instances"][0]["output"] == new_output
