"""The reference index: rouge-score against every entry, as the original Self-Instruct code does.

Slow (one LCS per entry per query), and the baseline that tests and benchmarks compare with.
"""

from __future__ import annotations

from collections.abc import Hashable

from selfinstruct_tui.engine.similarity.base import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    SimilarityIndex,
    SimilarityResult,
)


class RougeScoreIndex(SimilarityIndex):
    """The reference: rouge-score against every entry, as the original Self-Instruct code does."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, tokenizer: str = "rouge") -> None:
        super().__init__(threshold, tokenizer)
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        if tokenizer != "rouge":
            tok = self._tokenize

            class _Tok:
                def tokenize(self, text: str) -> list[str]:
                    return tok(text)

            self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tok())
        self._entries: dict[Hashable, tuple[int, str]] = {}
        self._seq = 0

    def add(self, key: Hashable, text: str) -> None:
        if key in self._entries:
            raise KeyError(f"duplicate key {key!r}")
        self._entries[key] = (self._seq, text)
        self._seq += 1

    def remove(self, key: Hashable) -> None:
        del self._entries[key]

    def query(self, text: str, k: int = DEFAULT_TOP_K) -> SimilarityResult:
        scored = []
        for key, (seq, other) in self._entries.items():
            score = self._scorer.score(other, text)["rougeL"].fmeasure
            if score > 0:
                scored.append((float(score), seq, key))
        return self._result(scored, k)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
