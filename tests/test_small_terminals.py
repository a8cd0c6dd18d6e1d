"""80x24 (the usual SSH terminal) and smaller: what must stay on screen, with Pilot on the
deterministic run of the snapshots."""

from __future__ import annotations

import contextlib
import re

import pytest
from rich.cells import cell_len
from textual.errors import NoWidget
from textual.geometry import Region
from textual.widgets import Button, DataTable
from tui_helpers import deterministic_run, run, until

from selfinstruct_tui.tui.app import create_app
from selfinstruct_tui.tui.screens.dialogs import ConfirmScreen, ExportScreen
from selfinstruct_tui.tui.screens.inspector import InspectorScreen
from selfinstruct_tui.tui.screens.seed_editor import SeedEditorScreen
from selfinstruct_tui.tui.screens.seed_manager import SeedFormScreen, SeedManagerScreen

SIZES = [(80, 24), (60, 20), (50, 15)]
SIZE_IDS = ["80x24", "60x20", "50x15"]


def screen_lines(app) -> list[str]:
    """The screen as text, one string a line (what the terminal shows, without styles)."""
    strips = app.screen._compositor.render_strips()
    return ["".join(segment.text for segment in strip) for strip in strips]


def shown(app, region: Region) -> list[str]:
    """The text the screen shows inside `region`, one string a line."""
    lines = screen_lines(app)[region.y:region.y + region.height]
    return [line[region.x:region.x + region.width] for line in lines]


def on_the_finished_run(tmp_path, size: tuple[int, int], check) -> None:
    """`check(app)` of the TUI on the snapshots' deterministic run at `size`, once drawn."""
    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", refresh=0.1)

    async def go():
        async with app.run_test(size=size) as pilot:
            await pilot.pause(0.3)
            check(app)

    run(go())


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (60, 20)], ids=["80x24", "100x30", "60x20"])
def test_the_rounds_table_shows_the_accepted_count(tmp_path, isolated_env, size):
    """At 80x24 the statistics pane ended after "cand.  a"; at 100x30 the chart left the
    rounds table its header only."""

    def check(app) -> None:
        rounds = app.query_one("#rounds", DataTable)
        lines = shown(app, rounds.region)
        assert "acc." in lines[0], lines
        start = lines[0].index("acc.")
        assert lines[1].split()[0] == "4"  # the newest round under the header
        assert lines[1][start:start + 4].strip() == "10", lines  # its accepted count

    on_the_finished_run(tmp_path, size, check)


@pytest.mark.parametrize("size", [(120, 40), (80, 24), (60, 20)], ids=["120x40", "80x24", "60x20"])
def test_rejection_counters_wrap_between_labels_never_inside_one(tmp_path, isolated_env, size):
    """At 80x24 the counters read "blacklisted word: 4  near" / "duplicate: 4  too short:" /
    "4"; each line now holds whole counters."""

    def check(app) -> None:
        reasons = app.query_one("#reasons")
        labels = app.view.counts_labels()
        assert labels == ["blacklisted word: 4", "near duplicate: 4", "too short: 4"]
        lines = [line.strip() for line in shown(app, reasons.region)]
        assert lines and all(lines), lines
        pieces = [piece for line in lines for piece in line.split("  ")]
        worded = {form for label in labels for form in label.forms}
        for piece in pieces:  # whole, in one of its wordings: never cut ("blacklis…: 4")
            assert piece in worded and "…" not in piece, lines
        assert len(pieces) == len(labels)
        # the log's reasons whole: short names in a narrow pane ("blacklisted " left a
        # 13-column pane "blacklisted" and nothing of the candidate)
        log = app.query_one("#rejections")
        logged = [line.strip() for line in shown(app, log.region)
                  if re.search("[a-z]", line)]  # (not a scroll bar's row)
        assert logged and all(re.split(r"\s{2,}", line)[0] in REASON_WORDS
                              for line in logged), logged

    on_the_finished_run(tmp_path, size, check)


