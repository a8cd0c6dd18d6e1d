"""The run's policies about money and failures: when to pause and when to stop.

* `SpendGuard`: requests are counted as fruitless as soon as their outcome is known (a
  generation answer none of whose candidates went on, the requests of a candidate that was
  rejected, a failed request); after `max_fruitless_requests` of them (or the run's total
  concurrency, when larger) in a row since the last accepted task, the run pauses with the
  counts per reason and the last rejected answer. Rounds that accept nothing make the next one
  wait. `max_cost` (USD) and `max_tokens` stop it cleanly.
* `FailureWatch`: a permanent failure pauses at once; a streak of failures (at least 3, over
  `error_pause_seconds` without a success) pauses with advice that fits the cause.
"""

from __future__ import annotations

import time
from collections import Counter

from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.filters import RejectionReason
from selfinstruct_tui.engine.llm import Cause, RequestFailed
from selfinstruct_tui.engine.parsing import is_reasoning_only
from selfinstruct_tui.engine.seeds import short_text
from selfinstruct_tui.engine.store import RoundStats

# Rejection reasons that mean no answer came back (the endpoint, not the model's text)
UNANSWERED_REASONS = {r.value for r in (RejectionReason.UNANSWERED, RejectionReason.REQUEST_FAILED,
                                         RejectionReason.ABANDONED, RejectionReason.INTERRUPTED)}
# Request errors that mean the endpoint could not answer (as opposed to refusing the request)
DOWN_CAUSES = {Cause.CONNECTION, Cause.TIMEOUT, Cause.SERVER_ERROR, Cause.RATE_LIMIT, Cause.HTTP,
               Cause.UNANSWERED, Cause.LOADING, Cause.OVERLOADED}

CONNECTIVITY_CAUSES = (Cause.CONNECTION, Cause.TIMEOUT)
DOWN_STATUSES = (502, 503, 504)


