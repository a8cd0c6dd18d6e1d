"""A pool of endpoints that serve the same run: which endpoint gets the next request, which are
taken out, and what each one did.

Used by `LLMClient` only when a run names two or more endpoints; one endpoint keeps the client's
single-endpoint path exactly as it was.

* Choice: the next request goes to the endpoint with the fewest outstanding requests relative to
  its concurrency (ties: the one listed first); an endpoint never holds more than its concurrency.
* Taken out (and probed again later): an endpoint whose connection fails (refused, or closed
  before an answer: at once), or that answers `OUT_AFTER_STREAK` 5xx or timeouts in a row. It
  is out for `probe_base` seconds, doubled after each failed probe up to `probe_max`. The probe
  is the next real request: once the time has passed the endpoint takes exactly one request; an
  answer puts it back, a failure takes it out again. No extra traffic is sent to a dead endpoint.
* Dropped for the rest of the session: an endpoint that is permanently wrong (a refused key, an
  unknown model or route, an exhausted quota, a TLS certificate or scheme that cannot work, a
  request parameter its model does not take, such as a field of --extra-body): `DROP_CAUSES`.
* Rate limits (429) cool down only the endpoint that sent them.
* Every endpoint out or dropped, and no answer for `down_after` seconds (the run's
  error_pause_seconds): reported once as "all_down", and the run pauses. Waiting for probes
  alone, requests failed too slowly (one probe at a time, 2 ... 60 s apart) for the run's
  "every request has failed" pause: a pool that was down went quiet for minutes. An endpoint
  cooling down after a rate limit is not down (it answered, and said when to come back): while
  one is, the pool waits for it (requests that keep failing pause the run as with one
  endpoint); it was called "all down" and the run paused.

Every change is reported to `on_change` with its named cause (the engine records it in the
store's errors and shows it). The API keys are never part of a report: endpoints are named by
their base URL.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WINDOW_SECONDS = 60.0  # requests/s is measured over this sliding window (monotonic clock)
OUT_AFTER_STREAK = 3  # 5xx answers or timeouts in a row that take an endpoint out
# llm.Cause values that drop an endpoint for good
DROP_CAUSES = ("auth", "not_found", "quota", "redirect", "tls", "unsupported_parameter")
STREAK_CAUSES = ("server_error", "timeout")
CONNECTION_CAUSE = "connection"


class EndpointState:
    """An endpoint's state as stored and shown."""

    IN = "in"  # takes requests
    OUT = "out"  # taken out; probed again at `out_until`
    PROBING = "probing"  # its probe (one real request) is on the way
    DROPPED = "dropped"  # permanently wrong: no more requests this session


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint of the pool: its base URL, the model asked for there, the environment
    variable that holds its key (`api_key`: the key read from it, never stored or shown), how many
    requests may be in flight there and its own requests-per-minute limit (None: none)."""

    base_url: str
    model: str
    key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    requests_per_minute: float | None = None
    api_key: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class EndpointChange:
    """An endpoint taken out, back in, or dropped. `what`: "taken_out", "back", "dropped", or
    "all_down" (no endpoint in and none answered for `down_after` seconds: the run pauses;
    `base_url` "" then); `cause`: the failure cause that did it (an `llm.Cause` value; "" for
    "back"); `retry_in`: seconds until the next probe (taken out only)."""

    base_url: str
    what: str
    cause: str
    message: str
    retry_in: float | None = None

    @property
    def kind(self) -> str:
        """The name it is recorded under in the store's errors: endpoint_taken_out, ..."""
        return f"endpoint_{self.what}"


@dataclass(frozen=True)
class EndpointStats:
    """What one endpoint is doing: `in_flight` requests, answers per second over the last
    `WINDOW_SECONDS`, failed attempts this session (`errors`), the median latency in seconds of
    its last 200 answers (None before the first) and its `state` (an `EndpointState`)."""

    base_url: str
    model: str
    state: str
    in_flight: int
    requests_per_second: float
    errors: int
    median_latency: float | None
    answered: int

    def to_dict(self) -> dict[str, object]:
        return dict(base_url=self.base_url, model=self.model, state=self.state,
                    in_flight=self.in_flight, requests_per_second=self.requests_per_second,
                    errors=self.errors, median_latency=self.median_latency,
                    answered=self.answered)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EndpointStats:
        latency = data.get("median_latency")
        return cls(str(data.get("base_url", "")), str(data.get("model", "")),
                   str(data.get("state", EndpointState.IN)),
                   int(data.get("in_flight", 0) or 0),  # type: ignore[call-overload]
                   float(data.get("requests_per_second", 0.0) or 0.0),  # type: ignore[arg-type]
                   int(data.get("errors", 0) or 0),  # type: ignore[call-overload]
                   float(latency) if latency is not None else None,  # type: ignore[arg-type]
                   int(data.get("answered", 0) or 0))  # type: ignore[call-overload]

    def text(self) -> str:
        """e.g. "http://a:8000/v1: 3 in flight, 1.2 req/s, 0 errors, median 0.84s"."""
        state = "" if self.state == EndpointState.IN else f" [{self.state}]"
        latency = f"{self.median_latency:.2f}s" if self.median_latency is not None else "-"
        return (f"{self.base_url}{state}: {self.in_flight} in flight, "
                f"{self.requests_per_second:.1f} req/s, {self.errors} error"
                f"{'' if self.errors == 1 else 's'}, median {latency}")