async def _inspector(pilot) -> None:
    await pilot.press("enter")


async def _seed_form(pilot) -> None:
    await pilot.press("e")
    await pilot.pause(0.2)
    await pilot.press("e")


async def _seed_raw(pilot) -> None:
    await pilot.press("e")
    await pilot.pause(0.2)
    await pilot.press("r")


async def _export(pilot) -> None:
    await pilot.press("x")


DIALOGS = {"inspector": (_inspector, InspectorScreen), "seed_form": (_seed_form, SeedFormScreen),
           "seed_raw": (_seed_raw, SeedEditorScreen), "export": (_export, ExportScreen)}


def assert_buttons_whole(app) -> None:
    """Every button of the open dialog lies inside the dialog's frame, its label shown."""
    screen = app.screen
    frame = screen.query(".dialog").last()
    inside = frame.region.shrink(frame.styles.border.spacing)
    buttons = list(screen.query(Button))
    assert buttons
    lines = screen_lines(app)
    for button in buttons:
        region, label = button.region, str(button.label)
        assert inside.contains_region(region), (label, region, inside)
        assert any(label in line[region.x:region.right]
                   for line in lines[region.y:region.bottom]), (label, region)


async def open_dialog(app, pilot, name: str) -> None:
    opener, screen_type = DIALOGS[name]
    await pilot.pause(0.3)
    await opener(pilot)
    await pilot.pause(0.5)
    assert isinstance(app.screen, screen_type)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_the_inspector_buttons_are_on_screen_whole(tmp_path, isolated_env, size):
    """Its Close (esc) was cut off at 80x24 (four buttons 3 rows high, wider than the dialog);
    at 60x20 and 50x15 Promote and Close were off the dialog altogether."""
    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", refresh=0.1)

    async def go():
        async with app.run_test(size=size) as pilot:
            await open_dialog(app, pilot, "inspector")
            assert_buttons_whole(app)
            body = app.screen.query_one("#inspector-body")
            assert body.region.height >= 6  # the task's text, not only its frame

    run(go())


@pytest.mark.parametrize("dialog", ["seed_form", "seed_raw", "export"])
def test_dialog_buttons_are_on_screen_at_50x15(tmp_path, isolated_env, dialog):
    """At 50x15 the seed form's, the raw seed editor's and the export dialog's buttons were
    cut in half or off screen (padding, 3-row buttons, 90% height); so were the export
    dialog's once it showed an error naming a long path (eight lines at 50 columns): its
    fields and errors now scroll above them."""
    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", refresh=0.1)

    async def go():
        async with app.run_test(size=(50, 15)) as pilot:
            await open_dialog(app, pilot, dialog)
            assert_buttons_whole(app)
            if dialog == "export":
                missing = tmp_path / "a-folder-that-is-not-there" / "nor-is-this-one"
                app.screen.query_one("#path").value = str(missing / "data.json")
                await pilot.press("enter")
                error = app.screen.query_one("#path-error")
                await until(pilot, lambda: error.has_class("visible"))
                await pilot.pause(0.3)
                assert_buttons_whole(app)
                lines = screen_lines(app)
                assert any("Not exported:" in line for line in lines), lines
                assert app.screen.query_one("#path").region.height >= 1  # (on screen)

    run(go())


@pytest.mark.parametrize("size", [(60, 20), (50, 15)], ids=["60x20", "50x15"])
def test_the_seed_manager_shows_seeds_on_a_small_terminal(tmp_path, isolated_env, size):
    """At 50x15 the filter box, the title's margin and the dialog's padding left the seed
    table no row at all."""
    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", refresh=0.1)

    async def go():
        async with app.run_test(size=size) as pilot:
            await pilot.pause(0.3)
            await pilot.press("e")
            await pilot.pause(0.5)
            assert isinstance(app.screen, SeedManagerScreen)
            table = app.screen.query_one("#seed-table", DataTable)
            rows = [line for line in shown(app, table.region) if "seed_task_" in line]
            assert len(rows) >= 5, shown(app, table.region)
            keys = app.screen.query_one("#seed-keys")
            assert keys.region.bottom <= app.screen.region.bottom

    run(go())


