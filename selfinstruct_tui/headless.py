"""Headless progress: one line per round, plus a live bar when stdout is a terminal.

Batch jobs: a line when a job's state, status or request counts change (unchanged, again every
BATCH_REPEAT_SECONDS, so a log shows the run is alive through a batch window of hours); on a
terminal each pending job also has a bar under the pool's, and lines only say its state and
status changes.

A round's line adds up: candidates = accepted + rejected (by reason) + kept open (by reason: no
answer yet, taken up again) + surplus. It also names the instances dropped from accepted tasks,
the retries by cause, the tokens (marked estimated when the endpoint reports no usage) and, when
prices are set, the cost.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from selfinstruct_tui.console import text_console
from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.batch import kept_note, progress_line
from selfinstruct_tui.engine.endpoints import EndpointStats
from selfinstruct_tui.engine.invocation import command_line, export_command
from selfinstruct_tui.engine.rates import Rates
from selfinstruct_tui.engine.store import BatchRecord, RoundStats

# seconds (monotonic) after which an unchanged pending batch job is printed again
BATCH_REPEAT_SECONDS = 600.0


def short_reasons(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(
        counts.items(), key=lambda kv: (-kv[1], kv[0])))


def round_line(s: RoundStats, accepted_total: int, target: int, *, priced: bool) -> str:
    """The headless (and log) line for a finished round."""
    source = f"from {s.prompts} prompt{'s' if s.prompts != 1 else ''}" if s.prompts else \
        "taken up again (paid for earlier; no new prompts)"
    # Candidates whose request got no answer (or that a stop left) are not lost: they stay open
    # and are taken up again, so they are named apart from the ones the filters settled.
    settled, still = s.settled, s.kept_open
    kept = f"; kept open {sum(still.values())}: {short_reasons(still)} (taken up again)" \
        if still else ""
    parts = [f"round {s.round}: {s.accepted} accepted of {s.candidates} candidates {source} "
             f"(rejected {sum(settled.values())}: {short_reasons(settled)}{kept}; "
             f"surplus {s.surplus})"]
    if s.instances_dropped:
        parts.append(f"instances dropped {sum(s.instances_dropped.values())}: "
                     f"{short_reasons(s.instances_dropped)}")
    if s.retries:
        parts.append(f"retries {sum(s.retries.values())}: {short_reasons(s.retries)}")
    parts.append(f"pool {accepted_total}/{target}")
    tokens = f"{s.prompt_tokens + s.completion_tokens:,} tokens"
    if s.usage_missing:
        tokens = f"~{tokens} (estimated: {s.usage_missing} answers carried no usage)"
    if priced:
        tokens += f", {'~' if s.usage_missing else ''}${s.cost:.4f}"
    parts.append(tokens)
    if s.prompts_cut:
        parts.append(f"{s.prompts_cut} prompt{'s' if s.prompts_cut != 1 else ''} cut by the "
                     "endpoint to fit its context (answers kept; see the note)")
    if s.unsent:  # (a round of recorded prompts and no tokens read as work paid for)
        parts.append(f"{s.unsent} request{'s' if s.unsent != 1 else ''} not sent (the run "
                     "stopped first)")
    parts.append(f"{s.wall_time:.1f}s")
    return "; ".join(parts)


def export_hint(run_dir: str) -> str:
    """What to do with a finished run: where it is and the command that exports it."""
    return (f"run directory: {run_dir}\nexport it: {export_command(run_dir)} (or self-instruct, "
            "openai-chat, sharegpt)")


def session_spent(engine: Any, cfg: Any) -> str:
    """The end lines' "this session: N tokens", with the cost when prices are set (without
    them the cost is unknown, not $0)."""
    p_tok, c_tok = engine.tokens
    priced = bool(cfg.price_input_per_1k or cfg.price_output_per_1k)
    return f"this session: {p_tok + c_tok:,} tokens" + (f", ${engine.cost:.4f}" if priced
                                                         else "")


def quit_note(engine: Any, session: Any) -> str:
    """What a run that quit at once (a third Ctrl-C, before the engine could finish) kept and
    the command that resumes it, as the other ends say it. The store's deferred writes are
    committed first: what is counted is what the next session finds."""
    try:
        engine.store.flush()
        accepted: int | str = engine.store.count_tasks("machine")
        open_requests = len(engine.store.unfinished_prompts())
    except Exception:  # (a store that cannot be written said so as it happened)
        accepted, open_requests = "?", 0
    cfg = session.config
    left = (f"; {open_requests} request(s) in flight were left unanswered: the next session "
            "records them as interrupted and takes their candidates up again"
            if open_requests else "")
    with contextlib.suppress(Exception):  # (as above: the store said why it cannot be written)
        engine.record_quit(f"quit at once (a third Ctrl-C){left}")
    return (f"quit at once at {accepted}/{cfg.target} machine tasks, kept in "
            f"{session.run_dir}{left}; {session_spent(engine, cfg)}\n"
            f"resume with: {session.resume_command}")


class HeadlessPrinter:
    """An event subscriber that prints progress. Thread-safe: rich's Progress has its own lock."""

    def __init__(self, console: Console | None = None, *, embedded: bool = False,
                 resume_command: str = "", priced: bool = False,
                 resume_without_limits: str = "", pool: bool = False) -> None:
        self.console = console or text_console(soft_wrap=False)
        self.live = self.console.is_terminal
        self.embedded = embedded
        self.rates = Rates()
        self.resume_command = resume_command
        self.resume_without_limits = resume_without_limits or resume_command
        self.priced = priced
        self.progress: Progress | None = None
        self.run_dir = ""
        self.task_id: TaskID | None = None
        self.errors_shown = 0
        self.last_error: tuple[str, str | None] = ("", None)  # (message, endpoint)
        self.gone = False  # stdout was closed: print nothing more
        self.retries_shown = 0
        self.pool = pool  # several endpoints: retry and error lines name the one that failed
        self.resumed = False
        self.pause_message = ""
        self.submitted_batches: set[int] = set()  # batch mode: jobs the endpoint holds
        self.command = ""  # the run's --batch-command (its jobs run here, not at an endpoint)
        # batch job id -> (what its last printed line said, when: monotonic seconds)
        self.batches_said: dict[int, tuple[tuple[Any, ...], float]] = {}
        self.batch_bars: dict[int, TaskID] = {}  # a terminal's bar for each pending job
        self.tokens = 0
        self.cost = 0.0
        self.usage_missing = 0
        self.endpoints: tuple[EndpointStats, ...] = ()  # a pool's latest figures

    def _line(self, text: str) -> None:
        if self.gone:
            return
        try:
            if self.progress is not None:
                self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        except (OSError, SystemExit):
            # stdout went away (`| head`, a closed terminal): rich ends with SystemExit there.
            # Progress is a view; the run goes on, and its store has everything.
            self.gone = True

    def note(self, text: str) -> None:
        self._line(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _batch(self, record: BatchRecord) -> None:
        """A batch job's poll: its bar updated, its line printed if it says something new."""
        pending = record.state == "submitted"
        if pending:
            self.submitted_batches.add(record.id)
        else:
            self.submitted_batches.discard(record.id)
        bar = self.batch_bars.get(record.id)
        if self.progress is not None:
            if pending:
                total = record.total or None
                status = record.status + (f", {record.failed} failed" if record.failed else "")
                if bar is None:
                    self.batch_bars[record.id] = self.progress.add_task(
                        f"batch job {record.id} (round {record.round}, {record.kind})",
                        total=total, completed=record.completed, rate=status)
                else:
                    self.progress.update(bar, total=total, completed=record.completed,
                                         rate=status)
            elif bar is not None:
                self.progress.remove_task(bar)
                del self.batch_bars[record.id]
        # on a terminal the bar shows the counts: a line for a state or status change only
        said = (record.state, record.status, record.message) if self.progress is not None \
            else (record.state, record.status, record.message, record.completed, record.failed)
        now = time.monotonic()
        last = self.batches_said.get(record.id)
        if last is None or last[0] != said or now - last[1] >= BATCH_REPEAT_SECONDS:
            self.batches_said[record.id] = (said, now)
            self._line(progress_line(record))

    def _spent(self, *, session: bool = False) -> str:
        """This session's tokens (and cost), said to be this session's when the run was resumed
        (the store's totals include the earlier sessions') or `session`."""
        tokens = f"{self.tokens:,} tokens"
        if self.usage_missing:
            tokens = f"~{tokens} (estimated: the endpoint reported no usage for " \
                     f"{self.usage_missing} answers)"
        cost = f", {'~' if self.usage_missing else ''}${self.cost:.4f}" if self.priced else ""
        return ("this session: " if session or self.resumed else "") + tokens + cost

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.rates.restart(event.ts)
            self.run_dir = event.run_dir
            self.resumed = event.resumed
            self.command = event.command
            what = "resuming" if event.resumed else "starting"
            model = f"embedded model {event.model}" if self.embedded else \
                f"{event.model} at {event.endpoint}"
            if event.endpoints:
                model = f"{event.model} at {len(event.endpoints)} endpoints " \
                        f"({', '.join(event.endpoints)})"
            if event.command:
                model = f"{event.model} through the batch command {event.command!r} (no endpoint)"
            self._line(f"{what} run in {event.run_dir}")
            self._line(f"model: {model} ({event.api} API); seeds: {event.seeds}; "
                       f"pool: {event.accepted}/{event.target} machine tasks")
            if self.live:
                self.progress = Progress(
                    TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    console=self.console, transient=True)
                self.task_id = self.progress.add_task("pool", total=event.target,
                                                      completed=event.accepted, rate="")
                self.progress.start()
        elif isinstance(event, ev.TaskAccepted):
            self.rates.accepted(at=event.ts)
            if self.progress is not None and self.task_id is not None:
                self.progress.update(self.task_id, completed=event.accepted,
                                     rate=self.rates.text(self.embedded))
        elif isinstance(event, ev.ResponseReceived):
            self.rates.answered(event.prompt_tokens, event.completion_tokens, at=event.ts)
        elif isinstance(event, (ev.TaskDropped, ev.PoolRecounted)):
            if self.progress is not None and self.task_id is not None:
                self.progress.update(self.task_id, completed=event.accepted)
        elif isinstance(event, ev.RoundFinished):
            s = event.stats
            line = round_line(s, event.accepted_total, event.target, priced=self.priced)
            if event.earlier:  # closed now, spent by the process that ended
                self._line(f"{line} (interrupted: the last process ended during it)")
                return
            self.tokens += s.prompt_tokens + s.completion_tokens
            self.cost += s.cost
            self.usage_missing += s.usage_missing
            self._line(f"{line}; last minute: {self.rates.text(self.embedded)}")
            for stats in self.endpoints:
                self._line(f"  endpoint {stats.text()}")
        elif isinstance(event, ev.EndpointsReported):
            self.endpoints = event.endpoints
        elif isinstance(event, ev.RequestRetried):
            if event.prompt_id is None:
                # a batch job's poll (attempt: its polls failing in a row): few, and a spell
                # lasts minutes; counted with the requests' retries, one after three of those
                # was not printed until the job was lost, up to 10 minutes later
                shown = event.attempt <= 3 or event.attempt % 10 == 0
            else:
                self.retries_shown += 1
                shown = self.retries_shown <= 3 or self.retries_shown % 100 == 0
            if shown:
                at = ev.at_endpoint(event, self.pool)
                self._line(f"retry ({event.cause.replace('_', ' ')}, attempt {event.attempt}, "
                           f"next in {event.delay:.1f}s){at}: {event.message}")
        elif isinstance(event, ev.RequestError) and event.kind.startswith("endpoint_"):
            # A pool's takeouts and drops, always (backoff keeps them rare): an endpoint said
            # to be back must have been seen going out
            self._line(f"endpoint change ({event.kind}): {event.message}")
        elif isinstance(event, ev.RequestError):
            if (event.message, event.endpoint) == self.last_error:  # in flight, failing alike
                return
            self.last_error = (event.message, event.endpoint)
            self.errors_shown += 1
            if self.errors_shown <= 5 or self.errors_shown % 50 == 0:
                at = ev.at_endpoint(event, self.pool)
                self._line(f"request error ({event.kind}){at}: {event.message}")
        elif isinstance(event, ev.Notice):
            self._line(f"note: {event.message}")
        elif isinstance(event, ev.BatchProgress):
            self._batch(event.batch)
        elif isinstance(event, ev.Paused):
            self.pause_message = event.reason
            self.rates.pause(event.ts)
            if event.reason == self.last_error[0]:  # a fatal error, just printed: once is enough
                self._line("paused by the request error above")
            elif not event.by_errors and self.run_dir:  # nothing here resumes it: say what does
                self._line(f"paused: {event.reason}; to resume it, attach and press p: "
                           f"{command_line('attach', str(self.run_dir))}")
            else:
                self._line(f"paused: {event.reason}")
        elif isinstance(event, ev.Resumed):
            self.rates.resume(event.ts)
            self._line("resumed")
        elif isinstance(event, ev.Stopping):
            self.rates.resume(event.ts)  # (a stop while paused: the run time counts again)
            self._line("stopping now: the requests in flight are abandoned" if event.now else
                       "stopping: requests in flight may finish; Ctrl-C or SIGTERM now "
                       "abandons them")
            if self.submitted_batches and event.cancel_batches:
                self._line(f"cancelling {len(self.submitted_batches)} batch job(s)")
            elif self.submitted_batches:
                self._line(kept_note(len(self.submitted_batches), bool(self.command)))
        elif isinstance(event, ev.Finished):
            self.close()
            # the session's run time by the engine's records (as every UI counts it): from its
            # start to its end, paused time left out; not this printer's own clock
            self.rates.end(event.ts)
            took = self.rates.run_seconds(event.ts)
            reason = ev.FinishReason(event.reason)
            at = f"{event.accepted}/{event.target} machine tasks"
            if reason is ev.FinishReason.TARGET:
                self._line(f"done: {at} in {took:.1f}s; {self._spent()}")
                if self.run_dir:
                    self._line(export_hint(self.run_dir))
            elif reason is ev.FinishReason.STOPPED:
                self._line(f"stopped at {at}; {self._spent()}")
                self._line(f"resume with: {self.resume_command}")
            elif reason is ev.FinishReason.LIMIT:
                self._line(f"stopped at {at}: {event.message}; {self._spent(session=True)}")
                flag = "--max-tokens" if "--max-tokens" in event.message else "--max-cost"
                self._line(f"resume with a higher limit: {self.resume_without_limits} "
                           f"{flag} N")
            elif reason is ev.FinishReason.FAILING:
                self._line(f"stopped at {at}; {self._spent()}")
            else:
                self._line(f"failed: {event.message}")


def run_headless(engine: Any, session: Any, out: Console, err: Console) -> int:
    """Run the engine in this thread, printing progress; returns the exit code.

    Nobody can press "resume" here: a pause by errors or by a spend guard stops the run. The
    first SIGINT/SIGTERM stops (in-flight requests get the grace), the second abandons them
    (the first, once the run stopped by itself), the third quits at once: KeyboardInterrupt,
    which `cli.cmd_run` turns into `quit_note` and exit code 130.
    """
    cfg = session.config
    printer = HeadlessPrinter(out, embedded=cfg.uses_embedded,
                              resume_command=session.resume_command,
                              resume_without_limits=session.resume_command_without_limits,
                              priced=bool(cfg.price_input_per_1k or cfg.price_output_per_1k),
                              pool=len(cfg.endpoints) > 1)
    engine.bus.subscribe(printer)
    signals = [0]  # SIGINT/SIGTERM so far; a stop the run makes itself counts as the first

    def stop_failing(why: str) -> None:
        signals[0] = max(signals[0], 1)
        engine.stop(ev.FinishReason.FAILING, why)

    def on_event(event: ev.Event) -> None:
        # Headless has nobody to press "resume": a run paused by errors or by a spend guard
        # stops and says how to resume; the exit code (3) tells scripts it did not finish.
        # A run started paused (--paused: detached from a TUI while paused by errors) waits
        # for an attached UI's p, whatever paused it.
        if isinstance(event, ev.Paused) and event.by_errors and event is not engine.start_pause:
            stop_failing(event.reason)
        elif isinstance(event, ev.RequestError) and event.kind == "connection" and \
                session.server is not None:
            why = session.server.check_alive()
            if why:
                stop_failing(why)

    engine.bus.subscribe(on_event)

    def on_signal(signum: int, frame: Any) -> None:
        # First: stop (in flight gets the grace); second: abandon in flight now; third: quit.
        signals[0] += 1
        if signals[0] == 1:
            engine.stop()
        elif signals[0] == 2:
            printer.note("stopping now: abandoning the requests in flight")
            engine.stop_now()
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_signal)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        finished = engine.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        printer.close()
    reason = ev.FinishReason(finished.reason)
    if reason in (ev.FinishReason.FAILING, ev.FinishReason.ERROR):
        err.print(f"error: {finished.message}", markup=False)
        err.print(f"The run is saved; resume it with: "
                  f"{session.resume_command_after(finished.message)}", markup=False)
    return reason.exit_code
