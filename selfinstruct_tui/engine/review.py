"""Quality review of a run's machine tasks, as the paper judged its data by hand.

Self-Instruct (Wang et al. 2022, §4.2 and Table 2) rated a random sample of generated tasks,
one random instance each, on three questions: does the instruction describe a valid task, is the
input appropriate for the instruction, is the output a correct and acceptable response. Here the
sample is drawn once (seeded, `draw_sample`), stored in the run's reviews table, answered one
question at a time, and summarised per question with a 95% Wilson score interval. No Textual and
no SQL here: the store keeps the records, the TUI and the CLI show `summarize`'s numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from selfinstruct_tui.engine.store import REVIEW_QUESTIONS, ReviewQuestion, ReviewRecord

DEFAULT_SAMPLE_SIZE = 50
Z_95 = 1.959963984540054  # the standard normal quantile for a two-sided 95% interval

# What the reviewer is asked, and the short label of each question in tables.
QUESTION_TEXT: dict[ReviewQuestion, str] = {
    "instruction": "Does the instruction describe a valid task?",
    "input": "Is the input appropriate for the instruction?",
    "output": "Is the output a correct and acceptable response to the instruction and input?",
}
QUESTION_LABEL: dict[ReviewQuestion, str] = {
    "instruction": "valid instruction",
    "input": "appropriate input",
    "output": "acceptable output",
}


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (Wilson 1927, "Probable inference,
    the law of succession, and statistical inference", JASA 22:209-212).

    `successes` of `n` trials (ints, 0 <= successes <= n); `z` the normal quantile (1.96 for
    95%). Returns (low, high), proportions in [0, 1]; (0.0, 1.0) when n is 0 (nothing is known).
    Unlike the normal approximation it stays inside [0, 1] and is sensible for small n and for
    shares near 0 or 1: 8 of 10 gives (0.490, 0.943). ValueError for counts out of range.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class QuestionSummary:
    """One question's tally over the review: `reviewed` tasks answered on it (skipped ones that
    were answered before the skip count too), `yes` of them answered yes; `share` = yes /
    reviewed (0.0 when none), `low`/`high` its 95% Wilson interval (proportions in [0, 1])."""

    question: ReviewQuestion
    label: str
    reviewed: int
    yes: int
    share: float
    low: float
    high: float


@dataclass(frozen=True)
class ReviewSummary:
    """The review as a whole: `sampled` tasks in it, `done` (all three answered, or skipped),
    `skipped`, `passed` (yes on all three), and one `QuestionSummary` per question in the
    order of `REVIEW_QUESTIONS`."""

    sampled: int
    done: int
    skipped: int
    passed: int
    questions: tuple[QuestionSummary, ...]

    def lines(self) -> list[str]:
        """The plain-text table `selfinstruct review` prints (shares and interval bounds in
        whole percent); the statistics pane shows the same numbers, narrower (tui/view.py)."""
        out = [f"{self.done} of {self.sampled} sampled tasks reviewed"
               + (f" ({self.skipped} skipped)" if self.skipped else "")
               + f"; {self.passed} passed all three questions",
               f"{'question':<18} {'reviewed':>8} {'yes':>5}  95% CI (Wilson)"]
        for q in self.questions:
            interval = f"{q.low:.0%}-{q.high:.0%}" if q.reviewed else "-"
            share = f"{q.share:.0%}" if q.reviewed else "-"
            out.append(f"{q.label:<18} {q.reviewed:>8} {share:>5}  {interval}")
        return out


def summarize(records: Iterable[ReviewRecord]) -> ReviewSummary:
    """Counts and per-question Wilson intervals of a review's records."""
    records = list(records)
    questions = []
    for i, question in enumerate(REVIEW_QUESTIONS):
        answers = [r.answers[i] for r in records if r.answers[i] is not None]
        yes = sum(1 for a in answers if a)
        low, high = wilson_interval(yes, len(answers))
        questions.append(QuestionSummary(question, QUESTION_LABEL[question], len(answers), yes,
                                         yes / len(answers) if answers else 0.0, low, high))
    return ReviewSummary(len(records), sum(r.done for r in records),
                         sum(r.skipped for r in records), sum(r.passed for r in records),
                         tuple(questions))


def draw_sample(tasks: Iterable[tuple[int, int]], size: int, seed: int | None, sample: int,
                exclude: Iterable[int] = ()) -> list[tuple[int, int]]:
    """A seeded random sample of tasks to review, one random instance each.

    `tasks`: (task id, number of instances) of the active machine tasks; `size`: how many to
    draw (all of them if fewer remain); `seed`: the run's random seed (None: 0), `sample` the
    number of this draw (1 for the first), so that each draw of a run is reproducible and
    differs from the others; `exclude`: task ids already reviewed. Returns (task id, instance
    index) pairs in review order. ValueError for a size below 1.
    """
    if size < 1:
        raise ValueError(f"a review sample needs at least 1 task, got {size}")
    skip = set(exclude)
    pool = sorted((tid, n) for tid, n in tasks if tid not in skip and n > 0)
    rng = random.Random(f"selfinstruct-review/{seed or 0}/{sample}")
    chosen = rng.sample(pool, min(size, len(pool)))
    return [(tid, rng.randrange(n)) for tid, n in chosen]


def next_item(records: Iterable[ReviewRecord]) -> ReviewRecord | None:
    """The first sampled task (in review order) that is not done, or None."""
    return next((r for r in sorted(records, key=lambda r: r.position) if not r.done), None)


def review_label(record: ReviewRecord) -> dict[str, object]:
    """A reviewed task's labels as the self-instruct export carries them: the sampled
    `instance_index` (0-based), one answer per question (true, false, or null when not asked),
    `skipped`, `passed` (yes on all three) and the `sample` it was drawn in."""
    label: dict[str, object] = {"instance_index": record.instance_index}
    label.update({q: a for q, a in zip(REVIEW_QUESTIONS, record.answers, strict=True)})
    label.update(skipped=record.skipped, passed=record.passed, sample=record.sample)
    return label