REASON_WORDS = {"blacklisted word", "near duplicate", "too short", "blacklist", "near dup"}


@pytest.mark.parametrize("size", [(100, 30), (80, 24), (60, 20)], ids=["100x30", "80x24", "60x20"])
def test_narrow_panes_word_labels_shorter_never_cut_mid_word(tmp_path, isolated_env, size):
    """At 100x30 the rounds table's rejected cell read "3 (blacklisted", and the pool's info
    line ended "keys: enter…" at 60 columns: a cell the pane cannot show whole names its reason
    short ("3 (blacklist+)") or leaves it out ("3"), and the info line leaves out whole parts."""

    def check(app) -> None:
        rounds = app.query_one("#rounds", DataTable)
        lines = shown(app, rounds.region)
        start = lines[0].find("reject")  # (its header cut at 100x30)
        assert (start >= 0) == (size[0] >= 100), lines  # (60, 80: the pane ends before)
        if start >= 0:
            cell = lines[1][start:].strip(" ▁▂▃▄▅▆▇█")  # (a scroll bar)
            assert re.fullmatch(r"\d+( \((near dup|blacklist|too short)\+?\))?", cell), lines
        info = app.query_one("#pool-info")
        text = shown(app, info.region)[0].strip()
        assert "…" not in text, text
        parts = text.split(" · ")
        whole = [parts[0], "following newest", "by id ↓", "v reverse", "f follow on/off"]
        assert re.fullmatch(r"\d+/\d+ tasks", parts[0]), text
        assert parts == whole[:len(parts)], parts

    on_the_finished_run(tmp_path, size, check)


def test_pack_labels_wraps_between_labels_and_cuts_one_too_wide_before_its_count():
    from selfinstruct_tui.tui.view import reason_count
    from selfinstruct_tui.tui.widgets.panes import pack_labels

    worded = [reason_count("blacklisted_word", 4), reason_count("near_duplicate", 12),
              reason_count("too_short", 4)]
    assert pack_labels(worded, 40) == ["blacklisted word: 4  near duplicate: 12",
                                       "too short: 4"]
    assert pack_labels(worded, 12) == ["blacklist: 4", "near dup: 12", "too short: 4"]
    assert pack_labels(worded, 11) == ["blacklist 4", "near dup 12", "too short 4"]

    labels = ["blacklisted word: 4", "near duplicate: 12", "too short: 4"]
    assert pack_labels(labels, 80) == ["blacklisted word: 4  near duplicate: 12  too short: 4"]
    assert pack_labels(labels, 24) == ["blacklisted word: 4", "near duplicate: 12",
                                       "too short: 4"]
    assert pack_labels(labels, 40) == ["blacklisted word: 4  near duplicate: 12",
                                       "too short: 4"]
    assert pack_labels(labels, 12) == ["blacklis…: 4", "near du…: 12", "too short: 4"]
    assert pack_labels(["a label without a count"], 8) == ["a label…"]
    assert pack_labels(labels, 0) == ["blacklisted word: 4  near duplicate: 12  too short: 4"]


@pytest.mark.parametrize("size", [(110, 30), (120, 40)], ids=["110x30", "120x40"])
def test_the_status_line_cuts_the_run_name_only_as_far_as_it_needs(tmp_path, isolated_env,
                                                                    size):
    """At 110 and 120 columns the run's name was cut to 16 characters ("run-2026…ical-qa"),
    with 1 and 11 columns to spare at the end of the line. It is now cut to fill the line."""
    name = "run-20260512-141503-medical-qa"
    deterministic_run(tmp_path / name)
    app = create_app(tmp_path / name, refresh=0.1)

    async def go():
        async with app.run_test(size=size) as pilot:
            await pilot.pause(0.3)
            line = screen_lines(app)[0]
            shown_name, rest = line[1:].split(" │ ", 1)
            assert rest.startswith("snapshot-model │ finished │ "), line
            assert shown_name.startswith("run-2026") and shown_name.endswith("ical-qa"), line
            assert len(shown_name) > 16 and len(line.rstrip()) == size[0], line

    run(go())


