"""The task pool holds still: the cursor stays on its task when rows arrive, the sort changes or a
filter narrows the view; `f` follows the newest task; a score's highlight covers exactly the
number. Rows arrive the real way: written to the store as a detached engine would, picked up by
an attached UI's follower."""

from __future__ import annotations

import pytest

from selfinstruct_tui.engine.seeds import Instance
from selfinstruct_tui.engine.store import RunStore
from selfinstruct_tui.engine.task import Task
from selfinstruct_tui.tui.app import create_app
from selfinstruct_tui.tui.widgets.task_table import HIGH_SCORE, TaskTable
from tui_helpers import deterministic_run, run, until

NEWEST = 179  # deterministic_run: 139 seeds + 40 machine tasks


def add_machine_tasks(run_dir, first_id: int, scores: list[float]) -> list[int]:
    """Commit machine tasks as an engine in another process would."""
    store = RunStore(run_dir)
    try:
        for n, score in enumerate(scores):
            store.insert_task(Task(
                id=first_id + n, origin="machine", round=5, instruction=f"Arrived task {n} "
                "about green gardens and their many careful keepers.", is_classification=False,
                instances=[Instance("", f"output {n}")], max_score=score, created=float(n)))
    finally:
        store.close()
    return [first_id + n for n in range(len(scores))]


def visible_ids(table: TaskTable) -> list[int]:
    top = table.scroll_offset.y
    return [table.id_at(i) for i in range(top, min(len(table.view), top + table.size.height))]


