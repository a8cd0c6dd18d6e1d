"""Status line, prompts, rejections and round-statistics panes. They only render what they are given."""

from __future__ import annotations

import time
from collections import Counter, deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, RichLog, Sparkline, Static

from selfinstruct_tui.engine.store import RoundStats

BARS = " ▁▂▃▄▅▆▇█"


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


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
    """Run, endpoint and model (never the key), state, pool/target, speed, tokens, cost, time."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.run_name = ""
        self.endpoint = ""
        self.model = ""
        self.embedded = False
        self.state = "starting"
        self.reason = ""
        self.accepted = 0
        self.target = 0
        self.tokens = 0
        self.cost = 0.0
        self.errors = 0
        self.retry_causes: Counter[str] = Counter()
        self.tokens_per_second = 0.0
        self.started = time.monotonic()
        self.elapsed_before = 0.0
        self.accept_times: deque[float] = deque()

    def accepted_now(self, n: int = 1) -> None:
        now = time.monotonic()
        for _ in range(n):
            self.accept_times.append(now)

    def per_second(self) -> float:
        now = time.monotonic()
        while self.accept_times and now - self.accept_times[0] > 60:
            self.accept_times.popleft()
        window = min(60.0, now - self.started) or 1.0
        return len(self.accept_times) / window

    def update_line(self) -> None:
        elapsed = self.elapsed_before + (time.monotonic() - self.started
                                         if self.state in ("running", "paused", "stopping") else 0)
        rate = self.per_second()
        remaining = max(0, self.target - self.accepted)
        eta = fmt_duration(remaining / rate) if rate > 0 and remaining else "-"
        model = f"{self.model} (embedded{f', {self.tokens_per_second:.0f} tok/s' if self.tokens_per_second else ''})" \
            if self.embedded else f"{self.model} @ {self.endpoint}"
        state = self.state + (f" ({self.reason})" if self.reason and self.state == "paused" else "")
        line = Text.assemble(
            (f" {self.run_name} ", "bold"), "│ ", (model, ""), " │ ",
            (state, "bold reverse" if self.state in ("paused", "error") else "bold"),
            f" │ pool {self.accepted}/{self.target} │ {rate * 60:.1f}/min │ "
            f"{self.tokens:,} tok │ ${self.cost:.4f} │ {fmt_duration(elapsed)} │ ETA {eta}",
            (f" │ errors {self.errors}" if self.errors else ""),
            (f" │ retries {sum(self.retry_causes.values())} ("
             + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.retry_causes.most_common(2))
             + ")" if self.retry_causes else ""),
        )
        self.update(line, layout=False)  # one fixed line: no relayout of the screen


class PoolPane(Vertical):
    """The task pool's frame (header, table, info line, filter box)."""

    ALLOW_MAXIMIZE = True


class PromptsPane(Vertical):
    ALLOW_MAXIMIZE = True

    """Prompts in flight and the latest completed one with the model's raw response."""

    def compose(self) -> ComposeResult:
        yield Static("", id="inflight")
        yield RichLog(id="latest", wrap=True, markup=False, highlight=False, max_lines=400)

    def on_mount(self) -> None:
        self.border_title = "Current prompts"
        self.in_flight: dict[int, tuple[str, int]] = {}
        self.attached = False  # requests in flight live in the engine's process only

    def sent(self, prompt_id: int, kind: str, round_: int) -> None:
        self.in_flight[prompt_id] = (kind, round_)

    def done(self, prompt_id: int) -> None:
        self.in_flight.pop(prompt_id, None)

    def show_inflight(self) -> None:
        if self.attached:
            self.query_one("#inflight", Static).update(
                "attached: completed prompts only (in-flight ones stay in the engine)")
            return
        kinds = Counter(k for k, _ in self.in_flight.values())
        text = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        self.query_one("#inflight", Static).update(f"in flight: {text}")

    def show_latest(self, prompt: str, examples: list[tuple[int, str, str]], response: str,
                    kind: str, latency: float) -> None:
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
        yield RichLog(id="rejections", wrap=False, markup=False, highlight=False, max_lines=2000)

    def on_mount(self) -> None:
        self.border_title = "Rejections"
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, candidate: str, detail: str, similar: str | None,
            score: float | None, level: str = "candidate") -> None:
        self.counts[reason] += 1
        line = Text()
        if level == "instance":
            line.append("instance: ", style="italic")
        line.append(f"{reason.replace('_', ' '):<18} ", style="bold")
        line.append(" ".join(candidate.split())[:200])
        if similar is not None and score is not None:
            line.append(f"  ~{score:.2f} «{' '.join(similar.split())[:80]}»", style="italic")
        elif detail:
            line.append(f"  ({detail})", style="italic")
        self.query_one("#rejections", RichLog).write(line)

    def show_counts(self) -> None:
        text = "  ".join(f"{k.replace('_', ' ')}: {v}" for k, v in self.counts.most_common())
        self.query_one("#reasons", Static).update(text or "no rejections yet")


class StatsPane(Vertical):
    ALLOW_MAXIMIZE = True

    def compose(self) -> ComposeResult:
        yield Static("", id="charts")
        yield Sparkline([], id="growth")
        yield DataTable(id="rounds", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.border_title = "Round statistics"
        table = self.query_one("#rounds", DataTable)
        for label in ("round", "prompts", "cand.", "acc.", "rejected", "rate", "tokens",
                      "cost", "time"):
            table.add_column(label, key=label)
        self.pool_sizes: list[int] = []
        self.scores: list[float] = []
        self.lengths: list[int] = []

    def add_round(self, s: RoundStats, pool_total: int | None) -> None:
        table = self.query_one("#rounds", DataTable)
        rejected = s.rejected or {}
        top = max(rejected.items(), key=lambda kv: kv[1])[0].replace("_", " ") if rejected else ""
        row = (str(s.round), str(s.prompts), str(s.candidates), str(s.accepted),
               f"{s.rejected_total}{f' ({top})' if top else ''}", f"{s.acceptance_rate:.0%}",
               f"{s.prompt_tokens + s.completion_tokens:,}", f"${s.cost:.4f}",
               f"{s.wall_time:.1f}s")
        key = str(s.round)
        if key in table.rows:
            for label, value in zip([c.key.value for c in table.ordered_columns], row):
                table.update_cell(key, label, value)
        else:
            table.add_row(*row, key=key)
        if pool_total is not None:
            self.pool_sizes.append(pool_total)

    def add_task(self, max_score: float, instruction: str) -> None:
        self.scores.append(max_score)
        self.lengths.append(len(instruction.split()))

    def show(self) -> None:
        self.query_one("#growth", Sparkline).data = self.pool_sizes[-200:] or [0]
        text = Text()
        text.append("max ROUGE-L vs pool  0 ", style="bold")
        text.append(histogram_line(self.scores, 20, 0.0, 1.0))
        text.append(" 1\n")
        text.append("instruction words    0 ", style="bold")
        text.append(histogram_line([float(n) for n in self.lengths], 20, 0.0, 60.0))
        text.append(" 60\n")
        text.append("pool growth per round", style="bold")
        self.query_one("#charts", Static).update(text)