class Endpoint:
    """One endpoint's live state. `client` and `limiter` are the caller's (llm.py: an
    AsyncOpenAI for this base URL and a RateLimiter for its requests_per_minute)."""

    def __init__(self, spec: EndpointSpec, client: Any, limiter: Any) -> None:
        self.spec = spec
        self.client = client
        self.limiter = limiter
        self.outstanding = 0
        self.state = EndpointState.IN
        self.streak = 0  # 5xx answers or timeouts in a row
        self.outs = 0  # takeouts in a row without an answer in between
        self.out_until = 0.0  # monotonic
        self.errors = 0
        self.answered = 0
        self.done_at: deque[float] = deque()
        self.latencies: deque[float] = deque(maxlen=200)
        self.started = time.monotonic()
        self.dropped_because = ""  # the failure that dropped it
        self.last_cause = ""  # the cause of its last failed attempt (an `llm.Cause` value)
        # out only for a rate limit's cool-down (`cool`), not taken out by failures: it is up
        self.cooling = False

    @property
    def base_url(self) -> str:
        return self.spec.base_url

    @property
    def load(self) -> float:
        return self.outstanding / max(1, self.spec.concurrency)

    def stats(self, now: float) -> EndpointStats:
        while self.done_at and now - self.done_at[0] > WINDOW_SECONDS:
            self.done_at.popleft()
        latency = statistics.median(self.latencies) if self.latencies else None
        return EndpointStats(self.base_url, self.spec.model, self.state, self.outstanding,
                             len(self.done_at) / max(1.0, min(WINDOW_SECONDS,
                                                              now - self.started)),
                             self.errors, latency,
                             self.answered)