def test_cursor_stays_on_its_task_as_rows_arrive_sort_changes_and_filter_narrows(tmp_path,
                                                                             isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, attach=True, refresh=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.table
            assert table.follow and table.current_id == NEWEST
            await pilot.press("down", "down", "down")
            assert table.current_id == NEWEST - 3 and not table.follow
            line = table.cursor - table.scroll_offset.y
            assert "holding #176" in str(app.pool_info.render())

            new = add_machine_tasks(run_dir, NEWEST + 1, [0.1, 0.2])
            await until(pilot, lambda: all(i in table.rows for i in new))
            await pilot.pause()
            # The cursor's task is the same, and it is drawn on the same screen line.
            assert table.current_id == NEWEST - 3
            assert table.cursor - table.scroll_offset.y == line

            await pilot.press("c")  # sort by round: the cursor's task moves, the cursor with it
            assert table.sort_column == "round" and table.current_id == NEWEST - 3
            assert NEWEST - 3 in visible_ids(table)
            await pilot.press("v")
            assert table.current_id == NEWEST - 3 and NEWEST - 3 in visible_ids(table)
            await pilot.press("o")  # origin: seed hides the machine task: nearest neighbour
            assert table.origin == "seed"
            assert table.current_id is not None and table.rows[table.current_id].origin == "seed"
            await pilot.press("o")  # machine
            await pilot.press("slash", *"item")  # a filter that keeps the task keeps the cursor
            await pilot.press("enter")
            await pilot.press("home", "down")
            held = table.current_id
            assert held is not None and "item" in table.rows[held].lowered
            await pilot.press("slash", *" number")
            assert table.current_id == held
            # the scrollable height follows the view without a screen re-layout
            assert table.virtual_size.height == len(table.view)
            visible = table.scrollable_content_region.height
            assert table.max_scroll_y == max(0, len(table.view) - visible)
            await pilot.press("escape")
            await pilot.pause()
            assert table.text_filter == "" and table.current_id == held

    run(go())


def test_follow_keeps_the_newest_task_under_the_cursor(tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, attach=True, refresh=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.table
            await pilot.press("pagedown")
            assert not table.follow
            await pilot.press("f")
            assert table.follow and table.current_id == NEWEST
            assert "following newest" in str(app.pool_info.render())
            new = add_machine_tasks(run_dir, NEWEST + 1, [0.1, 0.2, 0.3])
            await until(pilot, lambda: table.current_id == new[-1])
            assert visible_ids(table)[0] == new[-1]
            await pilot.press("v")  # ascending: the newest is the last row, and it is shown
            assert table.current_id == new[-1] and new[-1] in visible_ids(table)
            await pilot.press("f")
            assert not table.follow
            more = add_machine_tasks(run_dir, new[-1] + 1, [0.4])
            await until(pilot, lambda: more[0] in table.rows)
            assert table.current_id == new[-1]

    run(go())


@pytest.mark.parametrize("score", [0.69, 0.61, 1.0])
def test_a_high_score_is_highlighted_as_one_whole_number(tmp_path, isolated_env, score):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    add_machine_tasks(run_dir, NEWEST + 1, [0.2, score])

    async def go():
        app = create_app(run_dir, refresh=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.table
            await pilot.pause()
            await pilot.press("down")  # the cursor row is never highlighted: move off it
            line = table.render_line(0)
            high = table.get_component_rich_style("task-table--high")
            segments = list(line)
            marked = [s.text for s in segments if s.style is not None and high.color is not None
                      and s.style.color == high.color]
            assert score > HIGH_SCORE
            assert marked == [f"{score:.2f}"], segments
            assert "".join(s.text for s in segments).startswith(f"    {NEWEST + 2}")

    run(go())


def test_charts_draw_the_runs_numbers_and_g_cycles_them(tmp_path, isolated_env):
    """The round statistics charts (textual-plotext): the max ROUGE-L histogram counts every
    machine task once, the per-round charts have a point per finished round, `g` cycles."""
    from textual_plotext import PlotextPlot

    from selfinstruct_tui.tui.widgets.panes import CHARTS

    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    add_machine_tasks(run_dir, NEWEST + 1, [0.69, 0.05])
    store = RunStore(run_dir, readonly=True)
    machine = store.tasks(origin="machine")
    rounds = store.rounds()
    store.close()

    async def go():
        app = create_app(run_dir, refresh=0.05)
        async with app.run_test(size=(140, 50)) as pilot:
            view, pane = app.view, app.stats_pane
            hist = view.score_hist
            assert hist.total == len(machine) == 42
            assert hist.counts[13] == sum(1 for t in machine if 0.65 <= t.max_score < 0.7)
            assert hist.counts[1] == sum(1 for t in machine if 0.05 <= t.max_score < 0.1)
            assert view.length_hist.total == len(machine)
            assert [p.accepted for p in view.round_points] == [r.accepted for r in rounds]
            plot = app.query_one("#chart", PlotextPlot)
            shown = []
            for _ in CHARTS:
                shown.append(pane.chart)
                assert f"{CHARTS.index(pane.chart) + 1}/{len(CHARTS)}" in pane.border_subtitle
                text = plot.plt.build()
                assert {"rouge": "max ROUGE-L", "lengths": "words", "accepted": "round",
                        "rejections": "near duplicate"}[pane.chart] in text
                await pilot.press("g")
            assert shown == list(CHARTS) and pane.chart == CHARTS[0]

    run(go())


def test_when_the_held_task_leaves_the_cursor_holds_its_neighbour(tmp_path, isolated_env):
    """Dropping the task under the cursor (from any UI) moves the cursor to the next task in
    display order, never to the top of the list."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, attach=True, refresh=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.table
            await pilot.press("v")  # ascending: 1, 2, ...
            await pilot.press("home", *["down"] * 149)
            assert table.current_id == 150 and not table.follow
            store = RunStore(run_dir)
            store.drop_task(150)  # as the engine of a detached run would
            store.close()
            await until(pilot, lambda: 150 not in table.rows)
            await pilot.pause()
            assert table.current_id == 151
            assert "holding #151" in str(app.pool_info.render())

    run(go())


@pytest.mark.parametrize("column", ["id", "round", "rouge", "instruction"])
def test_filtered_view_stays_exact_as_rows_arrive_change_and_leave(tmp_path, isolated_env,
                                                                   column):
    """With a text and an origin filter and any sort, the view is always exactly the matching
    tasks in sort order: after rows arrive, after a row is replaced and after rows leave."""
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    def expected(table: TaskTable) -> list[int]:
        return sorted((i for i, r in table.rows.items()
                       if "green" in r.lowered and r.origin == "machine"),
                      key=lambda i: table.rows[i].key(column))

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.table
            while table.sort_column != column:
                table.action_cycle_sort()
            table.action_cycle_origin()
            table.action_cycle_origin()
            assert table.origin == "machine"
            table.set_filter(" GREEN ")
            assert table.view == expected(table) and table.view
            tasks = [Task(id=NEWEST + 1 + n, origin="machine", round=n % 7, max_score=n / 10,
                          instruction=f"Task {n} on {'green' if n % 2 else 'blue'} hills",
                          is_classification=False, instances=[Instance("", "x")])
                     for n in range(6)]
            table.add_tasks(tasks)
            assert table.view == expected(table)
            changed = tasks[1]  # green: now blue, round and score changed
            table.add_tasks([Task(id=changed.id, origin="machine", round=9, max_score=0.95,
                                  instruction="Task 1 on blue hills", is_classification=False,
                                  instances=[])])
            assert changed.id not in table.view and table.view == expected(table)
            for task_id in (tasks[3].id, table.view[0], table.view[-1]):
                table.remove_task(task_id)
                assert task_id not in table.rows and table.view == expected(table)
            await pilot.pause()

    run(go())


def test_typing_in_the_filter_box_filters_the_pool_at_once(tmp_path, isolated_env):
    """The pool and its info line follow the filter box as its text changes, in the same step
    (no message round-trip: the frame that shows the typed text shows the filtered pool)."""
    deterministic_run(tmp_path / "run")

    async def go():
        app = create_app(tmp_path / "run", refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("slash")
            table = app.table
            app.filter_box.value = "green"
            shown = len(table.view)
            assert 0 < shown < NEWEST and table.text_filter == "green"
            assert f" {shown}/{NEWEST} tasks" in str(app.pool_info.render())
            assert "filter 'green'" in str(app.pool_info.render())
            app.filter_box.value = ""
            assert len(table.view) == NEWEST and table.text_filter == ""
            assert f" {NEWEST}/{NEWEST} tasks" in str(app.pool_info.render())
            await pilot.pause()

    run(go())


def test_a_seeds_similarity_is_a_dash_not_zero():
    """Seeds showed "rouge 0.00" (table) and "max ROUGE-L 0.000" (inspector): they are never
    compared, so no number is shown."""
    from selfinstruct_tui.tui.screens.inspector import task_details
    from selfinstruct_tui.tui.view import Row
    from selfinstruct_tui.tui.widgets.task_table import row_cells

    seed = Row(1, 0, "seed", False, 2, 0.0, "Name a river.", "name a river.")
    machine = Row(200, 3, "machine", False, 2, 0.41, "Name a lake.", "name a lake.")
    assert row_cells(seed)[5].strip() == "-" and row_cells(machine)[5].strip() == "0.41"
    text = task_details(Task(1, "seed", "Name a river.", False, [Instance("", "Nile")],
                             seed_id="s1"), None, None).plain
    assert "no ROUGE-L (seeds are not filtered)" in text and "0.000" not in text


def test_the_rejection_chart_tells_its_lines_apart_without_colour():
    """The legend of the rejections-by-reason chart told its lines apart by colour only (one
    marker for all): on a monochrome terminal, or to a colour-blind user, they read the same.
    Each line now has its own character, shown before its label in the legend."""
    import re

    from textual_plotext.plot import Plot

    from selfinstruct_tui.tui.view import RoundPoint, RunView
    from selfinstruct_tui.tui.widgets.panes import draw_chart

    view = RunView("run")
    reasons = ["near_duplicate", "too_short", "blacklisted_word", "too_long", "bad_start",
               "non_ascii"]
    for r in range(1, 6):
        view.round_points.append(RoundPoint(r, 3, {reason: n + r for n, reason in
                                                   enumerate(reasons)}))
    plt = Plot()
    plt.plotsize(90, 20)
    draw_chart(plt, view, "rejections")
    plt.theme("clear")  # no colour at all
    text = re.sub(r"\x1b\[[0-9;]*m", "", plt.build())
    labels = ["non ascii", "bad start", "too long", "blacklisted word", "other"]
    cues = {}
    for label in labels:
        found = re.search(r"[│ ](\S)\1 " + label + r"\b", text)
        assert found, (label, text)
        cues[label] = found.group(1)
    assert len(set(cues.values())) == len(labels), cues  # one character per line