@pytest.mark.parametrize("attach", [False, True], ids=["local", "attached"])
@pytest.mark.parametrize("size", [(120, 40), (80, 24), (60, 18), (50, 15), (40, 12)],
                         ids=["120x40", "80x24", "60x18", "50x15", "40x12"])
def test_the_footer_keeps_quit_and_shows_whole_keys_that_can_act(tmp_path, isolated_env, size,
                                                                   attach):
    """At 60x18 the footer was cut at its end after "p Pause/Resume  s": quit (q) was not
    shown, and on this finished run p and s did nothing but say so. Now the keys that can act
    here are shown whole, the least important giving way first (keys.footer_rank), quit (an
    attached UI's Leave) always; pause, stop and detach are not offered on an ended run."""
    from textual.widgets._footer import FooterKey

    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", refresh=0.1, attach=attach)

    async def go():
        async with app.run_test(size=size) as pilot:
            quit_label = "Leave" if attach else "Quit"
            await until(pilot, lambda: f"q {quit_label}" in screen_lines(app)[-1], timeout=10)
            await pilot.pause(0.2)
            keys = list(app.query(FooterKey))
            shown_keys = [k for k in keys if k.display]
            hidden = [k for k in keys if not k.display]
            labels = {k.description for k in keys}
            assert not {"Pause", "Resume", "Stop", "Detach"} & labels, labels
            line = screen_lines(app)[-1]
            taken: set[int] = set()
            for key in shown_keys:  # each whole, inside the screen, none over another
                region = key.region
                assert region.x >= 0 and region.right <= size[0], (key.description, region)
                assert f"{key.key_display} {key.description}" in line[region.x:region.right]
                columns = set(range(region.x, region.right))
                assert not columns & taken, (key.description, line)
                taken |= columns
            if hidden:  # the least important gave way (equal ranks: the later)
                from selfinstruct_tui.tui.keys import footer_rank

                def rank(key: FooterKey) -> tuple:
                    return footer_rank(key.action), keys.index(key)

                assert max(map(rank, shown_keys)) < min(map(rank, hidden))

    run(go())


@pytest.mark.parametrize("size", [(60, 20), (70, 24), (80, 24)], ids=["60x20", "70x24", "80x24"])
def test_under_80_columns_the_live_panes_share_a_column_their_titles_whole(
        tmp_path, isolated_env, size):
    """At 60x20 the three panes side by side left Current prompts and Rejections 11 columns
    each ("Curren…", "Rejecti…", "blacklis…"): under 80 columns they stack in one column beside
    the statistics, their titles, the state line and every counter whole; from 80 they stay side
    by side."""

    def check(app) -> None:
        prompts = app.query_one("#prompts").region
        rejections = app.query_one("#rejections-pane").region
        stats = app.query_one("#stats").region
        stacked = size[0] < 80
        assert (prompts.x == rejections.x and rejections.y > prompts.y) is stacked
        assert stats.x > max(prompts.x, rejections.x)
        screen = "\n".join(screen_lines(app))
        for title in ("Current prompts", "Rejections", "Round statistics"):
            assert title in screen, screen
        assert "open: none" in "\n".join(shown(app, prompts)), screen
        counters = "\n".join(shown(app, app.query_one("#reasons").region))
        for label in app.view.counts_labels():
            assert label in counters, counters  # in full: the pane is wide enough
        if stacked:  # and a line of the log under them
            log = [line for line in shown(app, app.query_one("#rejections").region)
                   if re.search("[a-z]", line)]
            assert log, screen

    on_the_finished_run(tmp_path, size, check)


