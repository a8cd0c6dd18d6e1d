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