class EndpointPool:
    """Chooses, takes out, probes and drops endpoints (see the module docstring). Not
    thread-safe: use it from the client's event loop. `probe_base`, `probe_max`: seconds."""

    def __init__(self, endpoints: list[Endpoint], *, probe_base: float = 2.0,
                 probe_max: float = 60.0, down_after: float | None = None,
                 on_change: Callable[[EndpointChange], None] | None = None) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = endpoints
        self.probe_base = probe_base
        self.probe_max = probe_max
        self.on_change = on_change
        self._changed = asyncio.Event()
        self.started = time.monotonic()
        self.down_after = down_after
        self.last_answer = self.started  # monotonic
        self._down_said = False  # "all_down" reported for this outage

    @property
    def concurrency(self) -> int:
        """Requests in flight at most: the sum of the endpoints' concurrency."""
        return sum(e.spec.concurrency for e in self.endpoints)

    def alive(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.state != EndpointState.DROPPED]

    def any_in(self, besides: Endpoint | None = None) -> bool:
        return any(e.state == EndpointState.IN for e in self.endpoints if e is not besides)

    def wake(self) -> None:
        """End every wait in `acquire` (a stop, a resume, a state change)."""
        self._changed.set()

    def probe_now(self) -> None:
        """Probe every endpoint that is out at the next request (the user resumed the run)."""
        self.last_answer = time.monotonic()  # a resumed run waits again before saying so
        self._down_said = False
        for e in self.endpoints:
            if e.state == EndpointState.OUT:
                e.out_until = 0.0
        self.wake()

    def _pick(self, now: float) -> Endpoint | None:
        for e in self.endpoints:
            if e.state == EndpointState.OUT and now >= e.out_until:
                e.state = EndpointState.PROBING
        ready = [e for e in self.endpoints
                 if (e.state == EndpointState.IN and e.outstanding < e.spec.concurrency)
                 or (e.state == EndpointState.PROBING and e.outstanding == 0)]
        if not ready:
            return None
        return min(ready, key=lambda e: (e.load, self.endpoints.index(e)))

    async def acquire(self, stopping: Callable[[], bool]) -> Endpoint:
        """The endpoint for the next attempt, with its outstanding count raised (give it back
        with `release`). Waits while every endpoint is full or out (until the next probe time).
        Raises InterruptedError once `stopping()` is true (checked again after every wake-up:
        `wake()` ends a wait at once), LookupError when every endpoint is dropped."""
        while True:
            if stopping():
                raise InterruptedError("stopping")
            if not self.alive():
                raise LookupError("every endpoint was dropped")
            now = time.monotonic()
            chosen = self._pick(now)
            if chosen is not None:
                chosen.outstanding += 1
                return chosen
            waits = [e.out_until - now for e in self.endpoints if e.state == EndpointState.OUT]
            # (its probe, the first request after the cool-down, may be on the way)
            cooling = any(e.cooling and e.state != EndpointState.DROPPED
                          for e in self.endpoints)
            if self.down_after is not None and not self.any_in() and not self._down_said \
                    and not cooling:
                quiet = now - self.last_answer
                if quiet >= self.down_after:
                    self._all_down(quiet)
                else:
                    waits.append(self.down_after - quiet)
            timeout = max(0.01, min(waits)) if waits else None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    def release(self, endpoint: Endpoint) -> None:
        endpoint.outstanding -= 1
        self.wake()

    def succeeded(self, endpoint: Endpoint, latency: float) -> None:
        """An answer from `endpoint` after `latency` seconds: it is (back) in."""
        now = time.monotonic()
        endpoint.answered += 1
        endpoint.done_at.append(now)
        endpoint.latencies.append(latency)
        endpoint.streak = 0
        endpoint.cooling = False
        self.last_answer = now
        self._down_said = False
        if endpoint.state in (EndpointState.PROBING, EndpointState.OUT):
            endpoint.state = EndpointState.IN
            if endpoint.outs:  # said to be taken out; the end of a 429's cool-down is no news
                self._report(EndpointChange(endpoint.base_url, "back", "", f"{endpoint.base_url} "
                                            "answers again: back in the pool"))
        endpoint.outs = 0

    def failed(self, endpoint: Endpoint, cause: str, message: str) -> float | None:
        """A failed attempt at `endpoint` with a retryable `cause` (an `llm.Cause` value). Takes
        it out when the rules say so; returns the seconds until its probe when it was taken out
        by this failure, else None."""
        endpoint.errors += 1
        endpoint.last_cause = cause
        if endpoint.state == EndpointState.DROPPED:
            return None
        if cause in STREAK_CAUSES:
            endpoint.streak += 1
        probing = endpoint.state == EndpointState.PROBING
        if endpoint.state == EndpointState.OUT:
            return None  # an attempt sent before it was taken out
        if not (probing or cause == CONNECTION_CAUSE or endpoint.streak >= OUT_AFTER_STREAK):
            return None
        delay = min(self.probe_max, self.probe_base * 2 ** endpoint.outs)
        endpoint.outs += 1
        endpoint.cooling = False
        endpoint.state = EndpointState.OUT
        endpoint.out_until = time.monotonic() + delay
        why = "the probe failed" if probing else "a connection to it failed" \
            if cause == CONNECTION_CAUSE else f"{endpoint.streak} failures in a row"
        endpoint.streak = 0
        others = "the other endpoints take its requests" if self.any_in() else \
            "no endpoint is in: requests wait for the probes"
        self._report(EndpointChange(
            endpoint.base_url, "taken_out", cause,
            f"{endpoint.base_url} taken out of the pool ({why}: {message}); probed again in "
            f"{delay:.0f}s; {others}", delay))
        self.wake()
        return delay

    def _all_down(self, quiet: float) -> None:
        self._down_said = True
        states = "; ".join(
            f"{e.base_url} dropped ({e.dropped_because})" if e.state == EndpointState.DROPPED
            else f"{e.base_url} out ({e.errors} errors, the last: {e.last_cause or '?'}; "
                 f"its next probe {max(0.0, e.out_until - time.monotonic()):.0f}s from now)"
            for e in self.endpoints)
        self._report(EndpointChange(
            "", "all_down", "connection",
            f"no endpoint of the pool has answered for {quiet:.0f}s and none is in: {states}. "
            "Check that they are up, then resume (a resume probes them all at once)"))

    def cool(self, endpoint: Endpoint, seconds: float, cause: str = "rate_limit") -> None:
        """A rate limit at `endpoint` (`cause`, an `llm.Cause` value): it takes no request for
        `seconds` (others go on); it is up, so a pool whose endpoints only cool down is not
        reported "all_down"."""
        endpoint.errors += 1
        endpoint.last_cause = cause
        if endpoint.state in (EndpointState.IN, EndpointState.PROBING):
            endpoint.cooling = True
            endpoint.state = EndpointState.OUT
            endpoint.out_until = max(endpoint.out_until, time.monotonic() + seconds)
            self.wake()

    def drop(self, endpoint: Endpoint, cause: str, message: str) -> bool:
        """Drop a permanently wrong endpoint; True when others remain to take its requests (when
        it is the last one it stays, and its failure is the run's)."""
        endpoint.errors += 1
        if endpoint.state == EndpointState.DROPPED:
            return bool(self.alive())
        others = [e for e in self.alive() if e is not endpoint]
        if not others:
            return False
        endpoint.state = EndpointState.DROPPED
        endpoint.dropped_because = message
        self._report(EndpointChange(endpoint.base_url, "dropped", cause,
                                    f"{endpoint.base_url} dropped from the pool for this "
                                    f"session: {message}"))
        self.wake()
        return True

    def dropped_reasons(self, *, but: Endpoint | None = None) -> list[str]:
        """'URL: why' for each endpoint dropped this session (except `but`), in pool order."""
        return [f"{e.base_url}: {e.dropped_because}" for e in self.endpoints
                if e is not but and e.state == EndpointState.DROPPED]

    def stats(self) -> list[EndpointStats]:
        now = time.monotonic()
        return [e.stats(now) for e in self.endpoints]

    def _report(self, change: EndpointChange) -> None:
        if self.on_change is not None:
            self.on_change(change)
