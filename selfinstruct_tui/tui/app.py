"""The Textual app: it routes. Events go into a `RunView`; panes render the view; keys become
commands for a `RunControl`.

On open, the run's snapshot (one read transaction) loads the view. Then events arrive from the
in-process engine's bus or, when attached, from a `StoreFollower` that builds the engine's own
event types from the store; either way they go onto a SimpleQueue that a timer (`refresh`,
default 0.5 s) drains into the view inside one `batch_update()`. Commands go to the engine, to
the attached engine through the store (`RemoteControl`), or, when no engine runs, to the store
directly (`OfflineControl`): the app itself never writes the store.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.notifications import Notify
from textual.screen import Screen
from textual.widgets import Input, Static

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.config import REFRESH_RANGE, load_user_config, save_user_setting
from selfinstruct_tui.engine.control import (
    DETACH_EXIT,
    Command,
    DropTask,
    EditTask,
    NoEngine,
    OfflineControl,
    Pause,
    RemoteControl,
    ReplaceSeeds,
    Resume,
    RunControl,
    RunState,
    Stop,
    StoreFollower,
    current_seeds,
    read_snapshot,
)
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.errors import ConfigError, UserError
from selfinstruct_tui.engine.exports import DIALOG_WORDING, Exported, ExportRefused, export_run
from selfinstruct_tui.engine.fsutil import atomic_write_text
from selfinstruct_tui.engine.invocation import command_line, with_command
from selfinstruct_tui.engine.seeds import (
    SeedTask,
    seed_to_record,
    seeds_to_jsonl,
    with_seed,
    write_seeds,
)
from selfinstruct_tui.engine.similarity import FALLBACK_NOTICE, NATIVE_AVAILABLE
from selfinstruct_tui.engine.store import RunStore
from selfinstruct_tui.engine.task import Task
from selfinstruct_tui.tui.keys import (
    ATTACHED,
    LOCAL,
    RunCommands,
    bindings,
    commands_engine,
    offered,
)
from selfinstruct_tui.tui.screens.dialogs import (
    ChoiceScreen,
    ConfirmScreen,
    Dialog,
    ExportChoice,
    ExportScreen,
    RunQuestion,
    run_phase,
)
from selfinstruct_tui.tui.screens.inspector import InspectorScreen
from selfinstruct_tui.tui.screens.review import ReviewScreen
from selfinstruct_tui.tui.screens.seed_manager import (
    LAST_SEED_KEPT,
    SeedManagerScreen,
    new_seed_id,
)
from selfinstruct_tui.tui.themes import DEFAULT_THEME, choose_theme, load_themes
from selfinstruct_tui.tui.view import RunView
from selfinstruct_tui.tui.widgets.footer import RunFooter
from selfinstruct_tui.tui.widgets.panes import (
    FilterInput,
    PartsLine,
    PoolPane,
    PromptsPane,
    RejectionsPane,
    StatsPane,
    StatusLine,
    show_review_wide,
)
from selfinstruct_tui.tui.widgets.task_table import HEADER, TaskTable

RUN_SEEDS_FILE = "seeds.jsonl"
ERROR_NOTICE_SECONDS = 10.0  # at most one endpoint-error notification this often
# the task pool's keys its info line names: the footer shows enter, o and c, not these
POOL_KEYS = ("v reverse", "f follow on/off")
GC_FREEZE_ROWS = 10_000  # freeze the long-lived objects each time the pool grows by this many


def create_app(run_dir: str | Path, *, engine: Engine | None = None, attach: bool = False,
               refresh: float | None = None, theme: str | None = None, compact: bool = False,
               seeds_file: str | None = None, embedded: bool = False,
               resume_command: str | None = None,
               notices: list[str] | None = None) -> SelfInstructApp:
    """The app for a run, with the user's settings filling what is not given: the one factory
    for `run`, `attach` and the tests. `notices`: notes shown once the app is up (a resumed
    run's config-file differences). A config file that cannot be read (a new run refuses it
    before this) is a notice: attaching to a run, or resuming one, does not need it. Raises
    ConfigError for a theme (`theme`, else the config file's) that is unknown or broken
    (`choose_theme`): the CLI checks it first, before anything starts."""
    notices = list(notices or [])
    try:
        settings: dict[str, Any] = load_user_config()
    except ConfigError as exc:
        settings = {}
        notices.append(f"The config file is not read (theme and refresh take their defaults): "
                       f"{exc}")
    configured = float(settings.get("refresh", 0.5))
    if not REFRESH_RANGE[0] <= configured <= REFRESH_RANGE[1]:  # as --refresh
        notices.append(f"refresh = {configured:g} in the config file is not 0.05 to 60 "
                       "seconds: 0.5 is used")
        configured = 0.5
    return SelfInstructApp(
        run_dir, engine=engine, attach=attach, refresh=refresh or configured,
        theme=choose_theme(theme, settings), compact=compact, seeds_file=seeds_file,
        embedded=embedded, resume_command=resume_command, notices=notices)


class SelfInstructApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "selfinstruct"
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS: ClassVar[list[BindingType]] = bindings()
    # Classes every screen (dialogs too) takes from the terminal's size, for app.tcss: under 80
    # columns "-narrow", under 100 "-medium"; under 30 rows "-short", under 40 "-mid" (80x24 is
    # medium and short).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (80, "-medium"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-mid"), (40, "-tall")]

    def __init__(self, run_dir: str | Path, *, engine: Engine | None = None,
                 refresh: float = 0.5, theme: str | None = None, compact: bool = False,
                 seeds_file: str | None = None, embedded: bool = False,
                 attach: bool = False, resume_command: str | None = None,
                 notices: list[str] | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.notices = list(notices or [])
        self.engine = engine
        self.attached = attach
        self.refresh_interval = refresh
        self.requested_theme = theme
        self.force_compact = compact
        self.seeds_file = seeds_file
        self.embedded = embedded
        self.events: queue.SimpleQueue[ev.Event] = queue.SimpleQueue()
        self.view = RunView(self.run_dir.name, resume_command=resume_command or
                            command_line("run", "--run-dir", str(self.run_dir)))
        self.reader = RunStore(self.run_dir, readonly=True)
        self.live: RunControl | None = engine if engine is not None else (
            RemoteControl(run_dir) if attach else None)
        self.offline = OfflineControl(self.run_dir, self.events.put)
        self.follower: StoreFollower | None = None
        self.engine_thread: threading.Thread | None = None
        self._last_error_note = 0.0
        self._asking_quit = False  # the quit question is open
        self._keys_state: str | None = None  # the run's state the keys were last offered for
        self._theme_ready = False
        self._seeds_sent: list[SeedTask] | None = None  # the seed set this app sent last
        self._seeds_before: list[dict] | None = None  # the store's set when it was sent
        self._frozen_rows = 0  # the pool's size at the last gc.freeze (_freeze_long_lived)
        self._export_choice: ExportChoice | None = None  # the export dialog's, when last closed
        if engine is not None:
            engine.bus.subscribe(self.events.put)
        # The history loads while Textual starts (SQLite reads without the GIL): on_mount joins.
        self._history: dict[str, Any] = {}
        self._history_thread = threading.Thread(target=self._load_history, daemon=True,
                                                name="history")
        self._history_thread.start()

    def _load_history(self) -> None:
        """Read the run's snapshot and load the view (Textual-free), off the UI thread."""
        try:
            store = RunStore(self.run_dir, readonly=True)
            try:
                snapshot = read_snapshot(store)
            finally:
                store.close()
            self.view.load(snapshot, embedded=self.embedded)
            self._history["snapshot"] = snapshot
        except BaseException as exc:  # re-raised on the UI thread by on_mount
            self._history["error"] = exc

    @property
    def state(self) -> str:
        return self.view.state

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        # why the run is not going (a pause by errors, a crash, a failed end): shown only then
        yield Static("", id="run-note", markup=False)
        with Horizontal(id="main"):
            with PoolPane(id="left"):
                yield Static(HEADER, id="pool-header")
                yield TaskTable(id="pool")
                yield PartsLine(id="pool-info")
                yield Static("", id="pool-review")
                yield FilterInput(placeholder="filter tasks by text (enter/esc to close)",
                                  id="filter")
            with Vertical(id="right"):
                # the two live panes together: side by side in small terminals, one above the
                # other under 80 columns (app.tcss)
                with Vertical(id="live"):
                    yield PromptsPane(id="prompts")
                    yield RejectionsPane(id="rejections-pane")
                yield StatsPane(id="stats")
        yield RunFooter()

    def on_mount(self) -> None:
        themes, problems = load_themes()
        for theme in themes:
            self.register_theme(theme)
        if problems:
            self.notify("Some theme files were skipped:\n" + "\n".join(problems),
                        title="Themes", severity="warning", timeout=15)
        wanted = self.requested_theme or DEFAULT_THEME
        if wanted in self.available_themes:
            self.theme = wanted
        else:
            self.notify(f"Unknown theme {wanted!r}; available: "
                        f"{', '.join(sorted(self.available_themes))}", severity="warning")
            self.theme = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self._theme_ready = True
        # Direct references: queries would miss them while a modal is open or a pane is
        # maximized (both narrow what the screen's DOM queries see).
        self.status_line = self.query_one(StatusLine)
        self.run_note = self.query_one("#run-note", Static)
        self._note_shown = ""
        self.table = self.query_one(TaskTable)
        self.prompts_pane = self.query_one(PromptsPane)
        self.rejections_pane = self.query_one(RejectionsPane)
        self.stats_pane = self.query_one(StatsPane)
        self.pool_info = self.query_one("#pool-info", PartsLine)
        self.pool_review = self.query_one("#pool-review", Static)
        self.filter_box = self.query_one("#filter", FilterInput)
        self.watch(self.filter_box, "value", self._filter_typed, init=False)
        self.watch(self.table, "summary", self._show_pool_info, init=False)
        self.query_one("#left").border_title = "Task pool"
        self._apply_compact(self.size.width, self.size.height)
        self._history_thread.join()
        if "error" in self._history:
            raise self._history["error"]
        snapshot = self._history.pop("snapshot")
        if self.engine is not None:
            self.view.state = self.view.status.state = RunState.STARTING
        added, _ = self.view.take_pool_changes()
        self.table.load(added)
        self._freeze_long_lived()
        self._render()
        self.table.focus()
        self.set_interval(self.refresh_interval, self.drain_events)
        if self.engine is not None:
            self.engine_thread = self.engine.start_thread()
            if not NATIVE_AVAILABLE:
                self.notify(FALLBACK_NOTICE, title="Slow near-duplicate filter",
                            severity="warning", timeout=20)
        for notice in self.notices:
            self.notify(notice, title="Note", severity="warning", timeout=30, markup=False)
        if self.attached:
            self.follower = StoreFollower(snapshot, self.events.put,
                                          interval=min(0.05, self.refresh_interval))
            self.follower.start()
            self.sub_title = "attached"

    def on_notify(self, event: Notify) -> None:
        """While a dialog is on top, a notification is said in its notice line (`Dialog`),
        where it covers none of the dialog's fields (after Textual's own handler added it)."""
        if isinstance(self.screen, Dialog):
            self.call_later(self.screen.show_notice)

    def on_resize(self, event: Any) -> None:
        self._apply_compact(event.size.width, event.size.height)

    def _apply_compact(self, width: int, height: int) -> None:
        self.set_class(self.force_compact or width < 100 or height < 30, "compact")

    def watch_theme(self, theme: str) -> None:
        if self._theme_ready:
            try:
                save_user_setting("theme", theme)
            except OSError:
                pass

    # -- events -----------------------------------------------------------------------------------
    def drain_events(self) -> None:
        batch: list[ev.Event] = []
        try:
            while len(batch) < 50_000:
                batch.append(self.events.get_nowait())
        except queue.Empty:
            pass
        view = self.view
        if batch:
            with self.batch_update():
                view.apply_all(batch)
                try:
                    self._render()
                except NoMatches:
                    # A tick during shutdown: Textual takes the panes' children down while
                    # timers still run (`_running` is False from the start of App._shutdown in
                    # the pinned textual). Anything else is a real missing widget.
                    if self._running:
                        raise
                    return
        self.status_line.show(view.status)
        for message, title, severity in view.take_notices():
            if title == "Endpoint":
                now = time.monotonic()
                if now - self._last_error_note < ERROR_NOTICE_SECONDS:
                    continue
                self._last_error_note = now
            self.notify(message, title=title, severity=severity,  # type: ignore[arg-type]
                        timeout=30 if severity == "error" else 10)

    def _render(self) -> None:
        """Redraw the panes whose part of the view changed."""
        view = self.view
        dirty, view.dirty = view.dirty, set()
        if "pool" in dirty:
            added, removed = view.take_pool_changes()
            for task_id in removed:
                self.table.remove_task(task_id)
            if added:
                self.table.add_rows(added)
                self._freeze_long_lived()
        if "prompts" in dirty:
            self.prompts_pane.show(view)
        if "rejections" in dirty:
            self.rejections_pane.show(view)
        if "stats" in dirty:
            self.stats_pane.show(view)
            show_review_wide(self.pool_review, view)
        self.status_line.show(view.status)
        if view.state != self._keys_state:  # the keys that need an engine come and go
            self._keys_state = view.state
            for screen in self.screen_stack:  # (the footer's screen is under any dialog)
                screen.refresh_bindings()
            self._withdraw_stale_questions(view.state)
        note = view.note()
        if note != self._note_shown:
            self._note_shown = note
            self.run_note.update(note)
            self.run_note.set_class(bool(note), "visible")

    def _withdraw_stale_questions(self, state: str) -> None:
        """Close a question about the run (stop, quit, detach) written for another phase of it
        than the run is in now (`run_phase`), and say so: a question that read "The run is
        still going" stayed open over a finished run."""
        phase = run_phase(state)
        for screen in self.screen_stack:
            if isinstance(screen, RunQuestion) and screen.asked_in not in (None, phase):
                screen.withdraw()
                again = f"; press {screen.key} again to be asked anew" if phase != "ended" \
                    else ""
                self.notify(f"Question closed unanswered: the run is {state} now{again}.",
                            severity="warning", markup=False)

    def _freeze_long_lived(self) -> None:
        """Take the objects alive now (the pool's rows and their indexes, the widgets) out of
        the cyclic garbage collector's sight (gc.freeze), each time the pool has grown by
        GC_FREEZE_ROWS rows. A full collection walks every tracked object: at 100k tasks it
        took ~125 ms, and one landed in a key press every few keys. Frozen objects are still
        freed by reference counting, but a cycle among them is never collected: the young
        generations are collected first, and small pools (tests, short runs) never freeze."""
        rows = len(self.table.rows)
        if rows - self._frozen_rows < GC_FREEZE_ROWS:
            return
        gc.collect(1)
        gc.freeze()
        self._frozen_rows = rows

    def _show_pool_info(self, summary: tuple[int, int, str]) -> None:
        """The task pool's info line (a watcher of TaskTable.summary)."""
        shown, total, description = summary
        # Most important first: a narrow pane leaves out the end, whole parts: the pool's two
        # keys the footer does not show (in `?` too; "keys: enter / o c v f" said nothing to a
        # new user), the sort, follow or hold; what narrows the view stays longest.
        parts = description.split(" · ")
        narrowing = [p for p in parts if p.startswith(("origin ", "filter "))]
        self.pool_info.show((f"{shown:,}/{total:,} tasks", *narrowing,
                             *[p for p in parts if p not in narrowing], *POOL_KEYS))

    # -- commands ---------------------------------------------------------------------------------
    @property
    def engine_active(self) -> bool:
        return self.live is not None and self.state in (RunState.STARTING, RunState.RUNNING,
                                                        RunState.PAUSED)

    def _send(self, command: Command) -> None:
        """To the running engine, or straight to the store when none runs (`_deliver`)."""
        self._deliver(command)

    def _deliver(self, command: Command) -> bool:
        """To the running engine, or straight to the store when none runs. Pause, resume and
        stop need an engine: without one they are refused, said (`_say_not_running`), and
        False is returned. An attached UI's engine that is gone since the follower last
        looked refuses them too (`NoEngine`): never queued for nobody."""
        state = self.state
        if self.engine_active:
            assert self.live is not None
            try:
                self.live.send(command)
                return True
            except NoEngine as gone:
                state = gone.state  # (an end, not a crash: the follower brings it shortly)
                if gone.state == RunState.CRASHED:
                    self.view.apply(ev.Crashed(gone.pid))
                    self._render()
        if isinstance(command, (Pause, Resume, Stop)):
            self._say_not_running(state)
            return False
        self.offline.send(command)
        return True

    def _no_engine(self) -> str:
        """Why no engine takes commands, for the notes of keys that send them."""
        if self.state == RunState.CRASHED:
            return "the engine process is gone (killed or crashed)"
        return "no engine runs"

    def _say_not_running(self, state: str | None = None) -> None:
        """Pause, resume or stop without an engine to take it."""
        state = state or self.state
        if state == RunState.CRASHED:
            self.notify(with_command("Nothing to pause or stop: the engine process is gone "
                                     "(killed or crashed). Resume the run with:",
                                     self.view.resume_command),
                        title="Run crashed", severity="warning", markup=False)
        else:
            self.notify(f"The run is not running ({state}).", severity="warning")

    def action_pause(self) -> None:
        self._command_engine(Pause())

    def action_resume(self) -> None:
        self._command_engine(Resume())

    def _command_engine(self, command: Command) -> None:
        """`command` to the engine that drives the run, or say there is none."""
        if not self.engine_active:
            self._say_not_running()
            return
        self._send(command)

    def action_stop(self) -> None:
        if not self.engine_active:
            self._say_not_running()
            return
        jobs = self.view.submitted_batches
        phase = run_phase(self.state)
        if not jobs:
            # asked, as quitting is: one `s` too many (the review's "skip" key) stopped the run
            if phase == "paused":
                question, no = ("Stop the paused run? Requests held by the pause are not sent; "
                                "everything accepted is kept."), "Stay paused"
            else:
                question, no = ("Stop the run? Work in flight gets a bounded grace and is "
                                "kept."), "Keep running"
            self.push_screen(ConfirmScreen(
                with_command(f"{question} Resume it later with:", self.view.resume_command),
                yes="Stop", no=no, asked_in=phase, key="s"),
                lambda yes: self._stop() if yes else None)
            return

        def answer(choice: str | None) -> None:
            if choice in ("cancel", "keep"):
                self._stop(cancel_batches=choice == "cancel")

        if self.view.status.command:
            question = (f"Stop the run: {len(jobs)} batch command job(s) are running. Cancel "
                        "them (the command is stopped)? Kept, they go on on their own; the next "
                        "session reads their output files. Escape: go on running.")
        else:
            question = (f"Stop the run: {len(jobs)} batch job(s) are pending at the endpoint. "
                        "Cancel them? Kept, they go on (and are paid); the next session reads "
                        "their answers by polling them. Escape: go on running.")
        self.push_screen(ChoiceScreen(question,
            [("cancel", "c", "Cancel, stop"), ("keep", "k", "Keep, stop"),
             ("back", "escape", "Go on")], asked_in=phase, key="s"), answer)

    def _stop(self, cancel_batches: bool = False) -> None:
        if not self._deliver(Stop(cancel_batches=cancel_batches)):
            return
        self.notify(with_command("Stopping: requests in flight may finish (a bounded grace), "
                                 "then the run stops. Resume it later with:",
                                 self.view.resume_command))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's palette commands but its Quit ("as soon as possible"): the key table's
        Quit (RunCommands) is the one, and it asks while the run is going."""
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only the keys valid in this app's mode (keys.py): an attached UI has no `d` (the
        run already runs in the background) and leaves (`leave`) where a local one quits.
        The keys that command the engine (p, s, d) only while one drives the run (starting,
        running, paused): None (shown disabled) while it stops, False (hidden) once it has
        ended (finished, stopped, failed, crashed), where they did nothing but say so. p is
        Pause while the run goes and Resume while it is paused."""
        if not offered(action, ATTACHED if self.attached else LOCAL):
            return False
        if commands_engine(action) and not self.engine_active:
            return None if self.state == RunState.STOPPING and action != "resume" else False
        if action in ("pause", "resume"):  # p: the one that applies now
            return (action == "resume") == (self.state == RunState.PAUSED)
        return True

    def action_leave(self) -> None:
        """An attached UI's q: closes it; the run goes on (`selfinstruct attach` says how to
        come back or stop it)."""
        self._finish_and_exit()

    async def action_quit(self) -> None:
        """q, ctrl+q (Textual's own quit key, rebound in keys.py) and the palette's Quit: asks
        while the run is going, since quitting stops it (ctrl+q quit at once: it stopped a
        run that q would have asked about)."""
        self.action_quit_app()

    def action_quit_app(self) -> None:
        if self.attached or not self.engine_active:  # leaving an attached UI never stops a run
            self._finish_and_exit()
            return
        if self._asking_quit:  # a second ctrl+q while the question is open: it is still open
            return

        def answer(yes: bool | None) -> None:
            self._asking_quit = False
            if yes:
                self._finish_and_exit()

        jobs = self.view.submitted_batches
        where = "keep running on their own" if self.view.status.command else \
            "stay pending at the endpoint (and are paid)"
        kept = f"Its {len(jobs)} pending batch job(s) {where}: the next session reads them (s " \
               "stops with the choice to cancel them)." if jobs else ""
        self._asking_quit = True
        if self.state == RunState.PAUSED:
            question = ("The run is paused. Stop it and quit? Quitting stops the run (it "
                        "does not stay paused; d keeps it paused in the background): requests "
                        "held by the pause are not sent, everything accepted is kept.")
            no = "Stay paused"
        else:
            question = ("The run is still going. Stop it and quit? Work in flight gets a "
                        "bounded grace and is kept.")
            no = "Keep running"
        question = with_command(f"{question} Resume it later with:", self.view.resume_command,
                                kept)
        self.push_screen(ConfirmScreen(question, yes="Stop and quit", no=no,
                                       asked_in=run_phase(self.state), key="q"), answer)

    @work(thread=True, exclusive=True, group="quit")
    def _finish_and_exit(self, code: int = 0) -> None:
        if self.engine is not None and self.engine_thread is not None:
            self.engine.stop()
            # Threads cannot be killed: wait a bounded time. Everything accepted is committed.
            self.engine_thread.join(timeout=self.engine.config.stop_grace + 20)
        self.call_from_thread(self.exit, code)

    def action_detach(self) -> None:
        """Hand the run to a background process: stop here cleanly, resume detached. Not
        offered to an attached UI (keys.py): its run already runs in the background."""
        if not self.engine_active:
            self.notify(with_command("The run is not running; start it detached with:",
                                     command_line("run", "--detach", "--run-dir",
                                                  str(self.run_dir))),
                        severity="warning", markup=False)
            return

        def answer(yes: bool | None) -> None:
            if yes:  # (a run that ends while this is asked withdraws the question)
                self._finish_and_exit(DETACH_EXIT)

        if self.state == RunState.PAUSED:
            question = ("Move the paused run to a background process? It stays paused there: "
                        "nothing is sent until you attach and press p. Attach with:")
        else:
            question = ("Move the run to a background process? In-flight work finishes here, "
                        "then a detached process resumes the run. Watch it with:")
        self.push_screen(ConfirmScreen(with_command(question, command_line(
            "attach", str(self.run_dir))),
                                       yes="Detach", no="Stay",
                                       asked_in=run_phase(self.state), key="d"), answer)

    def action_edit_seeds(self) -> None:
        """The seed manager on the set the next round uses (the pending set, if any); only
        from the main screen (not on top of a dialog, e.g. its own form)."""
        if len(self.screen_stack) > 1:
            return
        seeds, pending = self._current_seeds()
        config = self.reader.config()
        self.push_screen(SeedManagerScreen(
            seeds, pending, self._send_seeds, self.seeds_file,
            fetch=lambda: self._current_seeds()[0],
            similarity=(config.threshold, config.tokenizer) if config else (0.7, "rouge")))

    def _current_seeds(self) -> tuple[list[SeedTask], bool]:
        """(seeds, pending): the set the next round uses, as `current_seeds` reads it from the
        store; but the in-process engine records a set on its own thread, a moment after
        `send`, so while the store still shows the set it had when this app sent its last
        one, that sent set is the one. Once the store shows anything else (the sent set, or
        a set another UI sent since), the store's is: holding on to the sent set undid the
        other UI's edit at this app's next one."""
        seeds, pending = current_seeds(self.reader)
        sent = self._seeds_sent
        if self.engine is not None and sent is not None and self.engine_active and \
                [seed_to_record(s) for s in seeds] == self._seeds_before:
            return list(sent), True
        self._seeds_sent = self._seeds_before = None
        return seeds, pending

    def _send_seeds(self, seeds: list[SeedTask], write_back: bool = False,
                    done: str | None = None) -> None:
        """Send a whole new seed set (one ReplaceSeeds) and keep a copy as seeds.jsonl in the
        run directory (and in the run's seed file when `write_back`). `done`: what the
        notification says happened (default: "N seeds saved")."""
        atomic_write_text(self.run_dir / RUN_SEEDS_FILE, seeds_to_jsonl(seeds), mode=0o600)
        if write_back and self.seeds_file:
            try:
                write_seeds(self.seeds_file, seeds)
            except OSError as exc:  # (its folder removed or made read-only since the start)
                self.notify(f"The seed file {self.seeds_file} could not be written back "
                            f"({exc.strerror or exc}); the run has the new seeds all the same "
                            f"(kept in {self.run_dir / RUN_SEEDS_FILE}).", severity="error",
                            markup=False, timeout=30)
        self._seeds_before = [seed_to_record(s) for s in current_seeds(self.reader)[0]]
        self._seeds_sent = list(seeds)
        self._send(ReplaceSeeds(tuple(seeds)))
        self.notify(f"{done or f'{len(seeds)} seeds saved'}; " + (
            "this takes effect at the next round." if self.engine_active else
            f"applied now ({self._no_engine()}); the run uses them when it resumes."))

    def _promote(self, task: Task) -> None:
        """A machine task becomes a seed (with its instances) at the next round; it leaves the
        machine pool then."""
        if task.is_seed:
            self.notify(f"Task #{task.id} is already a seed.", severity="warning")
            return
        seeds, _ = self._current_seeds()
        if any(s.source_task == task.id for s in seeds):
            self.notify(f"Task #{task.id} is already promoted; it becomes a seed at the next "
                        "round.", severity="warning")
            return
        sid = f"promoted_{task.id}"
        if any(s.id == sid for s in seeds):
            sid = new_seed_id(seeds, sid)
        seed = SeedTask(sid, sid, task.instruction, list(task.instances), task.is_classification,
                        "promoted", task.id)
        self._send_seeds([*seeds, seed], done=f"Task #{task.id} promoted to seed {sid} (it "
                                              "leaves the machine pool)")

    def _demote(self, task: Task) -> None:
        """A seed promoted from the pool goes back to being its machine task at the next round."""
        if not task.is_seed or task.seed_origin != "promoted" or task.source_task is None:
            self.notify(f"Task #{task.id} did not come from the pool: only promoted seeds can be "
                        "demoted (delete other seeds in the seed manager, key e).",
                        severity="warning")
            return
        seeds, _ = self._current_seeds()
        rest = [s for s in seeds if s.source_task != task.source_task]
        if len(rest) == len(seeds):
            self.notify(f"Seed {task.seed_id} is already demoted; machine task "
                        f"#{task.source_task} returns at the next round.", severity="warning")
            return
        if not rest:
            self.notify("A run needs at least one seed: add another before demoting this one.",
                        severity="warning")
            return
        self._send_seeds(rest, done=f"Seed {task.seed_id} demoted (machine task "
                                    f"#{task.source_task} returns to the pool)")

    # A seed is changed in the inspector as in the seed manager: through the seed set, which
    # applies at the next round. Dropping or editing its task row alone was undone by a pending
    # set (the next round applied the set as it was), and a dropped promoted seed left its
    # machine task in neither pool.
    def _delete_seed(self, task: Task) -> None:
        """`task` (a seed of the pool) leaves the seed set at the next round (a promoted one's
        machine task returns to the pool), as the seed manager's delete does."""
        sid = task.to_seed().id
        seeds, _ = self._current_seeds()
        rest = [s for s in seeds if s.id != sid]
        if len(rest) == len(seeds):
            self.notify(f"Seed {sid} is already deleted from the seed set the next round uses.",
                        severity="warning")
            return
        if not rest:
            self.notify(LAST_SEED_KEPT, severity="warning")
            return
        back = (f"; machine task #{task.source_task} returns to the pool"
                if task.seed_origin == "promoted" and task.source_task is not None else "")
        self._send_seeds(rest, done=f"Seed {sid} (task #{task.id}) deleted from the seed "
                                    f"set{back}")

    def _edit_seed(self, task: Task, data: dict) -> None:
        """The inspector's edit of a seed (`data`: instruction, instances, is_classification)
        replaces that seed in the seed set the next round uses (added back if a pending edit
        deleted it, as the seed manager's form does)."""
        old = task.to_seed()
        seeds, _ = self._current_seeds()
        found = next((s for s in seeds if s.id == old.id), None)
        current = found or old
        seed = SeedTask(current.id, current.name, data["instruction"], list(data["instances"]),
                        data["is_classification"], current.origin, current.source_task)
        if found is not None and seed_to_record(seed) == seed_to_record(found):
            self.notify(f"Seed {old.id} is unchanged: nothing to save.")
            return
        self._send_seeds(with_seed(seeds, seed), done=f"Seed {seed.id} (task #{task.id}) saved")

    def on_task_table_inspect(self, message: TaskTable.Inspect) -> None:
        task = self.reader.task(message.task_id)
        if task is None:
            return
        prompt = self.reader.prompt(task.prompt_id) if task.prompt_id else None

        def done(result: tuple[str, dict] | None) -> None:
            if result is None:
                return
            action, data = result
            if action == "drop" and task.is_seed:
                self._delete_seed(task)
            elif action == "edit" and task.is_seed:
                self._edit_seed(task, data)
            elif action == "drop":
                self._send(DropTask(task.id))
                self.notify(f"Task #{task.id} dropped.")
            elif action == "edit":
                self._send(EditTask(task.id, data["instruction"], tuple(data["instances"]),
                                    data["is_classification"]))
                self.notify(f"Task #{task.id} saved.")
            elif action == "promote":
                self._promote(task)
            elif action == "demote":
                self._demote(task)

        answered_by = [] if task.is_seed else self.reader.answered_by(task.id, task.prompt_id)
        self.push_screen(InspectorScreen(task, prompt.prompt if prompt else None,
                                         prompt.response if prompt else None, answered_by,
                                         self._seed_as_pending(task)), done)

    def _seed_as_pending(self, task: Task) -> Task | None:
        """A seed's task as the seed set the next round uses holds it, when an edit of it is
        pending (None: as it is): the inspector's editor opens on that, so that its save
        builds on the pending edit (it opened on the row as last applied, and saved that over
        the pending edit)."""
        if not task.is_seed:
            return None
        sid = task.to_seed().id
        current = next((s for s in self._current_seeds()[0] if s.id == sid), None)
        if current is None or seed_to_record(current) == seed_to_record(task.to_seed()):
            return None
        return dataclasses.replace(task, instruction=current.instruction,
                                   instances=list(current.instances),
                                   is_classification=current.is_classification)

    def action_export(self) -> None:
        """The export dialog, holding the session's last choice (format, path, box): exporting
        twice, or again after a cancel, retypes nothing. The export runs in `_export`."""
        def closed(choice: ExportChoice | None) -> None:
            if choice is not None:
                self._export_choice = choice

        self.push_screen(ExportScreen(str(self.run_dir), self._export, self._export_choice),
                         closed)

    @work(thread=True, group="export")
    def _export(self, dialog: ExportScreen, choice: ExportChoice) -> None:
        """Write `choice`'s export in a thread (a long one never holds the screen; the engine
        may be writing the store meanwhile: the export reads it through its own read-only
        connection). An error goes back to the dialog, beside its field; the outcome is a
        notification once the dialog is closed (on success, or when it was closed earlier)."""
        try:
            exported = self._write_export(choice)
        except ExportRefused as exc:
            error, setting = str(exc), exc.setting
        except (ValueError, UserError) as exc:
            error, setting = str(exc), None
        except Exception as exc:  # noqa: BLE001  (a broken store: said, the TUI and its run go on)
            error, setting = f"{type(exc).__name__}: {exc}", None
        else:
            self.call_from_thread(self._exported, dialog, choice, exported)
            return
        self.call_from_thread(self._export_failed, dialog, error, setting)

    def _write_export(self, choice: ExportChoice) -> Exported:
        """export_run with the dialog's words; ExportRefused naming the setting at fault. A
        path starting with "~" is in the home folder, as a shell would have it (the dialog
        made a "~" folder's path of it, refused as a folder that does not exist)."""
        fmt, path = choice.fmt, os.path.expanduser(choice.path)
        if path == "-":  # (export_run's stdout: under the TUI it went nowhere, said "Exported")
            raise ExportRefused(with_command(
                "'-' is standard output, which this screen holds; name a file. To write to "
                "standard output, run:", command_line("export", str(self.run_dir), "-o", "-")),
                "path")
        try:
            return export_run(self.run_dir, fmt, path or None,
                              reviewed_only=choice.reviewed_only,
                              wording=DIALOG_WORDING)  # the dialog's fields, not flags
        except OSError as exc:  # its message named the temporary file, not the user's path
            raise ExportRefused(f"{path or 'the export'} cannot be written "
                                f"({exc.strerror or exc}); choose another path.", "path") from exc

    def _exported(self, dialog: ExportScreen, choice: ExportChoice, exported: Exported) -> None:
        dialog.finished()
        replaced = (f" (it replaced what was there: {', '.join(p.name for p in exported.replaced)})"
                    if exported.replaced else "")
        self.notify(f"Exported {exported.counted} ({choice.fmt}) to {exported.path}{replaced}",
                    markup=False)
        for note in exported.notes:
            self.notify(note, severity="warning", markup=False)

    def _export_failed(self, dialog: ExportScreen, error: str, setting: str | None) -> None:
        if not dialog.finished(error, setting):  # closed while it ran: nowhere else to say it
            self.notify(f"Export failed: {error}", severity="error", markup=False)

    def action_review(self) -> None:
        """The quality review of a sample of machine tasks (screens/review.py); its answers go
        through `_send` like every other change, and come back as `ReviewUpdated` events."""
        if isinstance(self.screen, ReviewScreen):
            return
        config = self.reader.config()
        machine = [(row.id, row.instances) for row in self.view.rows.values()
                   if row.origin == "machine"]
        self.push_screen(ReviewScreen(self.view.review_records(), machine,
                                      config.random_seed if config else None, self.reader.task,
                                      self._send))

    def action_filter(self) -> None:
        box = self.filter_box
        box.add_class("visible")
        box.focus()

    def _filter_typed(self, value: str) -> None:
        """The filter box's text changed (a watcher, called as the key is handled): filter the
        pool now, so that the frame showing the typed character shows the filtered pool. The
        Input.Changed message arrived after that frame, and the pool took a frame of its own
        (frames are drawn on a 60 Hz grid: up to ~17 ms more per key)."""
        self.table.set_filter(value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.action_close_filter(keep=True)

    def action_close_filter(self, keep: bool = False) -> None:
        """Escape: closes the filter box, or else the help panel when it is open."""
        box = self.filter_box
        if not box.has_class("visible"):
            if self.screen.query("HelpPanel"):
                self.action_hide_help_panel()
            return
        if not keep:
            box.value = ""
        box.remove_class("visible")
        self.table.focus()

    def action_toggle_maximize(self) -> None:
        screen = self.screen
        if screen.maximized is not None:
            screen.minimize()
            return
        target = self.focused
        # Maximize the pane that holds the focus (or the task pool).
        for pane_id in ("#prompts", "#rejections-pane", "#stats", "#left"):
            pane = self.query_one(pane_id)
            if target is not None and (target is pane or pane in target.ancestors):
                screen.maximize(pane, container=False)
                return
        screen.maximize(self.query_one("#left"), container=False)

    def action_next_chart(self) -> None:
        self.stats_pane.next_chart(self.view)

    def action_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def on_unmount(self) -> None:
        if self.follower is not None:
            self.follower.close()
        self.reader.close()
        if self._frozen_rows:
            gc.unfreeze()  # the process goes on (tests, an embedding program): collect as usual
