"""RunView: what the panes show, built from a snapshot and the engine's events. No Textual here.

The app loads a `RunSnapshot` (control.read_snapshot) and then applies events, whether they come
from the in-process engine or from a `StoreFollower`; the panes render from this view. Each
section marks itself dirty so the app redraws only what changed. Times: the elapsed time is run
time, `elapsed_before` (the sessions before this one) and this session's from `Rates` (its start
to now or its end, pauses left out), from the times the engine recorded (epoch seconds, the
events' `ts`), never from when a UI saw an event: every UI shows the same figures.
"""

from __future__ import annotations

import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.text import Text

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.control import (
    HISTORY_REJECTIONS,
    HISTORY_ROUNDS,
    LIVE_STATES,
    RunSnapshot,
    RunState,
)
from selfinstruct_tui.engine.endpoints import EndpointStats
from selfinstruct_tui.engine.invocation import with_command
from selfinstruct_tui.engine.rates import Rates, active_seconds_of
from selfinstruct_tui.engine.review import summarize
from selfinstruct_tui.engine.seeds import short_text
from selfinstruct_tui.engine.store import (
    OPEN_REASONS,
    BatchRecord,
    RejectionRecord,
    ReviewRecord,
    RoundStats,
)
from selfinstruct_tui.engine.task import Task


@dataclass(slots=True)
class Row:
    """One line of the task pool."""

    id: int
    round: int
    origin: str
    is_classification: bool
    instances: int
    max_score: float
    instruction: str
    lowered: str

    @classmethod
    def of(cls, task: Task) -> Row:
        text = " ".join(task.instruction.split())
        return cls(task.id, task.round, task.origin, task.is_classification,
                   len(task.instances), task.max_score, text, text.lower())

    def key(self, column: str) -> object:
        """The sort key for `column` (one of task_table.SORT_COLUMNS); ties break by id."""
        if column == "id":
            return self.id
        return (getattr(self, _SORT_FIELDS[column]), self.id)


_SORT_FIELDS = {"round": "round", "origin": "origin", "cls": "is_classification",
                "instances": "instances", "rouge": "max_score", "instruction": "lowered"}


class Worded(str):
    """A label that has shorter wordings of itself for narrow panes, longest first (`forms[0]`
    is the text itself): a pane too narrow for it shows the longest that fits (`fit`), which
    keeps the meaning ("near dup: 4", "held:") where cutting the text lost it ("near du…: 4",
    "open (held, paus…")."""

    forms: tuple[str, ...]

    def __new__(cls, *forms: str) -> Worded:
        self = super().__new__(cls, forms[0])
        self.forms = tuple(dict.fromkeys(forms))
        return self


def fit(label: str, width: int) -> str:
    """The longest wording of `label` (a `Worded`, or a plain str: itself) at most `width`
    cells wide, else its shortest; `width` < 1: the label itself."""
    forms = getattr(label, "forms", (label,))
    if width < 1:
        return forms[0]
    return next((form for form in forms if cell_len(form) <= width), forms[-1])


# Reasons in at most 11 characters, for panes too narrow for their full names (at 60 columns
# the rejections pane is 11 wide); a reason not here keeps its name.
SHORT_REASONS = {
    "near_duplicate": "near dup", "blacklisted_word": "blacklist", "write_a_program": "program",
    "starts_with_punctuation": "punctuation", "starts_with_non_ascii": "non-ASCII",
    "repeated_example": "repeated", "not_an_instruction": "not instr.",
    "unparseable": "unparsed", "content_filter": "filtered", "truncated_response": "truncated",
    "unknown_classification": "unk. class", "conflicting_outputs": "conflict",
    "no_valid_instances": "no instance", "request_failed": "req. failed",
    "dropped_by_user": "dropped", "missing_output": "no output", "missing_input": "no input",
    "unlabeled_input": "unlabeled", "empty_output": "empty out", "placeholder_output": "filler out",
    "unusable_input": "bad input", "input_equals_output": "in = out",
    "ends_with_colon": "ends in :", "duplicate_instance": "dup. inst.",
    "extra_instance": "extra inst.", "label_not_in_task": "bad label",
}


def reason_label(reason: str, short: bool = False) -> str:
    """A rejection reason as the panes write it: "near duplicate", or short ("near dup")."""
    return SHORT_REASONS.get(reason, reason.replace("_", " ")) if short \
        else reason.replace("_", " ")


def reason_count(reason: str, count: int) -> Worded:
    """A counter, "near duplicate: 4", with its narrow wordings "near dup: 4", "near dup 4"."""
    return Worded(f"{reason_label(reason)}: {count}", f"{reason_label(reason, True)}: {count}",
                  f"{reason_label(reason, True)} {count}")


