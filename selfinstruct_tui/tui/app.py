"""The Textual app: live panes over a run while a worker thread runs the bootstrap loop.

The engine never calls into widgets. Its events go onto a SimpleQueue that the app drains on a timer
(`refresh`, default 0.5 s) and applies inside one `batch_update()`; commands go back through the
engine's thread-safe methods. Opening an existing run shows its whole history from the store.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, Static

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.config import save_user_setting
from selfinstruct_tui.engine.control import DETACH_EXIT, RemoteControl, StoreFollower, run_status
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.exports import export_run
from selfinstruct_tui.engine.filters import RejectionReason
from selfinstruct_tui.engine.fsutil import atomic_write_text
from selfinstruct_tui.engine.seeds import seeds_to_jsonl, write_seeds
from selfinstruct_tui.engine.similarity import FALLBACK_NOTICE, NATIVE_AVAILABLE
from selfinstruct_tui.engine.store import RunStore
from selfinstruct_tui.tui.commands import RunCommands
from selfinstruct_tui.tui.screens.dialogs import ConfirmScreen, ExportScreen
from selfinstruct_tui.tui.screens.inspector import InspectorScreen
from selfinstruct_tui.tui.screens.seed_editor import SeedEdit, SeedEditorScreen
from selfinstruct_tui.tui.themes import DEFAULT_THEME, load_themes
from selfinstruct_tui.tui.widgets.panes import (
    PoolPane,
    PromptsPane,
    RejectionsPane,
    StatsPane,
    StatusLine,
)
from selfinstruct_tui.tui.widgets.task_table import HEADER, Row, TaskTable

RUN_SEEDS_FILE = "seeds.jsonl"


class SelfInstructApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "selfinstruct"
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause/Resume"),
        Binding("e", "edit_seeds", "Edit seeds"),
        Binding("s", "stop", "Stop"),
        Binding("x", "export", "Export"),
        Binding("t", "change_theme", "Theme"),
        Binding("slash", "filter", "Filter"),
        Binding("m", "toggle_maximize", "Maximize"),
        Binding("question_mark", "help", "Help"),
        Binding("d", "detach", "Detach"),
        Binding("q", "quit_app", "Quit"),
        Binding("escape", "close_filter", show=False),
    ]

    def __init__(self, run_dir: str | Path, *, engine: Engine | None = None,
                 refresh: float = 0.5, theme: str | None = None, compact: bool = False,
                 seeds_file: str | None = None, embedded: bool = False,
                 attach: bool = False, resume_command: str | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.resume_command = resume_command or f"selfinstruct run --run-dir {self.run_dir}"
        self.engine = engine
        # Attached to a run another process drives: commands go through the store's commands
        # table, events come from the rows the engine commits.
        self.attached = attach
        self.control = engine if engine is not None else (RemoteControl(run_dir) if attach
                                                          else None)
        self.follower: StoreFollower | None = None
        self.refresh_interval = refresh
        self.requested_theme = theme
        self.force_compact = compact
        self.seeds_file = seeds_file
        self.embedded = embedded
        self.events: queue.SimpleQueue[ev.Event] = queue.SimpleQueue()
        self.reader = RunStore(self.run_dir, readonly=True)
        self.engine_thread: threading.Thread | None = None
        self.state = "finished" if engine is None else "starting"
        self._last_error_note = 0.0
        self._sent_generate: dict[int, ev.PromptSent] = {}
        self.tokens_before = 0
        self.cost_before = 0.0
        self.seed_count = 0
        self._theme_ready = False
        if engine is not None:
            engine.bus.subscribe(self.events.put)

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Horizontal(id="main"):
            with PoolPane(id="left"):
                yield Static(HEADER, id="pool-header")
                yield TaskTable(id="pool")
                yield Static("", id="pool-info")
                yield Input(placeholder="filter tasks by text (enter/esc to close)",
                            id="filter")
            with Vertical(id="right"):
                yield PromptsPane(id="prompts")
                yield RejectionsPane(id="rejections-pane")
                yield StatsPane(id="stats")
        yield Footer()

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
        self.table = self.query_one(TaskTable)
        self.prompts_pane = self.query_one(PromptsPane)
        self.rejections_pane = self.query_one(RejectionsPane)
        self.stats_pane = self.query_one(StatsPane)
        self.prompts_pane.attached = self.attached
        self.pool_info = self.query_one("#pool-info", Static)
        self.filter_box = self.query_one("#filter", Input)
        self.query_one("#left").border_title = "Task pool"
        self._apply_compact(self.size.width, self.size.height)
        self._load_history()
        self.table.focus()
        self.set_interval(self.refresh_interval, self.drain_events)
        if self.engine is not None:
            self.engine_thread = self.engine.start_thread()
            if not NATIVE_AVAILABLE:
                self.notify(FALLBACK_NOTICE, title="Slow near-duplicate filter",
                            severity="warning", timeout=20)
        if self.attached:
            self.follower = StoreFollower(self.run_dir, self.events.put,
                                          interval=min(0.05, self.refresh_interval))
            self.follower.start()
            self.sub_title = "attached"

    def on_resize(self, event) -> None:  # type: ignore[no-untyped-def]
        self._apply_compact(event.size.width, event.size.height)

    def _apply_compact(self, width: int, height: int) -> None:
        self.set_class(self.force_compact or width < 100 or height < 30, "compact")

    def watch_theme(self, theme: str) -> None:
        if self._theme_ready:
            try:
                save_user_setting("theme", theme)
            except OSError:
                pass

    # -- history ------------------------------------------------------------------------------
    def _load_history(self) -> None:
        status = self.status_line
        cfg = self.reader.config()
        status.run_name = self.run_dir.name
        if cfg is not None:
            status.endpoint = cfg.base_url
            status.model = cfg.model
            status.target = cfg.target
            status.embedded = self.embedded or cfg.uses_embedded
        table = self.table
        stats = self.stats_pane
        rows = []
        for tid, rnd, origin, is_cls, n_inst, score, instruction in self.reader.task_rows():
            text = " ".join(instruction.split())
            rows.append(Row(tid, rnd, origin, bool(is_cls), n_inst or 0, score, text,
                            text.lower()))
            if origin == "machine":
                stats.scores.append(score)
                stats.lengths.append(text.count(" ") + 1)
        table.load(rows)
        status.accepted = len(stats.scores)
        self.seed_count = len(rows) - len(stats.scores)
        pool = len(rows) - len(stats.scores)
        rounds = self.reader.rounds()
        for r in rounds:
            pool += r.accepted
            status.elapsed_before += r.wall_time
            stats.pool_sizes.append(pool)
        for r in rounds[-300:]:  # the table shows recent rounds; the sparkline shows all
            stats.add_round(r, None)
        p_tok, c_tok = self.reader.token_totals()
        status.tokens = p_tok + c_tok
        status.retry_causes.update(self.reader.retry_counts())
        if cfg is not None:
            status.cost = (p_tok * cfg.price_input_per_1k + c_tok * cfg.price_output_per_1k) / 1000
        # What this session's engine adds is counted on top of the history.
        self.tokens_before, self.cost_before = status.tokens, status.cost
        rejections = self.rejections_pane
        for reason, count in self.reader.rejection_counts().items():
            rejections.counts[reason] = count
        rows = self.reader.db.execute(
            "SELECT * FROM (SELECT * FROM rejections ORDER BY id DESC LIMIT 300) ORDER BY id")
        for r in rows:
            rejections.counts[r["reason"]] -= 1  # add() counts it again
            rejections.add(r["reason"], r["candidate"], r["detail"], r["similar_text"],
                           r["score"], r["level"] if "level" in r.keys() else "candidate")
        latest = self.reader.db.execute(
            "SELECT * FROM prompts WHERE kind = 'generate' AND response IS NOT NULL "
            "ORDER BY id DESC LIMIT 1").fetchone()
        if latest is not None:


            examples = [(e["id"], e["origin"], e["instruction"])
                        for e in json.loads(latest["examples"] or "[]")]
            self.prompts_pane.show_latest(latest["prompt"], examples, latest["response"],
                                          "generate", latest["latency"] or 0.0)
        self.prompts_pane.show_inflight()
        if self.engine is None:
            self.state = run_status(self.reader)[0]
        status.state = self.state
        stats.show()
        rejections.show_counts()
        status.update_line()

    # -- events -----------------------------------------------------------------------------------
    def drain_events(self) -> None:
        batch: list[ev.Event] = []
        try:
            while len(batch) < 50_000:
                batch.append(self.events.get_nowait())
        except queue.Empty:
            pass
        status = self.status_line
        if batch:
            with self.batch_update():
                self._apply(batch)
        if self.engine is not None and self.engine_thread is not None:
            status.tokens_per_second = self.engine.tokens_per_second
            status.tokens = self.tokens_before + sum(self.engine.tokens)
            status.cost = self.cost_before + self.engine.cost
        status.update_line()

    def _apply(self, batch: list[ev.Event]) -> None:
        table = self.table
        status = self.status_line
        prompts = self.prompts_pane
        rejections = self.rejections_pane
        stats = self.stats_pane
        accepted = []
        for event in batch:
            if isinstance(event, ev.TaskAccepted):
                accepted.append(event.task)
                status.accepted = event.accepted
                stats.add_task(event.task.max_score, event.task.instruction)
            elif isinstance(event, ev.PromptSent):
                prompts.sent(event.prompt_id, event.kind, event.round)
                if event.kind == "generate":
                    self._sent_generate[event.prompt_id] = event
            elif isinstance(event, ev.ResponseReceived):
                prompts.done(event.prompt_id)
                sent = self._sent_generate.pop(event.prompt_id, None)
                if sent is not None:
                    prompts.show_latest(sent.prompt, list(sent.examples), event.text,
                                        event.kind, event.latency)
            elif isinstance(event, ev.CandidateRejected):
                rejections.add(event.reason, event.candidate, event.detail, event.similar_text,
                               event.score, event.level)
            elif isinstance(event, ev.RequestRetried):
                status.retry_causes[event.cause] += 1
            elif isinstance(event, ev.Notice):
                self.notify(event.message, title="Run", timeout=10)
            elif isinstance(event, ev.RoundFinished):
                stats.add_round(event.stats, self.seed_count + event.accepted_total)
                if self.engine is None:  # attached: totals come from the rounds
                    status.tokens += event.stats.prompt_tokens + event.stats.completion_tokens
                    status.cost += event.stats.cost
            elif isinstance(event, ev.RequestError):
                status.errors += 1
                now = time.monotonic()
                if now - self._last_error_note > 10:
                    self._last_error_note = now
                    self.notify(f"endpoint error ({event.kind}): {event.message}",
                                severity="warning", timeout=8)
            elif isinstance(event, ev.Paused):
                self.state = "paused"
                status.reason = "errors" if event.by_errors else "by you"
                if event.by_errors:
                    self.notify(f"{event.reason}\nPress p to resume.", title="Run paused",
                                severity="error", timeout=30)
            elif isinstance(event, ev.Resumed):
                self.state = "running"
                status.reason = ""
            elif isinstance(event, ev.RunStarted):
                self.state = "running"
                status.started = time.monotonic()
                status.target = event.target
            elif isinstance(event, ev.Stopping):
                self.state = "stopping"
            elif isinstance(event, ev.Finished):
                reason = ev.FinishReason(event.reason)
                self.state = reason.state
                status.elapsed_before += time.monotonic() - status.started
                at = f"{event.accepted}/{event.target}"
                message = {
                    ev.FinishReason.TARGET: f"Target reached: {event.accepted} tasks.",
                    ev.FinishReason.STOPPED: f"Stopped at {at}. Resume with: "
                                             f"{self.resume_command}",
                    ev.FinishReason.LIMIT: f"Stopped at {at}: {event.message}. Resume with a "
                                           f"higher limit: {self.resume_command}",
                }.get(reason, f"Stopped at {at}: {event.message}")
                self.notify(message, title="Run", timeout=20,
                            severity="error" if reason in (ev.FinishReason.ERROR,
                                                           ev.FinishReason.FAILING)
                            else "information")
            elif isinstance(event, ev.TaskDropped):
                table.remove_task(event.task_id)
                status.accepted = event.accepted
            elif isinstance(event, ev.TaskEdited):
                table.add_tasks([event.task])
            elif isinstance(event, ev.SeedsReplaced):
                self._reload_seeds()
        if accepted:
            table.add_tasks(accepted)
            status.accepted_now(len(accepted))
        status.state = self.state
        prompts.show_inflight()
        rejections.show_counts()
        stats.show()

    def _reload_seeds(self) -> None:
        table = self.table
        for task_id in [i for i, r in table.rows.items() if r.origin == "seed"]:
            table.remove_task(task_id)
        seeds = self.reader.tasks(status="active", origin="seed")
        table.add_tasks(seeds)
        self.seed_count = len(seeds)

    def on_task_table_view_changed(self, message: TaskTable.ViewChanged) -> None:
        if not hasattr(self, "pool_info"):
            return
        self.pool_info.update(
            f" {message.shown:,} of {message.total:,} tasks · {message.description} · "
            "enter: inspect · /: filter · o: origin · c: sort · v: reverse", layout=False)

    # -- actions --------------------------------------------------------------------------------
    @property
    def engine_active(self) -> bool:
        return self.control is not None and self.state in ("starting", "running", "paused")

    def action_toggle_pause(self) -> None:
        if not self.engine_active:
            self.notify("The run is not running.", severity="warning")
            return
        assert self.control is not None
        if self.state == "paused":
            self.control.resume()
        else:
            self.control.pause()

    def action_stop(self) -> None:
        if self.engine_active:
            assert self.control is not None
            self.control.stop()
            self.notify("Stopping: requests in flight may finish (a bounded grace), then the "
                        f"run stops. Resume it later with: {self.resume_command}")

    def action_quit_app(self) -> None:
        if self.attached or not self.engine_active:  # leaving an attached UI never stops a run
            self._finish_and_exit()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._finish_and_exit()

        self.push_screen(ConfirmScreen("The run is still going. Stop it and quit? Work in "
                                       "flight finishes and is kept; the run resumes later.",
                                       yes="Stop and quit", no="Keep running"), answer)

    @work(thread=True, exclusive=True, group="quit")
    def _finish_and_exit(self, code: int = 0) -> None:
        if self.engine is not None and self.engine_thread is not None:
            self.engine.stop()
            # Threads cannot be killed: wait a bounded time. Everything accepted is committed.
            self.engine_thread.join(timeout=30)
        self.call_from_thread(self.exit, code)

    def action_detach(self) -> None:
        """Hand the run to a background process: stop here cleanly, resume detached."""
        if self.attached:
            self.notify("This UI is attached: the run already runs in the background. Press q "
                        "to leave it running.")
            return
        if not self.engine_active:
            self.notify("The run is not running; start it detached with "
                        "`selfinstruct run --detach --run-dir ...`.", severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._finish_and_exit(DETACH_EXIT)

        self.push_screen(ConfirmScreen("Move the run to a background process? In-flight work "
                                       "finishes here, then a detached process resumes the run; "
                                       "watch it with `selfinstruct attach`.",
                                       yes="Detach", no="Stay"), answer)

    def action_edit_seeds(self) -> None:
        seeds = [t.to_seed() for t in self.reader.tasks(status="active", origin="seed")]

        def saved(result: SeedEdit | None) -> None:
            if result is None:
                return
            atomic_write_text(self.run_dir / RUN_SEEDS_FILE, seeds_to_jsonl(result.seeds),
                              mode=0o600)
            if result.write_back and self.seeds_file:
                write_seeds(self.seeds_file, result.seeds)
            if self.engine_active:
                assert self.control is not None
                self.control.replace_seeds(result.seeds)
                self.notify(f"{len(result.seeds)} seeds saved; they take effect at the next "
                            "round.")
            else:
                self._offline_replace_seeds(result)

        self.push_screen(SeedEditorScreen(seeds_to_jsonl(seeds), self.seeds_file), saved)

    def _offline_replace_seeds(self, result: SeedEdit) -> None:
        from selfinstruct_tui.engine.store import seed_tasks_to_pool

        store = RunStore(self.run_dir)
        try:
            store.replace_seeds(seed_tasks_to_pool(result.seeds, store.max_task_id() + 1))
        finally:
            store.close()
        self._reload_seeds()
        self.notify(f"{len(result.seeds)} seeds saved; the run uses them when it resumes.")

    def on_task_table_inspect(self, message: TaskTable.Inspect) -> None:
        task = self.reader.task(message.task_id)
        if task is None:
            return
        prompt = self.reader.prompt(task.prompt_id) if task.prompt_id else None

        def done(result: tuple[str, dict] | None) -> None:
            if result is None:
                return
            action, data = result
            if action == "drop":
                self._drop(task.id)
            elif action == "edit":
                self._edit(task.id, data)

        self.push_screen(InspectorScreen(task, prompt["prompt"] if prompt else None,
                                         prompt["response"] if prompt else None), done)

    def _drop(self, task_id: int) -> None:
        if self.engine_active:
            assert self.control is not None
            self.control.drop_task(task_id)
        else:
            store = RunStore(self.run_dir)
            try:
                task = store.task(task_id)
                if task is not None and task.status == "active":
                    task.status = "dropped"
                    store.update_task(task)
                    store.add_rejection(round=task.round, prompt_id=task.prompt_id,
                                        candidate=task.instruction,
                                        reason=RejectionReason.DROPPED_BY_USER.value,
                                        detail="dropped in the inspector", task_id=task_id)
            finally:
                store.close()
            self.table.remove_task(task_id)
            status = self.status_line
            status.accepted = self.reader.count_tasks("machine")
        self.notify(f"Task #{task_id} dropped.")

    def _edit(self, task_id: int, data: dict) -> None:
        if self.engine_active:
            assert self.control is not None
            self.control.edit_task(task_id, data["instruction"], data["instances"],
                                  data["is_classification"])
        else:
            store = RunStore(self.run_dir)
            try:
                task = store.task(task_id)
                if task is not None:
                    task.instruction = data["instruction"]
                    task.instances = data["instances"]
                    task.is_classification = data["is_classification"]
                    store.update_task(task)
                    self.table.add_tasks([task])
            finally:
                store.close()
        self.notify(f"Task #{task_id} saved.")

    def action_export(self) -> None:
        def chosen(result: tuple[str, str] | None) -> None:
            if result is not None:
                self._export(*result)

        self.push_screen(ExportScreen(str(self.run_dir)), chosen)

    @work(thread=True, group="export")
    def _export(self, fmt: str, path: str) -> None:
        try:
            out, count = export_run(self.run_dir, fmt, path or None)
        except (OSError, ValueError) as exc:
            self.call_from_thread(self.notify, f"Export failed: {exc}", severity="error")
            return
        self.call_from_thread(self.notify, f"Exported {count} rows ({fmt}) to {out}")

    def action_filter(self) -> None:
        box = self.filter_box
        box.add_class("visible")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.table.set_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.action_close_filter(keep=True)

    def action_close_filter(self, keep: bool = False) -> None:
        box = self.filter_box
        if not box.has_class("visible"):
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

    def action_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def on_unmount(self) -> None:
        if self.follower is not None:
            self.follower.close()
        self.reader.close()