async def _confirm(pilot) -> None:  # the inspector's drop asks first
    await pilot.press("enter")
    await pilot.pause(0.3)
    await pilot.press("d")


DIALOGS["confirm"] = (_confirm, ConfirmScreen)
DIALOGS["seed_manager"] = (lambda pilot: pilot.press("e"), SeedManagerScreen)

# the main screen's keys that act nowhere but there
MAIN_ONLY = ["Pause", "Resume", "Stop", "Detach", "Edit seeds", "Export", "Review", "Filter",
             "Maximize", "Theme", "Inspect", "Sort"]


@pytest.mark.parametrize("dialog", sorted(DIALOGS))
def test_a_dialogs_footer_lists_the_dialogs_keys(tmp_path, isolated_env, dialog):
    """With a dialog open the footer still listed the main screen's keys (p Resume, s Stop,
    d Detach, e Edit seeds, x Export), which do nothing there or something else (d drops a
    task in the inspector). It now lists the keys of the dialog on top: its own footer."""
    from textual.widgets._footer import FooterKey

    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", refresh=0.1)

    async def go():
        async with app.run_test(size=(100, 30)) as pilot:
            await open_dialog(app, pilot, dialog)
            await pilot.pause(0.3)
            line = screen_lines(app)[-1]
            active = app.screen.active_bindings
            own = {b.binding.description for b in active.values()}
            assert not [label for label in MAIN_ONLY
                        if f" {label} " in f"{line} " and label not in own], line
            keys = [k for k in app.screen.query(FooterKey) if k.display]
            assert keys, line
            for key in keys:  # the dialog's own keys (not the app's), each whole on the line
                assert active[key.key].node is not app, key.action
                assert f"{key.key_display} {key.description}" in line, line
            escape = app.screen._bindings.key_to_bindings.get("escape")
            if escape:  # the way back is always among them
                assert f"esc {escape[0].description}" in line, line

    run(go())


@pytest.mark.parametrize("dialog", ["seed_form", "export", "inspector", "seed_manager"])
def test_a_notification_never_covers_an_open_dialogs_fields(tmp_path, isolated_env, dialog):
    """In a UI attached to a run whose engine was killed (kill -9), the "Run crashed" toast
    (its resume command, 30 s) covered most of the seed form at 60x20. While a dialog is on
    top, notifications are now said in its notice line above its footer, in the layout: the
    dialog's fields give way to it and none is covered; the notification stays Textual's
    (its toast shows on the main screen if it is still current when the dialog closes)."""
    from textual.widgets._toast import Toast

    from selfinstruct_tui.engine import events as ev

    deterministic_run(tmp_path / "run")
    app = create_app(tmp_path / "run", refresh=0.1, attach=True)

    async def go():
        async with app.run_test(size=(60, 20)) as pilot:
            await open_dialog(app, pilot, dialog)
            app.events.put(ev.Crashed(ts=1_700_000_100.0, pid=4321))
            notice = app.screen.query_one("#dialog-notice")
            await until(pilot, lambda: notice.has_class("visible"))
            await pilot.pause(0.3)
            lines = screen_lines(app)
            assert any("Run crashed: The engine process (pid 4321)" in line
                       for line in lines), lines
            toasts = [t for t in app.screen.query(Toast) if t.visible]
            assert not toasts
            fields = {}  # each field's part on screen (a scrolled one: what its parent shows)
            for field in app.screen.query("Input, TextArea, Checkbox, Select, DataTable, Button, "
                                          "#inspector-body"):
                with contextlib.suppress(NoWidget):
                    fields[field] = app.screen.find_widget(field).visible_region
            assert fields
            for field, region in fields.items():  # none under the notice, no toast's text in any
                assert not region.overlaps(notice.region), (field, region, notice.region)
                assert not any("crashed" in line for line in shown(app, region)), field
            while isinstance(app.screen, type(app.screen)) and app.screen is not \
                    app.screen_stack[0]:
                await pilot.press("escape")
                await pilot.pause(0.2)
            assert any(n.title == "Run crashed" for n in app._notifications)  # (kept)

    run(go())