@dataclass(frozen=True, slots=True)
class RejectionLine:
    level: str
    reason: str
    candidate: str
    detail: str
    similar: str | None
    score: float | None

    def text(self, short: bool = False) -> Text:
        """The log's line; `short`: for a narrow pane, the reason in its short name (in a
        column of 11, not 18), so that the pane shows the reason whole and some candidate."""
        line = Text()
        if self.level == "instance":
            line.append("inst. " if short else "instance: ", style="italic")
        reason = reason_label(self.reason, short)
        line.append(f"{reason:<11} " if short else f"{reason:<18} ", style="bold")
        line.append(" ".join(self.candidate.split())[:200])
        if self.similar is not None and self.score is not None:
            line.append(f"  ~{self.score:.2f} «{short_text(self.similar, 80)}»",
                        style="italic")
        elif self.detail:
            line.append(f"  ({self.detail})", style="italic")
        return line


class Histogram:
    """Counts of values in `bins` equal bins over [lo, hi); a value outside the range counts in
    the first or last bin. Kept as tasks arrive, so drawing it never rescans the pool."""

    def __init__(self, lo: float, hi: float, bins: int) -> None:
        self.lo, self.hi, self.bins = lo, hi, bins
        self.counts = [0] * bins
        self._scale = bins / (hi - lo)

    def add(self, value: float) -> None:
        i = int((value - self.lo) * self._scale)
        self.counts[0 if i < 0 else i if i < self.bins else self.bins - 1] += 1

    def edges(self) -> list[float]:
        """The lower edge of each bin."""
        return [self.lo + n * (self.hi - self.lo) / self.bins for n in range(self.bins)]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class RoundPoint:
    """One finished round, for the charts: accepted tasks and rejections by reason."""

    round: int
    accepted: int
    rejected: dict[str, int]


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def pause_advice(needs_restart: bool) -> str:
    """What to do about a pause by errors (its notice and the run's note line say it)."""
    if needs_restart:  # p would send the same requests again
        return ("Press s to stop, then run the command again with the fix (the same command "
                "resumes this run); p tries again as it is.")
    return "Press p to resume."


def round_row(s: RoundStats, priced: bool = True) -> tuple[str, ...]:
    """The rounds table's row: cand. = acc. + rejected + open + surplus. `rejected` names its
    most common reason ("+" when there are others; a `Worded` with the reason's short name for
    a narrow pane, "12 (near dup+)", then the count alone); `open`: candidates kept open.
    Without prices (`priced` False) the cost is "-": unknown, not $0."""
    rejected = s.settled
    ranked = sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(rejected.values())
    more = "+" if len(ranked) > 1 else ""
    cell = Worded(*(f"{total} ({reason_label(ranked[0][0], short)}{more})"
                    for short in (False, True)), str(total)) if ranked else str(total)
    return (str(s.round), str(s.prompts), str(s.candidates), str(s.accepted), cell,
            str(sum(s.kept_open.values())), str(s.surplus),
            f"{s.acceptance_rate:.0%}", f"{s.prompt_tokens + s.completion_tokens:,}",
            f"${s.cost:.4f}" if priced else "-",
            # a round a killed process left running: its time is unknown (the process ended)
            "interrupted" if s.status == "interrupted" else f"{s.wall_time:.1f}s")


# The review questions as the statistics pane's narrow review table names them.
REVIEW_SHORT_LABEL = {"instruction": "instr.", "input": "input", "output": "output"}

ROUND_COLUMNS = ("round", "prompts", "cand.", "acc.", "rejected", "open", "surplus", "rate",
                 "tokens", "cost", "time")


# The status line's parts give way in this order until it fits (StatusView.line): each step
# shortens or leaves out the parts that name it. The run's name, the model and the state are
# only ever shortened.
GIVE_WAY = ("causes", "prompt speed", "model", "speed", "tokens", "rate", "name", "cost",
            "no speed", "no tokens", "no rate", "words", "no cost", "no eta", "pool", "no time",
            "name more", "model more", "reason", "model most")


def _shorten(text: str, most: int) -> str:
    """`text` in at most `most` characters: its start and end around an ellipsis."""
    if len(text) <= most:
        return text
    tail = (most - 1) // 2
    return text[:most - 1 - tail] + "…" + text[len(text) - tail:]


