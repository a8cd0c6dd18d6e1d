"""Status line, prompts, rejections and round-statistics panes. They render a `RunView`."""

from __future__ import annotations

from collections import Counter

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, RichLog, Sparkline, Static

from selfinstruct_tui.engine.control import HISTORY_REJECTIONS
from selfinstruct_tui.tui.view import ROUND_COLUMNS, RunView, StatusView

BARS = " ▁▂▃▄▅▆▇█"


def histogram_line(values: list[float], bins: int, lo: float, hi: float) -> str:
    if not values:
        return ""
    counts = [0] * bins
    for v in values:
        i = int((v - lo) / (hi - lo) * bins) if hi > lo else 0
        counts[max(0, min(bins - 1, i))] += 1
    top = max(counts) or 1
    return "".join(BARS[round(c / top * (len(BARS) - 1))] for c in counts)


class StatusLine(Static):
    """One fixed line: updating it never relayouts the screen."""

    def show(self, status: StatusView) -> None:
        self.update(status.line(self.size.width), layout=False)


class PoolPane(Vertical):
    """The task pool's frame (header, table, info line, filter box)."""

    ALLOW_MAXIMIZE = True


class PromptsPane(Vertical):
    """Prompts in flight and the latest completed one with the model's raw response."""

    ALLOW_MAXIMIZE = True

    def compose(self) -> ComposeResult:
        yield Static("", id="inflight")
        yield RichLog(id="latest", wrap=True, markup=False, highlight=False, max_lines=400)

    def on_mount(self) -> None:
        self.border_title = "Current prompts"
        self._shown_latest: object = None

    def show(self, view: RunView) -> None:
        kinds = Counter(k for k, _ in view.in_flight.values())
        text = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        self.query_one("#inflight", Static).update(f"in flight: {text}")
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
        yield Static("", id="reasons")
        yield RichLog(id="rejections", wrap=False, markup=False, highlight=False,
                      max_lines=HISTORY_REJECTIONS)

    def on_mount(self) -> None:
        self.border_title = "Rejections"

    def show(self, view: RunView) -> None:
        log = self.query_one("#rejections", RichLog)
        for line in view.take_rejection_lines():
            log.write(line.text())
        self.query_one("#reasons", Static).update(view.counts_text())


class StatsPane(Vertical):
    ALLOW_MAXIMIZE = True

    def compose(self) -> ComposeResult:
        yield Static("", id="charts")
        yield Sparkline([], id="growth")
        yield DataTable(id="rounds", cursor_type="row", zebra_stripes=True)
        yield Static("", id="review-summary")

    def on_mount(self) -> None:
        self.border_title = "Round statistics"
        table = self.query_one("#rounds", DataTable)
        for label in ROUND_COLUMNS:
            table.add_column(label, key=label)

    def show(self, view: RunView) -> None:
        table = self.query_one("#rounds", DataTable)
        wanted = {str(n): row for n, row in view.rounds.items()}
        for key in [k.value for k in table.rows if k.value is not None
                    and k.value not in wanted]:
            table.remove_row(key)
        for key, row in wanted.items():
            if key in table.rows:
                if tuple(table.get_row(key)) != row:
                    for label, value in zip(ROUND_COLUMNS, row, strict=True):
                        table.update_cell(key, label, value)
            else:
                table.add_row(*row, key=key)
        self.query_one("#growth", Sparkline).data = view.pool_sizes[-200:] or [0]
        text = Text()
        text.append("max ROUGE-L vs pool  0 ", style="bold")
        text.append(histogram_line(view.scores, 20, 0.0, 1.0))
        text.append(" 1\n")
        text.append("instruction words    0 ", style="bold")
        text.append(histogram_line([float(n) for n in view.lengths], 20, 0.0, 60.0))
        text.append(" 60\n")
        text.append("pool growth per round", style="bold")
        self.query_one("#charts", Static).update(text)
        self.show_review(view)

    def show_review(self, view: RunView) -> None:
        """The quality review's narrow table under the rounds, once a sample exists (shown in
        the compact layout; the wide one shows it under the task pool: `show_review_wide`)."""
        review = self.query_one("#review-summary", Static)
        review.set_class(bool(view.reviews), "visible")
        review.update(view.review_text())


def show_review_wide(widget: Static, view: RunView) -> None:
    """The quality review's full table (as `selfinstruct review` prints it) in `widget`, under
    the task pool of the wide layout, once a sample exists."""
    widget.set_class(bool(view.reviews), "visible")
    widget.update(view.review_text(wide=True))