LISTED_OUTPUT = ("Steps:\n1. Preheat the oven to 200 degrees and wait until it is fully hot before "
                 "you go on.\n   Then grease the tin.\n2. Mix.\n\n   - flour\n"
                 "   - sugar, sifted twice: 細かい砂糖を二回ふるいにかけてください "
                 "🎂🎂🎂🎂🎂🎂🎂🎂🎂🎂🎂🎂🎂🎂\nDone.")


@pytest.mark.parametrize("size", [(60, 36), (100, 40)], ids=["60x36", "100x40"])
def test_the_inspector_shows_an_output_as_written_wrapped_to_the_pane(tmp_path, isolated_env,
                                                                       size):
    """An output written as a numbered list lost its continuation lines' indent ("   Then
    grease the tin." and the wrapped part of a long item went to the pane's left edge), and its
    lines began under the "output:" label, reading as the instance numbers. Each written line
    now keeps its indent from the output's column, a long one goes on under its own text
    (after its list marker), blank lines stay, wide characters (CJK, emoji) wrap whole."""
    from selfinstruct_tui.engine.seeds import Instance
    from selfinstruct_tui.engine.store import RunStore
    from selfinstruct_tui.engine.task import Task

    deterministic_run(tmp_path / "run")
    store = RunStore(tmp_path / "run")
    store.insert_task(Task(id=500, origin="machine", round=4, prompt_id=None,
                           instruction="Bake a cake.", is_classification=False,
                           instances=[Instance("", LISTED_OUTPUT)], max_score=0.2))
    store.close()
    app = create_app(tmp_path / "run", refresh=0.1)

    async def go():
        async with app.run_test(size=size) as pilot:
            await open_dialog(app, pilot, "inspector")
            body = app.screen.query_one("#inspector-body")
            # one character a cell (a wide one and a NUL), cut to the pane's inside
            inside = body.region.shrink(body.styles.border.spacing)
            lines = ["".join(c + "\0" * (cell_len(c) - 1) for c in line)
                     [inside.x - 1:inside.right].replace("\0", "")
                     for line in screen_lines(app)[inside.y:inside.bottom]]
            at = next(n for n, line in enumerate(lines) if "output: Steps:" in line)
            col = lines[at].index("Steps:")

            def starts(line: str) -> int:
                return len(line) - len(line.lstrip(" "))

            text = lines[at:]
            written = LISTED_OUTPUT.split("\n")
            row = 0
            for line in written[1:]:  # each written line from the output's column, as written
                row += 1
                want = line.lstrip(" ")
                indent = len(line) - len(want)
                if not want:
                    assert not text[row].strip()[1:], text  # the blank line stays
                    continue
                hang = indent + (3 if want[:2] in ("1.", "2.") else 2 if want[0] == "-" else 0)
                assert text[row][col + indent:].startswith(want[:6]), (line, text)
                assert starts(text[row][1:]) + 1 == col + indent, (line, text)
                shown_of_it = text[row][col + indent:].rstrip()
                while not want.replace(" ", "").startswith(shown_of_it.replace(" ", "")) or \
                        len(shown_of_it.replace(" ", "")) < len(want.replace(" ", "")):
                    # a wrapped line: it goes on under the text after its marker
                    row += 1
                    more = text[row]
                    assert starts(more[1:]) + 1 == col + hang, (line, text)
                    shown_of_it += " " + more[col + hang:].rstrip()
                    if len(shown_of_it.replace(" ", "")) >= len(want.replace(" ", "")):
                        break
                assert shown_of_it.replace(" ", "") == want.replace(" ", ""), (line, text)

    run(go())