def _si(n: int) -> str:
    """A count in 4 characters or so: 950, 13.9k, 1.4M."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


@dataclass
class StatusView:
    """The status line: run, endpoint and model (never the key), state, pool/target, speed,
    tokens, cost, time, errors, prompts the endpoint cut and retries."""

    run_name: str = ""
    endpoint: str = ""
    command: str = ""  # --batch-command: its jobs run here, not at an endpoint
    endpoints: int = 1  # a pool's size: the status line then names how many, not the first
    model: str = ""
    embedded: bool = False
    state: str = RunState.STARTING
    reason: str = ""
    accepted: int = 0
    target: int = 0
    tokens: int = 0
    cost: float = 0.0
    errors: int = 0
    prompts_cut: int = 0  # answers to prompts the endpoint cut to fit its context (kept)
    retry_causes: Counter[str] = field(default_factory=Counter)
    elapsed_before: float = 0.0  # run time (s) of the sessions before this one (`rates`')
    # this session's start, pauses and end, the last minute: tasks/min, tokens/s, run time
    rates: Rates = field(default_factory=Rates)
    priced: bool = True  # prices are set: the cost is shown

    def line(self, width: int = 0, now: float | None = None) -> Text:
        """The status line; with `width` (columns), parts give way until it fits, in the order
        of `GIVE_WAY`: first shortened (the endpoint, the run's name, the counts' words), then
        left out, least important first. The run's name (or directory), the model and the
        state always stay: at 80 columns they, the errors, the retries and the pool remain.
        A name cut around an ellipsis (the run's, the model's) is cut only as far as the line
        needs: the room the line leaves goes back to it (the steps' 16 and 10 characters are
        the least it keeps, not what it gets). `now`: epoch seconds the time figures are of
        (None: the clock)."""
        live = self.state in (RunState.RUNNING, RunState.PAUSED, RunState.STOPPING)
        now = time.time() if now is None else now
        elapsed = self.elapsed(now)
        per_min = self.rates.tasks_per_minute(now)
        prompt_tps, output_tps = self.rates.tokens_per_second(now)
        remaining = max(0, self.target - self.accepted)
        eta = fmt_duration(remaining / per_min * 60) if per_min > 0 and remaining and live \
            else "-"  # (a stopped run has no ETA: it kept the last one)
        # A run nothing drives (ended, crashed) has no rate: "-" in every UI. A rate kept from
        # before the end differed between UIs (the engine's own, one attached before a kill -9,
        # one attached after: 1078.5, 36.0 and 0.0 tasks/min), as each UI counts the last
        # minute from what it saw, and a killed process leaves no time of its end to agree on.
        driven = self.state in LIVE_STATES
        rate, output, prompt = (f"{per_min:.1f}", f"{output_tps:.0f}", f"{prompt_tps:.0f}") \
            if driven else ("-", "-", "-")
        endpoint = re.sub(r"^https?://|/v1/?$", "", self.endpoint)
        model = f"{self.model} (embedded)" if self.embedded else f"{self.model} @ {endpoint}"
        if self.endpoints > 1:
            model = f"{self.model} @ {self.endpoints} endpoints"
        # (an organisation/ prefix goes first; a pool's models are each shortened)
        base_model = ", ".join(m.rsplit("/", 1)[-1] for m in self.model.split(", "))
        state = self.state + (f" ({self.reason})" if self.reason and
                              self.state == RunState.PAUSED else "")
        alarm = "bold reverse" if self.state in (RunState.PAUSED, RunState.ERROR,
                                                 RunState.CRASHED) else "bold"
        # (style, forms): the part's text as GIVE_WAY steps go by, [name of a step, text]
        # pairs, the longest first ("": left out). A part without steps never gives way.
        parts: list[tuple[str, list[tuple[str, str]]]] = [
            ("bold", [("", self.run_name), ("name", _shorten(self.run_name, 16)),
                      ("name more", _shorten(self.run_name, 10))]),
            ("", [("", model), ("model", self.model), ("model more", base_model),
                  ("model most", _shorten(base_model, 16))]),
            (alarm, [("", state), ("reason", self.state)])]  # (the note line says why)
        if self.errors:
            parts.append(("", [("", f"errors {self.errors}"), ("words", f"err {self.errors}")]))
        if self.retry_causes:
            parts.append(("", [("", f"retries {sum(self.retry_causes.values())}"),
                               ("words", f"retry {sum(self.retry_causes.values())}")]))
            parts.append(("", [("", "(" + ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in self.retry_causes.most_common()) + ")"),
                ("causes", "")]))
        if self.prompts_cut:
            parts.append(("", [("", f"prompts cut {self.prompts_cut}"),
                               ("words", f"cut {self.prompts_cut}")]))
        parts += [("", [("", f"pool {self.accepted}/{self.target}"),
                        ("pool", f"{self.accepted}/{self.target}")]),
                  ("", [("", f"{rate} tasks/min"), ("rate", f"{rate}/min"),
                        ("no rate", "")]),
                  ("", [("", f"output {output} tok/s"), ("speed", f"{output} tok/s"),
                        ("no speed", "")])]
        if self.embedded:  # prompt evaluation is most of a small local model's time
            parts.append(("", [("", f"prompt {prompt} tok/s"), ("prompt speed", "")]))
        parts.append(("", [("", f"{self.tokens:,} tok"), ("tokens", f"{_si(self.tokens)} tok"),
                           ("no tokens", "")]))
        if self.priced:  # without prices the cost is unknown, not $0
            parts.append(("", [("", f"${self.cost:.4f}"), ("cost", f"${self.cost:.2f}"),
                               ("no cost", "")]))
        parts += [("", [("", fmt_duration(elapsed)), ("no time", "")]),
                  ("", [("", f"ETA {eta}"), ("no eta", "")])]

        # the texts the parts' ellipsis forms shorten (by the part's place in `parts`): once a
        # step makes the line fit, the room left goes back to them, the run's name first
        cut_from = {0: self.run_name, 1: base_model}

        def texts(step: int) -> list[tuple[int, str, str]]:
            done = set(GIVE_WAY[:step])
            shown = []
            for n, (style, forms) in enumerate(parts):
                text = [t for name, t in forms if not name or name in done][-1]
                if text:
                    shown.append((n, text, style))
            return shown

        def length(shown: list[tuple[int, str, str]]) -> int:
            return 1 + sum(len(t) + (0 if n == 0 else 1 if t.startswith("(") else 3)
                           for n, (_, t, _) in enumerate(shown))

        step = 0
        shown = texts(0)
        while width and length(shown) > width and step < len(GIVE_WAY):
            step += 1
            shown = texts(step)
        for n, (part, text, style) in enumerate(shown):
            whole = cut_from.get(part, text)
            room = width - length(shown)
            if room > 0 and text != whole and text == _shorten(whole, len(text)):
                shown[n] = (part, _shorten(whole, len(text) + room), style)
        out = Text(" ")
        for n, (_, text, style) in enumerate(shown):
            if n:
                # a breakdown in parentheses follows its count without a separator
                out.append(" " if text.startswith("(") else " │ ")
            out.append(text, style=style)
        return out

    def elapsed(self, now: float | None = None) -> float:
        """The run's time at `now` (epoch s; None: the clock) in seconds: the earlier sessions'
        and this one's running time, pauses left out."""
        return self.elapsed_before + self.rates.run_seconds(now)


