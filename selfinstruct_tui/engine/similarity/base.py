"""The near-duplicate index's interface and result types, and rouge-score's F-measure."""

from __future__ import annotations

import abc
import heapq
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from selfinstruct_tui.engine.tokenize import get_tokenizer

DEFAULT_THRESHOLD = 0.7
DEFAULT_TOP_K = 10


def rouge_f(lcs: int, m: int, n: int) -> float:
    """ROUGE-L F-measure exactly as rouge-score computes it from an LCS length and two lengths."""
    if m == 0 or n == 0:
        return 0.0
    precision = lcs / n
    recall = lcs / m
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


@dataclass(frozen=True, slots=True)
class Match:
    key: Hashable
    score: float


@dataclass(frozen=True, slots=True)
class SimilarityResult:
    max_score: float
    top: tuple[Match, ...]
    is_duplicate: bool

    @property
    def most_similar(self) -> Match | None:
        return self.top[0] if self.top else None


class SimilarityIndex(abc.ABC):
    """What the engine needs from a near-duplicate index.

    `add(key, text)` (KeyError on a duplicate key), `remove(key)` (KeyError when absent),
    `query(text, k)` -> `SimilarityResult`: the max ROUGE-L F-measure against every entry, the k
    most similar entries (ties: the earlier added first) and whether the max is above the
    threshold. Scores are floats in [0, 1], exactly as rouge-score computes them.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, tokenizer: str = "rouge") -> None:
        self.threshold = threshold
        self.tokenizer_name = tokenizer
        self._tokenize: Callable[[str], list[str]] = get_tokenizer(tokenizer)

    @abc.abstractmethod
    def add(self, key: Hashable, text: str) -> None: ...

    @abc.abstractmethod
    def remove(self, key: Hashable) -> None: ...

    @abc.abstractmethod
    def query(self, text: str, k: int = DEFAULT_TOP_K) -> SimilarityResult: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __contains__(self, key: object) -> bool: ...

    def _result(self, scored: list[tuple[float, int, Hashable]], k: int) -> SimilarityResult:
        """`scored` holds (score, insertion order, key) for entries with a positive score."""
        top = heapq.nsmallest(k, scored, key=lambda s: (-s[0], s[1])) if k > 0 else []
        best = max((s[0] for s in scored), default=0.0)
        return SimilarityResult(
            max_score=best,
            top=tuple(Match(key, score) for score, _, key in top),
            is_duplicate=best > self.threshold,
        )
