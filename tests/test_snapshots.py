"""Snapshots of the main screen on deterministic data: 120x40 and 80x24, every shipped theme."""

from __future__ import annotations

import pytest

from selfinstruct_tui.tui.app import create_app
from selfinstruct_tui.tui.themes import bundled_themes_dir, load_themes
from tui_helpers import deterministic_run

SHIPPED = sorted(t.name for t in load_themes([bundled_themes_dir()])[0])


def test_three_themes_ship_including_light_and_high_contrast():
    themes = load_themes([bundled_themes_dir()])[0]
    assert len(themes) >= 3
    assert any(not t.dark for t in themes)
    assert "high-contrast" in SHIPPED


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
@pytest.mark.parametrize("theme", SHIPPED)
def test_main_screen(snap_compare, tmp_path, isolated_env, theme, size):
    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", theme=theme, refresh=0.1)
    assert snap_compare(app, terminal_size=size)


@pytest.mark.parametrize("theme", SHIPPED)
def test_pool_cell_styles(snap_compare, tmp_path, isolated_env, theme):
    """Every cell style of the pool: cursor row, machine rows, seed rows, high scores (exactly
    the number highlighted, never on the cursor row), classification marks."""
    from test_task_table import NEWEST, add_machine_tasks

    deterministic_run(tmp_path / "run")
    add_machine_tasks(tmp_path / "run", NEWEST + 1, [0.69, 0.61, 0.6, 1.0, 0.05])
    app = create_app(tmp_path / "run", theme=theme, refresh=0.1)

    async def run_before(pilot) -> None:
        await pilot.press("down")  # the cursor on a high score: the cursor style wins

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


# -- the seed manager and its form ----------------------------------------------------------------

async def _open_seed_manager(pilot) -> None:
    await pilot.press("e")
    await pilot.pause()


async def _open_seed_form(pilot) -> None:
    await pilot.press("e")  # the seed manager
    await pilot.pause()
    await pilot.press("e")  # the form on the first seed
    await pilot.pause()


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
@pytest.mark.parametrize("theme", SHIPPED)
@pytest.mark.parametrize("opened", [_open_seed_manager, _open_seed_form],
                         ids=["seed_manager", "seed_form"])
def test_seed_screens(snap_compare, tmp_path, isolated_env, opened, theme, size):
    """The seed manager (key e) and its form on the first seed."""
    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", theme=theme, refresh=0.1)
    assert snap_compare(app, terminal_size=size, run_before=opened)