class SpendGuard:
    """Tokens and cost of the run (`before`: earlier sessions'), the spend limits, and the count
    of requests that added nothing."""

    def __init__(self, config: RunConfig, before: tuple[int, int] = (0, 0)) -> None:
        self.config = config
        self.before = before
        self.tokens = [0, 0]  # this session's (prompt, completion) tokens
        self.cost = 0.0  # this session's cost, USD
        self.empty_rounds = 0
        self.fruitless_requests = 0
        self.fruitless_reasons: Counter[str] = Counter()
        self.last_rejected: tuple[str, str] | None = None  # (reason, the answer's fragment)
        # the last pause message's fix is a setting the run must be started again with
        self.restart_fixes = False

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for these tokens at the configured prices (per 1K tokens)."""
        return (prompt_tokens * self.config.price_input_per_1k
                + completion_tokens * self.config.price_output_per_1k) / 1000

    def spend(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens[0] += prompt_tokens
        self.tokens[1] += completion_tokens
        self.cost += self.cost_of(prompt_tokens, completion_tokens)

    def over_budget(self) -> str:
        """Why the run is at a spend limit, or "" when it is not."""
        c = self.config
        p_tok = self.before[0] + self.tokens[0]
        c_tok = self.before[1] + self.tokens[1]
        if c.max_tokens and p_tok + c_tok >= c.max_tokens:
            return (f"the run has used {p_tok + c_tok:,} tokens, at or above --max-tokens "
                    f"{c.max_tokens:,}; resume with a --max-tokens above {p_tok + c_tok:,}")
        cost = self.cost_of(p_tok, c_tok)
        if c.max_cost and cost >= c.max_cost:
            return (f"the run has cost ${cost:.4f}, at or above --max-cost {c.max_cost:g}; "
                    f"resume with a --max-cost above {cost:.4f}")
        return ""

    @property
    def limit(self) -> int:
        """Fruitless requests in a row before the pause (0: never): `max_fruitless_requests`,
        or the run's total concurrency when that is larger. With C requests in flight, C answers
        can arrive before a round's first task is accepted, and a limit below C could not stop
        the spending anyway (those requests are sent already): at C=1024 a limit of 40 paused
        healthy runs within seconds."""
        configured = self.config.max_fruitless_requests
        return max(configured, self.config.total_concurrency) if configured else 0

    def reset(self) -> None:
        self.empty_rounds = 0
        self.fruitless_requests = 0
        self.fruitless_reasons.clear()

    def accepted(self) -> None:
        """A task joined the pool: the requests before it were not in vain."""
        self.fruitless_requests = 0
        self.fruitless_reasons.clear()

    def rejected(self, reason: str, fragment: str) -> None:
        self.fruitless_reasons[reason] += 1
        self.last_rejected = (reason, fragment)

    def fruitless(self, requests: int, watch: FailureWatch) -> str | None:
        """Count requests now known to have added nothing (a generation answer none of whose
        candidates went on, a candidate's classification and instance requests when it is
        rejected, a failed request); the pause message once `max_fruitless_requests` of them
        came in a row since the last accepted task, else None. Counted as outcomes become
        known, so a large round pauses part-way instead of being paid for whole."""
        self.fruitless_requests += requests
        limit = self.limit
        if not limit or self.fruitless_requests < limit:
            return None
        self.restart_fixes = False
        rejected = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in
                             self.fruitless_reasons.most_common()) or "no candidates"
        failures = watch.kinds  # request errors since the last answer
        errors = ", ".join(f"{k} {v}" for k, v in failures.most_common())
        if failures and set(failures) <= DOWN_CAUSES \
                and set(self.fruitless_reasons) <= UNANSWERED_REASONS:
            # Nothing came back to be rejected: the endpoint is the problem, not the answers.
            who = "the batch command" if watch.command else "the endpoint"
            most = failures.most_common(1)[0][0]
            advice = watch.advice(most) if most in (Cause.LOADING, Cause.OVERLOADED) \
                else watch.down_advice
            return (f"{self.fruitless_requests} requests in a row added nothing to the pool: "
                    f"{who} gave no answer (request errors: {errors}; the last: "
                    f"{watch.last[:300]}). {advice}")
        last = ""
        advice = ". Check --model, --api and the endpoint (see the rejections), then resume"
        if self.last_rejected is not None:
            reason, text = self.last_rejected
            last = f". Last rejected answer ({reason.replace('_', ' ')}): " \
                   f"{short_text(text, 300)!r}"
            if is_reasoning_only(text):
                self.restart_fixes = True  # a resume as it is gets the same answers
                advice = (". The model answers with its reasoning only (<think> with nothing "
                          "after it): turn its thinking off (Qwen3 on vLLM or SGLang: "
                          "--extra-body '{\"chat_template_kwargs\": {\"enable_thinking\": "
                          "false}}' when you run this command again, or the endpoint's own "
                          "switch), or start a new run with more tokens for the stages "
                          "(generation_max_tokens, classification_max_tokens, "
                          "instance_max_tokens in the config file; a resumed run keeps its own)")
        return (f"{self.fruitless_requests} requests in a row added nothing to the pool. "
                f"Rejected: {rejected}"
                + (f"; request errors since the last answer: {errors} (the last: "
                   f"{watch.last[:300]})" if errors else "")
                + (last or ". No answer came back") + advice)

    def after_round(self, stats: RoundStats) -> None:
        """Count rounds that accepted nothing, for the backoff between rounds."""
        if stats.status == "done":
            self.empty_rounds = 0 if stats.accepted else self.empty_rounds + 1

    def backoff(self) -> float:
        """Seconds to wait before the next round after rounds that added nothing (0: none)."""
        return min(30.0, 2.0 ** (self.empty_rounds - 1)) if self.empty_rounds else 0.0


class FailureWatch:
    """Request failures since the last success (monotonic clock)."""

    def __init__(self, error_pause_seconds: float, base_url: str, command: str = "",
                 logs: str = "") -> None:
        """`base_url`: the run's base URL(s), as said in advice; `command`: the run's
        --batch-command (no endpoint: the advice is about the command) and `logs` its jobs'
        logs (a glob)."""
        self.error_pause_seconds = error_pause_seconds
        self.base_url = base_url
        self.command = command
        self.logs = logs
        self.in_a_row = 0
        self.kinds: Counter[str] = Counter()
        self.last = ""  # the last failure's message since the last success
        self.last_success = time.monotonic()

    @property
    def down_advice(self) -> str:
        """What to do when the endpoints give no answer (every base URL of the run named)."""
        if self.command:
            return (f"Check the batch command ({self.command}) and its logs ({self.logs}), "
                    "then resume")
        return f"Check that {self.base_url} is up, then resume"

    def advice(self, kind: str, status: int | None = None) -> str:
        """What to do when requests failing with `kind` (a Cause; `status` its HTTP status)
        pause the run: a server that is up but loading its model or overloaded is not told to
        check that it is up."""
        if kind == Cause.LOADING:
            return (f"{self.base_url} is up but still loading the model: resume once it "
                    "answers (to wait longer before a pause, raise error_pause_seconds, now "
                    f"{self.error_pause_seconds:g}s)")
        if kind == Cause.OVERLOADED:
            return (f"{self.base_url} is up but overloaded (its queue is full): lower "
                    "--concurrency, or raise the server's queue limit (Ollama: "
                    "OLLAMA_MAX_QUEUE; vLLM: --max-queued-requests), then resume")
        if kind in CONNECTIVITY_CAUSES or status in DOWN_STATUSES or self.command:
            return self.down_advice
        return "The endpoint is up but keeps failing; fix the cause, then resume"

    def success(self) -> None:
        self.last_success = time.monotonic()
        self.in_a_row = 0
        self.kinds.clear()
        self.last = ""

    def failure(self, exc: RequestFailed) -> str | None:
        """Count a failure; the pause message when the run should pause, else None."""
        self.in_a_row += 1
        self.kinds[exc.kind] += 1
        self.last = str(exc)
        if exc.fatal:
            return str(exc)  # permanent failures carry their own advice
        quiet_for = time.monotonic() - self.last_success
        if quiet_for < self.error_pause_seconds or self.in_a_row < 3:
            return None
        advice = self.advice(exc.kind, exc.status)
        kinds = ", ".join(f"{k} {v}" for k, v in self.kinds.most_common())
        return (f"every request has failed for {quiet_for:.0f}s ({self.in_a_row} in a row: "
                f"{kinds}); last error: {exc}. {advice}")
