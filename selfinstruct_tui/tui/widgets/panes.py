"""Status line, prompts, rejections and round-statistics panes. They render a `RunView`."""

from __future__ import annotations

from collections import Counter

from rich.cells import cell_len, set_cell_size
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.geometry import Size
from textual.reactive import Reactive
from textual.widget import Widget
from textual.widgets import Checkbox, DataTable, Input, RichLog, Static
from textual_plotext import PlotextPlot

from selfinstruct_tui.engine.batch import progress_line
from selfinstruct_tui.engine.control import HISTORY_REJECTIONS, RunState
from selfinstruct_tui.tui.keys import typed_character
from selfinstruct_tui.tui.view import ROUND_COLUMNS, RunView, StatusView, Worded, fit

CHARTS = ("rouge", "lengths", "accepted", "rejections")
CHART_TITLES = {
    "rouge": "max ROUGE-L vs pool (paper Fig. 3)",
    "lengths": "instruction length",
    "accepted": "accepted per round",
    "rejections": "rejections by reason",
}
NARROW_LOG = 30  # a rejections pane narrower than this writes its log's reasons short
SHORT_KINDS = {"classify": "class.", "generate": "gen.", "instances": "inst."}  # narrow panes
TOP_REASONS = 4  # the rejection chart draws the most common reasons; the rest add up as "other"
# Each line of the rejection chart is drawn with its own character, which its legend entry
# shows: the lines are told apart without colour (a monochrome terminal, NO_COLOR, colour
# blindness). Colour alone told them apart before. One for each reason drawn and "other".
SERIES_MARKERS = ("o", "x", "+", "*", "=")


