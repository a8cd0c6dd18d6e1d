"""What a user waits for, as rates over the last minute: accepted tasks per minute, and the
tokens per second the endpoint read (prompt) and wrote (completion). Shown on the status line and
the headless lines; named so that each figure says what it measures."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable

WINDOW_SECONDS = 60.0


class Rates:
    """A session's time figures from the engine's records, all in epoch seconds: when the
    session started, when each task was accepted (`Task.created`), each answer received
    (`PromptRecord.finished`, with its tokens), and its pauses ((started, ended); ended None:
    open), as the store records them and the engine's events carry them (`Event.ts`).

    The rule, the same in every UI (the engine's own, the headless lines, an attached one):
    the rates are of this session's last `window` seconds of run time (paused time left out),
    over the window, or over the run time since `started` when that is shorter; while the run
    is paused they hold as they were when it paused (an answer in flight that arrives during
    the pause counts as of the pause's start). `run_seconds` is the session's run time.
    Every figure is a function of these records and of `now` alone: each UI used to stamp an
    event with its own clock when it saw it (an attached UI a poll and a refresh later, its
    pause when its follower noticed it) and two UIs on one paused run showed different
    figures."""

    def __init__(self, window: float = WINDOW_SECONDS, started: float | None = None) -> None:
        self.window = window
        self.started: float | None = started  # epoch s; None: no session drives the run
        self.ended: float | None = None  # epoch s: the session ended (stopped, crashed)
        self._accepted: deque[float] = deque()
        self._tokens: deque[tuple[float, int, int]] = deque()
        self._pauses: list[tuple[float, float | None]] = []

    def restart(self, started: float | None = None) -> None:
        """A session started at `started` (epoch s; None: now): nothing counted yet."""
        self.started = time.time() if started is None else started
        self.ended = None
        self._pauses = []
        self._accepted.clear()
        self._tokens.clear()

    def pause(self, at: float | None = None) -> None:
        """The run paused at `at` (epoch s; None: now; the engine's `Paused.ts`): the rates
        hold as they are until `resume`. A pause already open stays as it is."""
        if not self._pauses or self._pauses[-1][1] is not None:
            self._pauses.append((time.time() if at is None else at, None))

    def resume(self, at: float | None = None) -> None:
        """The open pause ended at `at` (epoch s; None: now; the engine's `Resumed.ts`): the
        paused time is left out of the window (right after a resume the rate read 30 tasks/min
        for a run making 650, the paused minutes inside its window)."""
        if self._pauses and self._pauses[-1][1] is None:
            start = self._pauses[-1][0]
            self._pauses[-1] = (start, max(start, time.time() if at is None else at))

    def end(self, at: float | None = None) -> None:
        """The session ended at `at` (epoch s; None: now): its run time stops there."""
        if self.started is not None:
            self.ended = time.time() if at is None else at

    def load(self, started: float, accepted: Iterable[float],
             answered: Iterable[tuple[float, int, int]],
             pauses: Iterable[tuple[float, float | None]] = ()) -> None:
        """A UI that attached to a running or paused session: the session's records as the
        store holds them (`RunSnapshot`), all epoch seconds: its start, what it accepted and
        answered (with prompt and completion tokens; `window_start` says from when they are
        needed) and the run's pauses ((started, ended); ended None: still paused). Events
        before `started` are an earlier session's."""
        self.restart(started)
        self._pauses = [(max(s, started), e) for s, e in pauses
                        if e is None or e > started]
        self._accepted.extend(sorted(t for t in accepted if t >= started))
        self._tokens.extend(sorted(a for a in answered if a[0] >= started))

    def accepted(self, n: int = 1, at: float | None = None) -> None:
        """`n` tasks accepted at `at` (epoch s; None: now; `Task.created`)."""
        self._accepted.extend([time.time() if at is None else at] * n)

    def answered(self, prompt_tokens: int, completion_tokens: int,
                 at: float | None = None) -> None:
        """An answer received at `at` (epoch s; None: now; `PromptRecord.finished`)."""
        self._tokens.append((time.time() if at is None else at, prompt_tokens,
                             completion_tokens))

    def run_seconds(self, now: float | None = None) -> float:
        """The session's run time at `now` (epoch s; None: the clock) in seconds: from its
        start to `now` (or its end), its pauses left out; 0.0 without a session."""
        if self.started is None:
            return 0.0
        now = time.time() if now is None else now
        if self.ended is not None:
            now = min(now, self.ended)
        return max(0.0, active_seconds_of([(self.started, now)], self._pauses, now))

    def _window(self, now: float | None) -> tuple[float, float]:
        """(epoch s from which events count, the seconds they are counted over) at `now`."""
        now = time.time() if now is None else now
        if self.started is None:
            return now, 1e-9
        if self.ended is not None:
            now = min(now, self.ended)
        since = window_start(self.started, self._pauses, now, self.window)
        while self._accepted and self._accepted[0] < since:
            self._accepted.popleft()
        while self._tokens and self._tokens[0][0] < since:
            self._tokens.popleft()
        return since, max(1e-9, min(self.window, self.run_seconds(now)))

    def tasks_per_minute(self, now: float | None = None) -> float:
        """Accepted tasks per minute at `now` (epoch s; None: the clock; never earlier than
        an earlier call's: what fell out of the window is let go)."""
        since, span = self._window(now)
        return sum(1 for t in self._accepted if t >= since) / span * 60

    def tokens_per_second(self, now: float | None = None) -> tuple[float, float]:
        """(prompt, completion) tokens per second at `now` (epoch s; None: the clock)."""
        since, span = self._window(now)
        prompt = completion = 0
        for t, p, c in self._tokens:
            if t >= since:
                prompt += p
                completion += c
        return prompt / span, completion / span

    def text(self, with_prompt: bool, now: float | None = None) -> str:
        """e.g. "9.1 tasks/min, output 38 tok/s, prompt 210 tok/s" (prompt: embedded model)."""
        now = time.time() if now is None else now
        prompt, completion = self.tokens_per_second(now)
        return (f"{self.tasks_per_minute(now):.1f} tasks/min, output {completion:.0f} tok/s"
                + (f", prompt {prompt:.0f} tok/s" if with_prompt else ""))


def active_seconds_of(spans: Iterable[tuple[float, float]],
                      pauses: Iterable[tuple[float, float | None]] = (),
                      now: float | None = None) -> float:
    """Seconds of run time in `spans` ((start, end) epoch seconds, overlapping or not): their
    union less the `pauses` ((started, ended) epoch seconds; a pause still open ends at `now`,
    None: never). The one rule for the run's elapsed time and each round's time: a round open
    across a pause counted the pause in its time (a 12 s round showed 312.0s after a 5-minute
    pause) while the elapsed time left it out."""
    running = _union(spans)
    paused = _union((start, end if end is not None else now if now is not None else math.inf)
                    for start, end in pauses)
    total = sum(end - start for start, end in running)
    for start, end in running:
        for p_start, p_end in paused:
            total -= max(0.0, min(end, p_end) - max(start, p_start))
    return total


def window_start(started: float, pauses: Iterable[tuple[float, float | None]], now: float,
                 window: float = WINDOW_SECONDS) -> float:
    """The epoch time from which `now` (epoch seconds) is `window` seconds of run time away:
    the pauses ((started, ended) epoch seconds; ended None: open, to `now`) left out, never
    before the session's `started`. The records a UI needs for `Rates.resume_from`: a run
    paused for ten minutes still shows its last minute of running."""
    t, left = now, window
    for p_start, p_end in reversed(_union(
            (start, end if end is not None else now)
            for start, end in _session_pauses(started, pauses, now))):
        if t - p_end >= left:
            break
        left -= t - p_end
        t = p_start
    return max(started, t - left)


def _session_pauses(started: float, pauses: Iterable[tuple[float, float | None]],
                    now: float) -> list[tuple[float, float | None]]:
    """The pauses within [started, now]: clipped to start no earlier than `started` (a pause
    an earlier process ended in goes on into a session started paused)."""
    return [(max(start, started), end) for start, end in pauses
            if start <= now and (end is None or end > started)]


def _union(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of [start, end] spans as disjoint spans, in order."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
