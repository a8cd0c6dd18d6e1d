"""Headless progress: one line per round, plus a live bar when stdout is a terminal."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from selfinstruct_tui.engine import events as ev


def short_reasons(rejected: dict[str, int]) -> str:
    if not rejected:
        return "none"
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(
        rejected.items(), key=lambda kv: (-kv[1], kv[0])))


class HeadlessPrinter:
    """An event subscriber that prints progress. Thread-safe: rich's Progress has its own lock."""

    def __init__(self, console: Console | None = None, *, embedded: bool = False,
                 tokens_per_second=lambda: 0.0) -> None:
        self.console = console or Console(highlight=False)
        self.live = self.console.is_terminal
        self.embedded = embedded
        self.tokens_per_second = tokens_per_second
        self.started = time.monotonic()
        self.progress: Progress | None = None
        self.task_id = None
        self.errors_shown = 0
        self.pause_message = ""

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            what = "resuming" if event.resumed else "starting"
            model = f"embedded model {event.model}" if self.embedded else \
                f"{event.model} at {event.endpoint}"
            self._line(f"{what} run in {event.run_dir}")
            self._line(f"model: {model} ({event.api} API); seeds: {event.seeds}; "
                       f"pool: {event.accepted}/{event.target} machine tasks")
            if self.live:
                self.progress = Progress(
                    TextColumn("[bold]pool"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    console=self.console, transient=True)
                self.task_id = self.progress.add_task("pool", total=event.target,
                                                      completed=event.accepted, rate="")
                self.progress.start()
        elif isinstance(event, ev.TaskAccepted):
            if self.progress is not None and self.task_id is not None:
                tps = self.tokens_per_second()
                self.progress.update(self.task_id, completed=event.accepted,
                                     rate=f"{tps:.1f} tok/s" if tps else "")
        elif isinstance(event, ev.TaskDropped):
            if self.progress is not None and self.task_id is not None:
                self.progress.update(self.task_id, completed=event.accepted)
        elif isinstance(event, ev.RoundFinished):
            s = event.stats
            tps = self.tokens_per_second()
            speed = f", {tps:.1f} tok/s" + (" (embedded)" if self.embedded else "") if tps else ""
            self._line(
                f"round {s.round}: {s.accepted} accepted of {s.candidates} candidates from "
                f"{s.prompts} prompts; rejected: {short_reasons(s.rejected or {})}; "
                f"pool {event.accepted_total}/{event.target}; "
                f"{s.prompt_tokens + s.completion_tokens} tokens{speed}; {s.wall_time:.1f}s")
        elif isinstance(event, ev.RequestError):
            self.errors_shown += 1
            if self.errors_shown <= 5 or self.errors_shown % 50 == 0:
                self._line(f"request error ({event.kind}): {event.message}")
        elif isinstance(event, ev.Paused):
            self.pause_message = event.reason
            self._line(f"paused: {event.reason}")
        elif isinstance(event, ev.Stopping):
            self._line("stopping: finishing requests in flight (Ctrl-C again to quit at once)")
        elif isinstance(event, ev.Finished):
            self.close()
            took = time.monotonic() - self.started
            if event.reason == "target":
                self._line(f"done: {event.accepted}/{event.target} machine tasks in {took:.1f}s")
            elif event.reason == "stopped":
                self._line(f"stopped at {event.accepted}/{event.target} machine tasks; "
                           "run the same command again to resume")
            else:
                self._line(f"failed: {event.message}")