def int_ticks(lo: int, hi: int, count: int = 4) -> list[int]:
    """About `count` whole-number ticks from `lo` to `hi` (counts and rounds are integers)."""
    step = max(1, -(-(hi - lo) // count))
    return list(range(lo, hi + 1, step))


def count_axis(plt, peak: int) -> None:
    """A y axis of counts from 0 to `peak` (at least 1), with headroom so that a full bar never
    fills the box, and two ticks (0 and the peak), each on its own row at any pane height."""
    peak = max(1, peak)
    plt.ylim(0, peak * 1.25)
    plt.yticks([0, peak])


def draw_chart(plt, view: RunView, which: str) -> None:
    """Draw one of CHARTS from the view on a plotext figure (`plt`, textual-plotext's Plot).
    Histograms come from counts the view keeps; per-round charts from its last rounds."""
    plt.clear_figure()
    if which in ("rouge", "lengths"):
        hist = view.score_hist if which == "rouge" else view.length_hist
        width = (hist.hi - hist.lo) / hist.bins
        centres = [edge + width / 2 for edge in hist.edges()]
        plt.bar(centres, hist.counts, width=0.8)
        count_axis(plt, max(hist.counts))
        if which == "rouge":
            plt.vline(0.7)  # the paper's near-duplicate threshold
            plt.xlim(0, 1)
            plt.xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
            plt.xlabel("max ROUGE-L (filter rejects > 0.7)")
        else:
            plt.xlim(0, hist.hi)
            plt.xticks([int(hist.lo + n * 10) for n in range(int(hist.hi - hist.lo) // 10 + 1)])
            plt.xlabel(f"words ({int(hist.hi - width)}+ in the last bar)")
        plt.ylabel("tasks")
        return
    points = list(view.round_points)
    if not points:
        plt.title("no finished round yet")
        return
    rounds = [p.round for p in points]
    plt.xticks(int_ticks(rounds[0], rounds[-1], 5))
    if which == "accepted":
        plt.bar(rounds, [p.accepted for p in points], width=0.6)
        count_axis(plt, max(p.accepted for p in points))
        plt.ylabel("accepted")
    else:
        totals: Counter[str] = Counter()
        for p in points:
            totals.update(p.rejected)
        top = [reason for reason, _ in totals.most_common(TOP_REASONS)]
        if not top:
            plt.title("no rejections")
            return
        for reason, marker in zip(top, SERIES_MARKERS, strict=False):
            plt.plot(rounds, [p.rejected.get(reason, 0) for p in points],
                     label=reason.replace("_", " "), marker=marker)
        series = [[p.rejected.get(reason, 0) for p in points] for reason in top]
        if len(totals) > len(top):
            other = [sum(v for k, v in p.rejected.items() if k not in top) for p in points]
            plt.plot(rounds, other, label="other", marker=SERIES_MARKERS[len(top)])
            series.append(other)
        count_axis(plt, max(max(values) for values in series))
        plt.ylabel("rejected")
    plt.xlabel("round")


def pack_labels(labels: list[str], width: int, gap: int = 2) -> list[str]:
    """`labels` side by side, `gap` spaces apart, in lines of at most `width` cells: a label
    that does not fit on a line starts the next one (a label is never split across lines); a
    label wider than `width` takes its longest wording that fits (a `Worded`: "near dup: 4"
    for "near duplicate: 4"), and one that still does not fit is cut with an ellipsis, before
    its ": count" if it has one. `width` < 1: all on one line."""
    if width < 1:
        return [(" " * gap).join(labels)]
    lines: list[str] = []
    line = ""
    for label in labels:
        label = fit(label, width)
        if cell_len(label) > width:
            head, colon, count = label.rpartition(": ")
            tail = f"…{colon}{count}" if colon and cell_len(count) + 4 <= width else "…"
            label = set_cell_size(head if colon else label, width - cell_len(tail)) + tail
        if line and cell_len(line) + gap + cell_len(label) > width:
            lines.append(line)
            line = label
        else:
            line = f"{line}{' ' * gap}{label}" if line else label
    return [*lines, line] if line else lines


class LabelFlow(Widget):
    """Short labels (counters) that flow across the widget's width and wrap between labels,
    never inside one ("near / duplicate: 4" read as two counters); then, optionally, lines of
    text below them, wrapped between words as usual."""

    DEFAULT_CSS = "LabelFlow { height: auto; }"

    def __init__(self, *, id: str | None = None, gap: int = 2) -> None:
        super().__init__(id=id)
        self.gap = gap
        self.labels: list[str] = []
        self.text = ""

    def show(self, labels: list[str], text: str = "") -> None:
        if labels != self.labels or text != self.text:
            self.labels, self.text = list(labels), text
            self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        if not self.text:
            return len(pack_labels(self.labels, width, self.gap)) or 1
        rest = Text(self.text).wrap(self.app.console, max(1, width))
        return len(pack_labels(self.labels, width, self.gap)) + len(rest)

    def render(self) -> Text:
        width = self.content_size.width
        labels = Text("\n".join(pack_labels(self.labels, width, self.gap)), no_wrap=True,
                      overflow="ellipsis")
        if not self.text:
            return labels
        return Text("\n").join([labels, Text(self.text)])


class MarkedCheckbox(Checkbox):
    """A check box whose mark says its state without colour: "X" when on, blank when off.
    Textual's draws "X" in both states and tells them apart by colour alone, which a terminal
    with few colours (NO_COLOR, an SSH session's TERM) shows the same."""

    @property
    def _button(self) -> Content:
        self.BUTTON_INNER = "X" if self.value else " "
        return super()._button


class PartsLine(Static):
    """One line of parts joined by " · " that leaves out whole parts, from the end, where the
    line is too narrow for them all (the task pool's info line: "keys: enter…" was cut
    mid-word at 60 columns); the first part always stays."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.parts: tuple[str, ...] = ()

    def show(self, parts: tuple[str, ...]) -> None:
        if parts != self.parts:
            self.parts = parts
            self.refresh()

    def render(self) -> Text:
        width = self.content_size.width
        parts = list(self.parts)
        while len(parts) > 1 and width and cell_len(" " + " · ".join(parts)) > width:
            parts.pop()
        return Text(" " + " · ".join(parts), no_wrap=True, overflow="ellipsis")


class StatusLine(Static):
    """One fixed line: updating it never relayouts the screen, and an unchanged line is not
    redrawn (the app shows the status every refresh interval, 0.5 s by default: ~1 ms of
    drawing each time, which landed inside key presses)."""

    _shown: Text | None = None

    def show(self, status: StatusView) -> None:
        line = status.line(self.size.width)
        if line != self._shown:
            self._shown = line
            self.update(line, layout=False)


class FilterInput(Input):
    """A text box whose typing never re-lays out the screen (the task pool's filter box).

    Input keeps the width of its text as its virtual size (for scrolling long text sideways),
    and Widget's virtual_size is a layout reactive: every key re-laid out the whole screen
    (~4 ms at 120x40 with 100k tasks) and the next frame redrew the scrollbars of every pane.
    This box's size comes from CSS (its width a share of the pane, a fixed height), never from
    its text, so a new virtual size only repaints the box and updates its scroll limits, as
    the layout pass did."""

    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False)

    def watch_virtual_size(self, size: Size) -> None:
        self._scroll_update(size)

    def check_consume_key(self, key: str, character: str | None) -> bool:
        """Whether pressing `key` types in this box (then the app's binding for it neither acts
        nor is offered in the footer while the box has the focus). Textual reads no character
        from some key names ("slash", "minus"): the footer offered "/ Filter" in the box,
        where "/" types a slash."""
        return super().check_consume_key(key, character or typed_character(key))


class PoolPane(Vertical):
    """The task pool's frame (header, table, info line, filter box)."""

    ALLOW_MAXIMIZE = True


class PromptsPane(Vertical):
    """Prompts in flight and the latest completed one with the model's raw response."""

    ALLOW_MAXIMIZE = True

    def compose(self) -> ComposeResult:
        yield LabelFlow(id="inflight", gap=1)
        yield RichLog(id="latest", wrap=True, markup=False, highlight=False, max_lines=400)

    def on_mount(self) -> None:
        self.border_title = "Current prompts"
        self._shown_latest: object = None

    def show(self, view: RunView) -> None:
        kinds = Counter(k for k, _ in view.in_flight.values())
        # Prompts are recorded before they wait for a free slot (--concurrency), so the count
        # is of open requests: sent, or queued for a slot ("in flight" counted 41-63 at
        # --concurrency 8); while paused the queued ones are held back; after a crash they
        # are what the process left unfinished.
        # The state is a label of its own, ahead of the counts, in shorter words for a narrow
        # pane ("open (h…: 4 classify," lost what "held" says).
        state: dict[str, str] = {
            RunState.PAUSED: Worded("open (held, paused):", "held (paused):", "held:"),
            RunState.CRASHED: Worded("unfinished at the crash:", "unfinished:")}
        counts: list[str] = [Worded(f"{n} {k},", f"{n} {SHORT_KINDS.get(k, k)},")
                             for k, n in sorted(kinds.items())] or ["none,"]
        counts[-1] = Worded(*(form.rstrip(",") for form in getattr(
            counts[-1], "forms", (counts[-1],))))
        counts.insert(0, state.get(view.state, "open:"))
        lines = [f"  {e.text()}" for e in view.endpoints]  # a pool: one line per endpoint
        lines += [progress_line(b) for b in view.batches.values()]  # pending batch jobs
        # (plain text: an endpoint's "[out]" is a state, not a style tag)
        self.query_one("#inflight", LabelFlow).show(counts, "\n".join(lines))
        if view.latest is None or view.latest is self._shown_latest:
            return
        self._shown_latest = view.latest
        prompt, examples, response, kind, latency = view.latest
        log = self.query_one("#latest", RichLog)
        log.clear()
        log.write(Text(f"latest {kind} prompt ({latency:.2f}s)", style="bold"))
        if examples:
            for task_id, origin, instruction in examples:
                mark = "◆ pool" if origin == "machine" else "· seed"
                log.write(Text(f"{mark} #{task_id}: {instruction}",
                               style="bold" if origin == "machine" else ""))
        else:
            log.write(Text(prompt[-1500:]))
        log.write(Text("─ response ─", style="bold"))
        log.write(Text(response))


class RejectionsPane(Vertical):
    ALLOW_MAXIMIZE = True

    def compose(self) -> ComposeResult:
        yield LabelFlow(id="reasons")
        yield RichLog(id="rejections", wrap=False, markup=False, highlight=False,
                      max_lines=HISTORY_REJECTIONS)

    def on_mount(self) -> None:
        self.border_title = "Rejections"
        self._view: RunView | None = None
        self._short: bool | None = None  # the log's reasons in short names (a narrow pane)

    def show(self, view: RunView) -> None:
        self._view = view
        log = self.query_one("#rejections", RichLog)
        if not self._relog(view):
            for line in view.take_rejection_lines():
                log.write(line.text(bool(self._short)))
        self.query_one("#reasons", LabelFlow).show(view.counts_labels())

    def on_resize(self) -> None:
        if self._view is not None:
            self._relog(self._view)

    def _relog(self, view: RunView) -> bool:
        """Write the log again when the pane crossed NARROW_LOG (its reasons long or short:
        "blacklisted " of 18 columns left a 13-column pane no room for the candidate)."""
        short = self.content_size.width < NARROW_LOG
        if short == self._short:
            return False
        self._short = short
        view.take_rejection_lines()  # (all of them are in view.rejection_lines)
        log = self.query_one("#rejections", RichLog)
        log.clear()
        for line in view.rejection_lines:
            log.write(line.text(short))
        return True


class StatsPane(Vertical):
    """A chart (one of CHARTS, `g` cycles them) above the rounds table."""

    ALLOW_MAXIMIZE = True

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="chart")
        yield DataTable(id="rounds", cursor_type="row", zebra_stripes=True)
        yield Static("", id="review-summary")

    def on_mount(self) -> None:
        self._view: RunView | None = None
        self.chart = CHARTS[0]
        self._title()
        table = self.query_one("#rounds", DataTable)
        for label in ROUND_COLUMNS:
            table.add_column(label, key=label)

    def _title(self) -> None:
        n = CHARTS.index(self.chart) + 1
        self.border_title = "Round statistics"
        self.border_subtitle = f"{n}/{len(CHARTS)} {CHART_TITLES[self.chart]} · g: next"

    def next_chart(self, view: RunView) -> None:
        self.chart = CHARTS[(CHARTS.index(self.chart) + 1) % len(CHARTS)]
        self._title()
        self.show(view)

    def on_resize(self) -> None:
        if self._view is not None:
            self.show(self._view)

    def _rejected_wording(self, table: DataTable, view: RunView) -> int:
        """Which wording of the rounds' `rejected` cells (`Worded`) the pane shows whole: 0 in
        full, 1 with the reason's short name ("12 (near dup+)"), 2 the count alone, where
        "12 (near duplica" was cut."""
        at = ROUND_COLUMNS.index("rejected")
        columns = list(table.columns.values())[:at]
        room = (self.content_size.width - 2 * table.cell_padding
                - sum(column.get_render_width(table) for column in columns))
        for wording in (0, 1):
            if all(cell_len(_wording(row[at], wording)) <= room for row in view.rounds.values()):
                return wording
        return 2

    def show(self, view: RunView) -> None:
        self._view = view
        table = self.query_one("#rounds", DataTable)
        wording = self._rejected_wording(table, view)
        wanted = {str(n): tuple(_wording(cell, wording) for cell in row)
                  for n, row in view.rounds.items()}
        added = False
        for key in [k.value for k in table.rows if k.value is not None
                    and k.value not in wanted]:
            table.remove_row(key)
        for key, row in wanted.items():
            if key in table.rows:
                if tuple(table.get_row(key)) != row:
                    # a wider cell widens its column ("3 (black" showed of "3 (blacklist+)":
                    # the column kept the width of the count alone the first show chose)
                    for label, value in zip(ROUND_COLUMNS, row, strict=True):
                        table.update_cell(key, label, value, update_width=True)
            else:
                table.add_row(*row, key=key)
                added = True
        if added:  # the newest round on top, where the pane shows it
            table.sort("round", key=int, reverse=True)
        plot = self.query_one("#chart", PlotextPlot)
        draw_chart(plot.plt, view, self.chart)
        plot.refresh()
        self.show_review(view)

    def show_review(self, view: RunView) -> None:
        """The quality review's narrow table under the rounds, once a sample exists (shown in
        the compact layout; the wide one shows it under the task pool: `show_review_wide`)."""
        review = self.query_one("#review-summary", Static)
        review.set_class(bool(view.reviews), "visible")
        review.update(view.review_text())


def _wording(cell: str, n: int) -> str:
    """The `n`-th wording of a table cell (a `Worded`), or its last; a plain str: itself."""
    forms = getattr(cell, "forms", (cell,))
    return forms[min(n, len(forms) - 1)]


def show_review_wide(widget: Static, view: RunView) -> None:
    """The quality review's full table (as `selfinstruct review` prints it) in `widget`, under
    the task pool of the wide layout, once a sample exists."""
    widget.set_class(bool(view.reviews), "visible")
    widget.update(view.review_text(wide=True))
