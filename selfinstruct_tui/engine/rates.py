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
    """Events in a sliding window of `window` seconds of run time (monotonic clock, paused time
    left out); rates use the window, or the run time since `started` when that is shorter.

    The rule, the same in every UI (the engine's own, the headless lines, an attached one):
    the rates are of this session's last `window` seconds of run time. While the run is
    paused they hold as they were when it paused; an event that arrives during a pause (an
    answer in flight) counts as of the pause's start."""

    def __init__(self, window: float = WINDOW_SECONDS, started: float | None = None) -> None:
        self.window = window
        self.started = time.monotonic() if started is None else started
        self._accepted: deque[float] = deque()
        self._tokens: deque[tuple[float, int, int]] = deque()
        self._paused: float | None = None  # monotonic: when the run paused

    def restart(self) -> None:
        self.started = time.monotonic()
        self._paused = None
        self._accepted.clear()
        self._tokens.clear()

    def pause(self) -> None:
        """The run paused: rates hold as they are until `resume` (they fell on while nothing
        was sent, and the ETA grew)."""
        if self._paused is None:
            self._paused = time.monotonic()

    def resume(self) -> None:
        """The run resumed: the paused time is left out of the window (every event and the
        start move on by it), so the rate is of the last minute of running: right after a
        resume it read 30 tasks/min for a run making 650."""
        if self._paused is None:
            return
        gap = time.monotonic() - self._paused
        self._paused = None
        self.started += gap
        self._accepted = deque(t + gap for t in self._accepted)
        self._tokens = deque((t + gap, p, c) for t, p, c in self._tokens)

    def resume_from(self, started_epoch: float, accepted: list[float],
                    answered: list[tuple[float, int, int]],
                    pauses: Iterable[tuple[float, float | None]] = (),
                    now: float | None = None) -> None:
        """A UI that attached to a running or paused session: its rates as the engine's own UI
        has them (the class's rule), from what the store recorded, all in epoch seconds: the
        session's start, what it accepted and answered (with prompt and completion tokens;
        `window_start` says from when they are needed) and the run's pauses ((started, ended);
        ended None: still paused, and the rates then hold). Events before `started_epoch` are
        an earlier session's. Rates counted from the attach alone swung (111 tasks/min against
        the engine's 36); counted over the epoch minute, they read 3100 tasks/min on attaching
        to a run resumed paused after a crash (the crashed session's tasks over a second of the
        new one) and fell while the engine's held."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        pauses = _session_pauses(started_epoch, pauses, now)
        open_pause = next((start for start, end in pauses if end is None), None)
        # monotonic seconds of `now` in this object's clock (the pause's start, when paused:
        # `_now`); an event's is that less the run time from it to now
        anchor = mono - (now - open_pause) if open_pause is not None else mono
        run_now = active_seconds_of([(started_epoch, now)], pauses, now)

        def at(t: float) -> float:
            return anchor - (run_now - active_seconds_of([(started_epoch, min(t, now))],
                                                         pauses, now))

        self.restart()
        self.started = anchor - run_now
        self._paused = anchor if open_pause is not None else None
        self._accepted.extend(sorted(at(t) for t in accepted if t >= started_epoch))
        self._tokens.extend(sorted((at(t), p, c) for t, p, c in answered if t >= started_epoch))

    def _now(self) -> float:
        return time.monotonic() if self._paused is None else self._paused

    def accepted(self, n: int = 1) -> None:
        now = self._now()
        self._accepted.extend([now] * n)

    def answered(self, prompt_tokens: int, completion_tokens: int) -> None:
        self._tokens.append((self._now(), prompt_tokens, completion_tokens))

    def _span(self, now: float) -> float:
        while self._accepted and now - self._accepted[0] > self.window:
            self._accepted.popleft()
        while self._tokens and now - self._tokens[0][0] > self.window:
            self._tokens.popleft()
        return max(1e-9, min(self.window, now - self.started))

    def tasks_per_minute(self) -> float:
        now = self._now()
        return len(self._accepted) / self._span(now) * 60

    def tokens_per_second(self) -> tuple[float, float]:
        """(prompt, completion) tokens per second."""
        now = self._now()
        span = self._span(now)
        return (sum(p for _, p, _ in self._tokens) / span,
                sum(c for _, _, c in self._tokens) / span)

    def text(self, with_prompt: bool) -> str:
        """e.g. "9.1 tasks/min, output 38 tok/s, prompt 210 tok/s" (prompt: embedded model)."""
        prompt, completion = self.tokens_per_second()
        return (f"{self.tasks_per_minute():.1f} tasks/min, output {completion:.0f} tok/s"
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
