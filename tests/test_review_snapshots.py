"""Snapshots of the quality review screen on deterministic data: 120x40 and 80x24, every shipped
theme, and the main screen with its review table. The review stands at task 2 of 3, question 2
(task 1 answered yes, yes, no)."""

from __future__ import annotations

import pytest

from selfinstruct_tui.engine.control import OfflineControl, ReviewAnswer, SetReviewSample
from selfinstruct_tui.tui.app import create_app
from selfinstruct_tui.tui.screens.review import ReviewScreen
from selfinstruct_tui.tui.themes import bundled_themes_dir, load_themes
from tui_helpers import deterministic_run

SHIPPED = sorted(t.name for t in load_themes([bundled_themes_dir()])[0])


def reviewed_run(run_dir) -> None:
    deterministic_run(run_dir)
    control = OfflineControl(run_dir, lambda event: None)
    control.send(SetReviewSample((141, 152, 163), (1, 0, 2)))
    for question, answer in (("instruction", True), ("input", True), ("output", False)):
        control.send(ReviewAnswer(141, question, answer))
    control.send(ReviewAnswer(152, "instruction", True))


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
@pytest.mark.parametrize("theme", SHIPPED)
def test_review_screen(snap_compare, tmp_path, isolated_env, theme, size):
    reviewed_run(tmp_path / "run")
    app = create_app(tmp_path / "run", theme=theme, refresh=0.1)

    async def open_review(pilot) -> None:
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ReviewScreen)
        assert app.screen.current.task_id == 152

    assert snap_compare(app, terminal_size=size, run_before=open_review)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
@pytest.mark.parametrize("theme", SHIPPED)
def test_main_screen_with_review(snap_compare, tmp_path, isolated_env, theme, size):
    """The review's table: under the task pool at 120x40, in the statistics pane at 80x24."""
    reviewed_run(tmp_path / "run")
    app = create_app(tmp_path / "run", theme=theme, refresh=0.1)
    assert snap_compare(app, terminal_size=size)