SCORE_BINS = 20  # of the max ROUGE-L histogram over [0, 1]
LENGTH_MAX_WORDS = 60  # the instruction-length histogram: 5-word bins, the last one open-ended
CHART_ROUNDS = 500  # rounds the per-round charts keep


def _one_line(text: str) -> bool:
    """Whether `text` is already what `" ".join(text.split())` makes of it (fast: most
    instructions are). str.isprintable() is False for every whitespace character but the ASCII
    space (they are Unicode separators or control characters)."""
    return (text.isprintable() and "  " not in text and text[:1] != " "
            and text[-1:] != " ")


class RunView:
    """Everything the panes show. `load(snapshot)` once, then `apply(event)` for each event."""

    def __init__(self, run_name: str = "", *, resume_command: str = "") -> None:
        self.status = StatusView(run_name=run_name)
        self.resume_command = resume_command
        self.state: str = RunState.STARTING
        # why the run is not going, for the note under the status line (`note`): a pause by
        # errors (its reason as the engine recorded it, and whether p can fix it), an end
        # that was no success (reason, message), the pid of an engine process found gone
        self.pause: ev.Paused | None = None
        self.ended: ev.Finished | None = None
        self.lost_pid: int | None = None
        self.rows: dict[int, Row] = {}
        self.seed_count = 0
        # pool changes not yet shown by the table: rows to add (or replace) and ids to remove
        self.rows_added: list[Row] = []
        self.rows_removed: list[int] = []
        # prompts
        self.in_flight: dict[int, tuple[str, int]] = {}
        self.endpoints: tuple[EndpointStats, ...] = ()  # a pool's figures (empty: one endpoint)
        self.latest: tuple[str, tuple[tuple[int, str, str], ...], str, str, float] | None = None
        self._sent_generate: dict[int, ev.PromptSent] = {}
        # batch mode: jobs whose answers are not read yet, by job id (shown in the prompts pane)
        self.batches: dict[int, BatchRecord] = {}
        # rejections
        self.rejection_counts: Counter[str] = Counter()
        self.rejection_lines: deque[RejectionLine] = deque(maxlen=HISTORY_REJECTIONS)
        self.new_rejection_lines: list[RejectionLine] = []
        # round statistics
        self.rounds: OrderedDict[int, tuple[str, ...]] = OrderedDict()
        self.pool_sizes: list[int] = []
        # the paper's Figure 3: max ROUGE-L of each accepted task against the pool it joined
        self.score_hist = Histogram(0.0, 1.0, SCORE_BINS)
        self.length_hist = Histogram(0.0, float(LENGTH_MAX_WORDS), LENGTH_MAX_WORDS // 5)
        self.round_points: deque[RoundPoint] = deque(maxlen=CHART_ROUNDS)
        # what the app should tell the user: (message, title, severity)
        self.notices: list[tuple[str, str, str]] = []
        self.dirty: set[str] = set()
        self.prices = (0.0, 0.0)  # USD per 1K prompt / completion tokens
        # the quality review: sampled task id -> its record (answers so far), in review order
        self.reviews: dict[int, ReviewRecord] = {}

    # -- history ----------------------------------------------------------------------------------
    def load(self, snap: RunSnapshot, *, embedded: bool = False) -> None:
        status = self.status
        cfg = snap.config
        if cfg is not None:
            status.command = cfg.batch_command
            status.endpoint = "batch command" if cfg.batch_command else \
                snap.session.get("endpoint") or cfg.base_url
            status.endpoints = len(cfg.endpoints) or 1
            status.model = cfg.models_label
            status.target = cfg.target
            status.embedded = embedded or cfg.uses_embedded
        rows: list[Row] = []
        append = rows.append
        add_score, add_length = self.score_hist.add, self.length_hist.add
        machine_count = 0
        for tid, rnd, origin, is_cls, n_inst, score, instruction in snap.rows:
            text = instruction if _one_line(instruction) else " ".join(instruction.split())
            append(Row(tid, rnd, origin, bool(is_cls), n_inst or 0, score, text, text.lower()))
            if origin == "machine":
                machine_count += 1
                add_score(score)
                add_length(text.count(" ") + 1)
        self.rows = {r.id: r for r in rows}
        self.rows_added = rows
        status.accepted = machine_count
        self.seed_count = len(rows) - machine_count
        machine = 0
        finished = []
        started = snap.session.get("started")
        if snap.state in LIVE_STATES and isinstance(started, (int, float)):
            # The sessions before this one (their rounds, as the engine's own UI loaded them
            # before it started), then this session's time from its start (`Rates`): counted
            # from the rounds up to the attach and by a clock after it, an attached UI left out
            # the time between rounds before it attached and counted it after
            status.elapsed_before += active_seconds_of(
                ((r.started, min(started, r.finished if r.finished is not None else
                                 snap.crash_end if snap.crash_end is not None else started))
                 for r in snap.rounds if r.started < started), snap.pauses, started)
            status.rates.load(started, snap.recent_accepted, snap.recent_answers, snap.pauses)
        else:  # nothing drives the run: its rounds' time (a crashed one's to its last work)
            status.elapsed_before += active_seconds(
                snap.rounds, time.time() if snap.state in LIVE_STATES else snap.crash_end,
                snap.pauses)
        for r in snap.rounds:
            if r.status != "running":  # a running round shows when it finishes, as live
                machine = r.pool_after if r.pool_after is not None else machine + r.accepted
                self.pool_sizes.append(self.seed_count + machine)
                finished.append(r)
                self.round_points.append(RoundPoint(r.round, r.accepted, r.settled))
        if cfg is not None:
            self.prices = (cfg.price_input_per_1k, cfg.price_output_per_1k)
            status.priced = bool(cfg.price_input_per_1k or cfg.price_output_per_1k)
        for r in finished[-HISTORY_ROUNDS:]:
            self.rounds[r.round] = round_row(r, status.priced)
        status.tokens = 0
        status.cost = 0.0
        self._count_tokens(*snap.tokens)
        status.retry_causes.update(snap.retries)
        status.errors = snap.errors
        status.prompts_cut = sum(r.prompts_cut for r in snap.rounds)
        self.rejection_counts.update(snap.rejection_counts)
        lines = [_line(r) for r in snap.recent_rejections]
        self.rejection_lines.extend(lines)
        self.new_rejection_lines = list(self.rejection_lines)
        latest = snap.latest_generation
        if latest is not None:
            self.latest = (latest.prompt, latest.examples, latest.response or "", latest.kind,
                           latest.latency)
        for p in snap.open_prompts:
            self.in_flight[p.id] = (p.kind, p.round)
        self.state = snap.state
        status.state = snap.state
        meta = snap.state_meta
        if snap.state == RunState.PAUSED:
            # what the engine recorded when it paused: a UI that attaches later shows it too
            self.pause = ev.Paused(str(meta.get("reason") or ""), bool(meta.get("by_errors")),
                                   bool(meta.get("needs_restart")))
            status.reason = "errors" if self.pause.by_errors else "by you"
        elif snap.state == RunState.CRASHED:
            pid = meta.get("pid")
            self.lost_pid = pid if isinstance(pid, int) else None
        elif snap.state in (RunState.STOPPED, RunState.ERROR):
            try:
                reason = ev.FinishReason(meta.get("finish_reason") or
                                         {"error": "error"}.get(snap.state, "stopped"))
            except ValueError:
                reason = ev.FinishReason.STOPPED
            self.ended = ev.Finished(reason, status.accepted, status.target,
                                     str(meta.get("message") or ""))
        self.dirty |= {"status", "pool", "prompts", "rejections", "stats"}
        self._load_reviews(snap)

    # -- live -------------------------------------------------------------------------------------
    def apply(self, event: ev.Event) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def apply_all(self, events: list[ev.Event]) -> None:
        for event in events:
            self.apply(event)

    def _on_TaskAccepted(self, e: ev.TaskAccepted) -> None:
        row = Row.of(e.task)
        self.rows[row.id] = row
        self.rows_added.append(row)
        self.status.accepted = e.accepted
        self.status.rates.accepted(at=e.ts)
        self.score_hist.add(e.task.max_score)
        self.length_hist.add(len(e.task.instruction.split()))
        self.dirty |= {"pool", "stats", "status"}

    def _on_TaskDropped(self, e: ev.TaskDropped) -> None:
        if self.rows.pop(e.task_id, None) is not None:
            self.rows_removed.append(e.task_id)
        self.status.accepted = e.accepted
        self.dirty |= {"pool", "status"}

    def _on_TaskEdited(self, e: ev.TaskEdited) -> None:
        row = Row.of(e.task)
        self.rows[row.id] = row
        self.rows_added.append(row)
        self.dirty.add("pool")

    def _on_PoolRecounted(self, e: ev.PoolRecounted) -> None:
        self.status.accepted = e.accepted
        self.dirty.add("status")

    def _on_SeedsReplaced(self, e: ev.SeedsReplaced) -> None:
        for tid in [i for i, r in self.rows.items() if r.origin == "seed"]:
            del self.rows[tid]
            self.rows_removed.append(tid)
        for task in e.tasks:
            row = Row.of(task)
            self.rows[row.id] = row
            self.rows_added.append(row)
        self.seed_count = len(e.tasks)
        self.dirty.add("pool")

    def _on_PromptSent(self, e: ev.PromptSent) -> None:
        self.in_flight[e.prompt_id] = (e.kind, e.round)
        if e.kind == "generate":
            self._sent_generate[e.prompt_id] = e
        self.dirty.add("prompts")

    def _count_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.status.tokens += prompt_tokens + completion_tokens
        self.status.cost += (prompt_tokens * self.prices[0]
                             + completion_tokens * self.prices[1]) / 1000
        self.dirty.add("status")

    def _on_ResponseReceived(self, e: ev.ResponseReceived) -> None:
        self._count_tokens(e.prompt_tokens, e.completion_tokens)
        self.status.rates.answered(e.prompt_tokens, e.completion_tokens, at=e.ts)
        self.in_flight.pop(e.prompt_id, None)
        sent = self._sent_generate.pop(e.prompt_id, None)
        if sent is not None:
            self.latest = (sent.prompt, sent.examples, e.text, e.kind, e.latency)
        self.dirty.add("prompts")

    def _on_BatchProgress(self, e: ev.BatchProgress) -> None:
        if e.batch.pending:
            self.batches[e.batch.id] = e.batch
        else:
            self.batches.pop(e.batch.id, None)
        self.dirty.add("prompts")

    @property
    def submitted_batches(self) -> list[BatchRecord]:
        """Jobs the endpoint holds (what a stop could cancel)."""
        return [b for b in self.batches.values() if b.state == "submitted"]

    def _on_PromptFailed(self, e: ev.PromptFailed) -> None:
        self.in_flight.pop(e.prompt_id, None)
        self._sent_generate.pop(e.prompt_id, None)
        self.dirty.add("prompts")

    def _on_CandidateRejected(self, e: ev.CandidateRejected) -> None:
        self.rejection_counts[e.reason] += 1
        line = RejectionLine(e.level, e.reason, e.candidate, e.detail, e.similar_text, e.score)
        self.rejection_lines.append(line)
        self.new_rejection_lines.append(line)
        self.dirty.add("rejections")

    def _on_RoundFinished(self, e: ev.RoundFinished) -> None:
        self.rounds[e.stats.round] = round_row(e.stats, self.status.priced)
        while len(self.rounds) > HISTORY_ROUNDS:
            self.rounds.popitem(last=False)
        self.pool_sizes.append(self.seed_count + e.accepted_total)
        self.round_points.append(RoundPoint(e.stats.round, e.stats.accepted, e.stats.settled))
        self.dirty.add("stats")
        if e.stats.prompts_cut and not e.earlier:
            self.status.prompts_cut += e.stats.prompts_cut
            self.dirty.add("status")

    def _on_RequestRetried(self, e: ev.RequestRetried) -> None:
        self.status.retry_causes[e.cause] += 1
        self.dirty.add("status")

    def _on_RequestError(self, e: ev.RequestError) -> None:
        self.status.errors += 1
        at = ev.at_endpoint(e, pool=self.status.endpoints > 1)
        self.notices.append((f"endpoint error ({e.kind}){at}: {e.message}", "Endpoint",
                             "warning"))
        self.dirty.add("status")

    def _on_Notice(self, e: ev.Notice) -> None:
        self.notices.append((e.message, "Run", "information"))

    def _on_Paused(self, e: ev.Paused) -> None:
        self._set_state(RunState.PAUSED)
        self.pause = e
        self.status.reason = "errors" if e.by_errors else "by you"
        self.status.rates.pause(e.ts)  # the rates, the ETA and the time hold while paused
        if e.by_errors:
            self.notices.append((f"{e.reason}\n{pause_advice(e.needs_restart)}", "Run paused",
                                 "error"))

    def _on_Resumed(self, e: ev.Resumed) -> None:
        self._set_state(RunState.RUNNING)
        self.status.reason = ""
        self.pause = None
        self.status.rates.resume(e.ts)

    def _on_Crashed(self, e: ev.Crashed) -> None:
        """The engine process is gone (an attached UI's follower found it): the clock and the
        rates stop, and the note says how to resume. Said once, however many times found.
        The session's time ends at the process's last recorded activity (`e.last_activity`;
        None: when found), where the run's time of a crashed session ends
        (`RunStore.recover_interrupted`): a UI that saw the crash showed the seconds until it
        noticed, one attached later did not."""
        if self.state != RunState.CRASHED:
            self.lost_pid = e.pid
            self.pause = None
            self._set_state(RunState.CRASHED)
            self.dirty.add("prompts")  # what was in flight is now "unfinished at the crash"
            self.notices.append((self.crash_text(), "Run crashed", "error"))
            self.status.rates.end(e.ts)
        if e.last_activity is not None:
            self.status.rates.end(e.last_activity)

    def crash_text(self) -> str:
        pid = f" (pid {self.lost_pid})" if self.lost_pid else ""
        return with_command(f"The engine process{pid} is gone: it ended without stopping the "
                            "run (killed or crashed), and nothing runs the run now. Resume it "
                            "with:", self.resume_command)

    def note(self) -> str:
        """Why the run is not going, while it is so (the line under the status line): the
        reason of a pause by errors and what to do, an end that was no success, a crash.
        Empty otherwise (running, paused by the user, finished, stopped by the user)."""
        if self.state == RunState.PAUSED and self.pause is not None and self.pause.by_errors:
            reason = " ".join(self.pause.reason.split()).rstrip(". ") or "errors"
            return f"Paused: {reason}. {pause_advice(self.pause.needs_restart)}"
        if self.state == RunState.CRASHED:
            return self.crash_text()
        ended = self.ended
        if ended is not None and self.state in (RunState.STOPPED, RunState.ERROR) and \
                ended.reason not in (ev.FinishReason.TARGET, ev.FinishReason.STOPPED):
            return self._finish_text(ended, one_line=True)
        return ""

    def _on_RunStarted(self, e: ev.RunStarted) -> None:
        self._set_state(RunState.RUNNING)
        self.status.reason = ""
        self.pause = self.ended = None
        self.lost_pid = None
        status = self.status
        status.elapsed_before += status.rates.run_seconds(e.ts)  # (a session before this one)
        status.rates.restart(e.ts)
        self.status.target = e.target
        self.status.command = e.command
        if e.command:
            self.status.endpoint = "batch command"
        elif e.endpoint and not self.status.embedded:
            self.status.endpoint = e.endpoint
        self.status.endpoints = len(e.endpoints) or 1

    def _on_EndpointsReported(self, e: ev.EndpointsReported) -> None:
        self.endpoints = e.endpoints
        self.status.endpoints = max(1, len(e.endpoints))
        self.dirty |= {"prompts", "status"}

    def _on_Stopping(self, e: ev.Stopping) -> None:
        self._set_state(RunState.STOPPING)
        self.status.rates.resume(e.ts)  # (a stop while paused: the stopping time counts)

    def _on_Finished(self, e: ev.Finished) -> None:
        reason = ev.FinishReason(e.reason)
        self.in_flight.clear()  # the engine has stopped: nothing is in flight any more
        self.dirty.add("prompts")
        self._set_state(reason.state)
        self.status.rates.resume(e.ts)  # (the store closes a pause at the end)
        self.status.rates.end(e.ts)
        self.ended = e
        severity = "error" if reason in (ev.FinishReason.ERROR, ev.FinishReason.FAILING) \
            else "information"
        self.notices.append((self._finish_text(e), "Run", severity))

    def _finish_text(self, e: ev.Finished, one_line: bool = False) -> str:
        """What the end says; the resume command on a line of its own. `one_line`: the
        words before it on one line (an error's message may hold line breaks)."""
        at = f"{e.accepted}/{e.target}"
        why = e.message.rstrip(". ")
        reason = ev.FinishReason(e.reason)
        if reason is ev.FinishReason.TARGET:
            return f"Target reached: {e.accepted} tasks."
        said = {ev.FinishReason.STOPPED: f"Stopped at {at}. Resume with:",
                ev.FinishReason.LIMIT: f"Stopped at {at}: {why}. Resume with a higher limit:",
                }.get(reason, f"Stopped at {at}: {why}. Resume with (once the cause is fixed):")
        return with_command(" ".join(said.split()) if one_line else said, self.resume_command)

    def _set_state(self, state: str) -> None:
        self.state = state
        self.status.state = state
        self.dirty.add("status")

    # -- quality review ---------------------------------------------------------------------------
    def _load_reviews(self, snap: RunSnapshot) -> None:
        self.reviews = {r.task_id: r for r in snap.reviews}
        self.dirty.add("stats")

    def _on_ReviewUpdated(self, e: ev.ReviewUpdated) -> None:
        for record in e.reviews:
            self.reviews[record.task_id] = record
        self.reviews = dict(sorted(self.reviews.items(), key=lambda kv: kv[1].position))
        self.dirty.add("stats")

    def review_records(self) -> list[ReviewRecord]:
        """The review's records in review order (empty before the first sample)."""
        return list(self.reviews.values())

    def review_text(self, wide: bool = False) -> Text:
        """The review table the main screen shows (engine/review.py): tasks done of sampled and
        passed, then per question the tasks reviewed (n), the share answered yes and its 95%
        Wilson interval in percent; empty before the first sample. `wide`: the table
        `selfinstruct review` prints (67 columns); otherwise one narrow enough for the 80x24
        layout's statistics pane (23 columns)."""
        if not self.reviews:
            return Text()
        summary = summarize(self.reviews.values())
        text = Text()
        if wide:
            lines = summary.lines()
            text.append("review: ", style="bold")
            text.append(lines[0] + "\n")
            text.append(lines[1], style="bold")
            for line in lines[2:]:
                text.append("\n" + line)
            return text
        text.append(f"review {summary.done}/{summary.sampled} done, {summary.passed} passed\n",
                    style="bold")
        text.append(f"{'':<6}{'n':>3} {'yes':>4} 95% CI", style="bold")
        for q in summary.questions:
            share = f"{q.share:.0%}" if q.reviewed else "-"
            interval = f"{q.low * 100:.0f}-{q.high * 100:.0f}%" if q.reviewed else "-"
            text.append(f"\n{REVIEW_SHORT_LABEL[q.question]:<6}{q.reviewed:>3} {share:>4} "
                        f"{interval}")
        return text

    # -- for the widgets --------------------------------------------------------------------------
    def take_pool_changes(self) -> tuple[list[Row], list[int]]:
        added, removed = self.rows_added, self.rows_removed
        self.rows_added, self.rows_removed = [], []
        return added, removed

    def take_rejection_lines(self) -> list[RejectionLine]:
        lines, self.new_rejection_lines = self.new_rejection_lines, []
        return lines

    def take_notices(self) -> list[tuple[str, str, str]]:
        notices, self.notices = self.notices, []
        return notices

    def counts_labels(self) -> list[str]:
        """The rejections pane's counters, one label each: rejections per reason, most first;
        then the candidates kept open (not rejected: taken up again, maybe accepted since),
        apart after a bar. The pane wraps between labels, never inside one."""
        counts = self.rejection_counts.most_common()
        labels: list[str] = [reason_count(k, v) for k, v in counts if k not in OPEN_REASONS]
        kept = [f"{k} {v}" for k, v in counts if k in OPEN_REASONS]
        if kept:
            labels += [Worded(f"│ kept open: {kept[0]}", f"│ open: {kept[0]}", kept[0]),
                       *kept[1:]]
        return labels or [Worded("no rejections yet", "none yet")]

    def counts_text(self) -> str:
        """`counts_labels` on one line."""
        return "  ".join(self.counts_labels())


def active_seconds(rounds: list[RoundStats], now: float | None,
                   pauses: Iterable[tuple[float, float | None]] = ()) -> float:
    """Seconds in which a round ran and the run was not paused (rates.active_seconds_of over
    the rounds' [started, finished] spans, epoch seconds); a round still running ends at `now`
    (a crashed run's: its last recorded activity, `RunSnapshot.crash_end`, where the next
    session ends it; None: after its `wall_time`), a pause still open at `now` (None: never).
    Rounds overlap (one starts while the two before it finish): their wall times added up
    counted the overlap again, and a run resumed after a 3:51 session showed 7:20 at once."""
    return active_seconds_of(((r.started, r.finished if r.finished is not None else
                               max(r.started, now) if now is not None else
                               r.started + r.wall_time)
                              for r in rounds), pauses, now)


def _line(r: RejectionRecord) -> RejectionLine:
    return RejectionLine(r.level, r.reason, r.candidate, r.detail, r.similar_text, r.score)
