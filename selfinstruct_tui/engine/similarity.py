"""Exact ROUGE-L near-duplicate search.

Every index here answers a query the way `rouge_score.RougeScorer(["rougeL"], use_stemmer=False)`
would if it scored the query against every instruction in the index: the same max F-measure (bit for
bit, including rouge-score's floating-point rounding), the same accept/reject decision at the
threshold, and the top-k most similar entries with their exact scores. Ties are broken by insertion
order (earlier first), so results are deterministic.

`RougeScoreIndex` literally calls rouge-score against every entry: the reference and the baseline.
`PrunedIndex` is the fast one. It never computes an LCS it can prove cannot matter:

* The LCS of two token lists is at most the size of their multiset intersection. Token occurrences
  are indexed as items "(token, k-th occurrence)", so one `bincount` over the inverted lists of the
  query's items yields the multiset intersection with every entry at once.
* ROUGE-L F = 2*LCS/(m+n) (up to rounding), so the intersection bounds each entry's score. Entries
  are visited in decreasing order of that bound and the exact LCS (rapidfuzz's bit-parallel LCSseq on
  token-id strings; rapidfuzz would hash multi-character strings, so each token id becomes one
  code point) is computed only while the bound can still beat the k-th best exact score so far.
* The exact score of an entry is computed with rouge-score's own float arithmetic (`rouge_f`), never
  with an integer shortcut: rouge-score yields 0.7000000000000001 for LCS 7 with lengths 7+13, and
  exactly 0.7 for 10+10.
"""

from __future__ import annotations

import abc
import heapq
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import LCSseq

from selfinstruct_tui.engine.tokenize import get_tokenizer

DEFAULT_THRESHOLD = 0.7
DEFAULT_TOP_K = 10
# Slack that makes a float bound safe against rouge-score's rounding (a few ulps at most).
_BOUND_SLACK = 1e-9


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
    """What the engine needs from a near-duplicate index."""

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

    def add_many(self, items: Iterable[tuple[Hashable, str]]) -> None:
        for key, text in items:
            self.add(key, text)

    def _result(self, scored: list[tuple[float, int, Hashable]], k: int) -> SimilarityResult:
        """`scored` holds (score, insertion order, key) for entries with a positive score."""
        top = heapq.nsmallest(k, scored, key=lambda s: (-s[0], s[1])) if k > 0 else []
        best = max((s[0] for s in scored), default=0.0)
        return SimilarityResult(
            max_score=best,
            top=tuple(Match(key, score) for score, _, key in top),
            is_duplicate=best > self.threshold,
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


class _GrowableIntArray:
    __slots__ = ("data", "size")

    def __init__(self) -> None:
        self.data = np.empty(4, dtype=np.int32)
        self.size = 0

    def append(self, value: int) -> None:
        if self.size == len(self.data):
            grown = np.empty(len(self.data) * 2, dtype=np.int32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size] = value
        self.size += 1

    def discard(self, value: int) -> None:
        view = self.data[: self.size]
        keep = view != value
        kept = view[keep]
        self.data[: len(kept)] = kept
        self.size = len(kept)

    def view(self) -> np.ndarray:
        return self.data[: self.size]


_MAX_CODEPOINT = 0x10FFFF


def _codepoint(token_id: int) -> int:
    # Skip the surrogate block so every id maps to a valid code point.
    return token_id if token_id < 0xD800 else token_id + 0x800


class PrunedIndex(SimilarityIndex):
    """Exact and fast: inverted lists over token occurrences, bounds first, LCS last."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, tokenizer: str = "rouge") -> None:
        super().__init__(threshold, tokenizer)
        self._vocab: dict[str, int] = {}
        self._items: dict[tuple[int, int], int] = {}  # (token id, occurrence) -> item id
        self._postings: list[_GrowableIntArray] = []
        self._slot_of: dict[Hashable, int] = {}
        self._keys: list[Hashable] = []
        self._encoded: list[str | tuple[int, ...]] = []
        self._lengths = np.zeros(1024, dtype=np.int32)
        self._alive = 0
        self._wide = False  # vocabulary outgrew the code-point space: compare tuples of ids

    # -- encoding ---------------------------------------------------------------------------
    def _token_ids(self, tokens: list[str], learn: bool) -> list[int]:
        vocab = self._vocab
        if learn:
            ids = []
            for tok in tokens:
                tid = vocab.get(tok)
                if tid is None:
                    tid = vocab[tok] = len(vocab) + 1
                    if not self._wide and _codepoint(tid) > _MAX_CODEPOINT:
                        self._widen()
                ids.append(tid)
            return ids
        # Unknown tokens get ids no entry has (negative), which still count towards the length.
        return [vocab.get(tok, -1 - i) for i, tok in enumerate(tokens)]

    def _encode(self, ids: list[int]) -> str | tuple[int, ...]:
        if self._wide:
            return tuple(ids)
        # Unknown tokens (negative ids) map to distinct code points no entry uses.
        return "".join(chr(_codepoint(i)) if i > 0 else chr(0) for i in ids)

    def _widen(self) -> None:
        self._wide = True
        self._encoded = [
            tuple(_decode_codepoints(e)) if isinstance(e, str) else e for e in self._encoded
        ]

    def _occurrence_items(self, ids: list[int], learn: bool) -> list[int]:
        seen: dict[int, int] = {}
        items = []
        for tid in ids:
            occ = seen.get(tid, 0) + 1
            seen[tid] = occ
            item = self._items.get((tid, occ))
            if item is None:
                if not learn:
                    continue
                item = self._items[(tid, occ)] = len(self._postings)
                self._postings.append(_GrowableIntArray())
            items.append(item)
        return items

    # -- mutation -----------------------------------------------------------------------------
    def add(self, key: Hashable, text: str) -> None:
        if key in self._slot_of:
            raise KeyError(f"duplicate key {key!r}")
        ids = self._token_ids(self._tokenize(text), learn=True)
        slot = len(self._keys)
        self._keys.append(key)
        self._encoded.append(self._encode(ids))
        if slot >= len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        self._lengths[slot] = len(ids)
        for item in self._occurrence_items(ids, learn=True):
            self._postings[item].append(slot)
        self._slot_of[key] = slot
        self._alive += 1

    def remove(self, key: Hashable) -> None:
        slot = self._slot_of.pop(key)
        encoded = self._encoded[slot]
        ids = list(encoded) if self._wide else _decode_codepoints(encoded)  # type: ignore[arg-type]
        for item in self._occurrence_items([i for i in ids if i > 0], learn=False):
            self._postings[item].discard(slot)
        self._encoded[slot] = ""
        self._lengths[slot] = 0
        self._alive -= 1

    def __len__(self) -> int:
        return self._alive

    def __contains__(self, key: object) -> bool:
        return key in self._slot_of

    # -- query --------------------------------------------------------------------------------
    def query(self, text: str, k: int = DEFAULT_TOP_K) -> SimilarityResult:
        ids = self._token_ids(self._tokenize(text), learn=False)
        m = len(ids)
        items = self._occurrence_items([i for i in ids if i > 0], learn=False)
        if m == 0 or not items:
            return SimilarityResult(0.0, (), False)
        postings = self._postings
        if len(items) == 1:
            hits = postings[items[0]].view()
            overlap = np.ones(len(hits), dtype=np.int64)
        else:
            counts = np.bincount(np.concatenate([postings[i].view() for i in items]))
            hits = np.flatnonzero(counts)
            overlap = counts[hits]
        if len(hits) == 0:
            return SimilarityResult(0.0, (), False)
        lengths = self._lengths[hits]
        bounds = (2.0 * overlap) / (m + lengths)
        query_seq = self._encode(ids)
        encoded = self._encoded
        keys = self._keys
        need = max(k, 1)
        scored: list[tuple[float, int, Hashable]] = []
        done = np.zeros(len(hits), dtype=bool)

        def score_positions(positions: np.ndarray) -> None:
            for pos in positions.tolist():
                slot = int(hits[pos])
                lcs = LCSseq.similarity(query_seq, encoded[slot])
                if lcs:
                    scored.append((rouge_f(lcs, m, int(lengths[pos])), slot, keys[slot]))
            done[positions] = True

        # First pass: the entries with the highest bounds give a k-th best score to prune with.
        first = min(len(hits), max(4 * need, 32))
        if first < len(hits):
            head = np.argpartition(-bounds, first - 1)[:first]
        else:
            head = np.arange(len(hits))
        score_positions(head)
        # Second pass: every entry whose bound can still reach the k-th best exact score
        # (>= rather than >, so that ties are resolved by insertion order, not by visiting order).
        while True:
            if len(scored) >= need:
                kth = heapq.nsmallest(need, scored, key=lambda s: (-s[0], s[1]))[-1][0]
                # The decision also needs the true max; the top-k already contains it.
                floor = kth * (1.0 - _BOUND_SLACK)
            else:
                floor = 0.0
            rest = np.flatnonzero(~done & (bounds >= floor))
            if len(rest) == 0:
                break
            if len(rest) > 256:
                rest = rest[np.argsort(-bounds[rest], kind="stable")[:256]]
            score_positions(rest)
        return self._result(scored, k)


def _decode_codepoints(encoded: str) -> list[int]:
    out = []
    for ch in encoded:
        cp = ord(ch)
        out.append(cp if cp < 0xD800 else cp - 0x800)
    return out


def make_index(
    kind: str = "pruned", threshold: float = DEFAULT_THRESHOLD, tokenizer: str = "rouge"
) -> SimilarityIndex:
    if kind == "pruned":
        return PrunedIndex(threshold, tokenizer)
    if kind == "rouge-score":
        return RougeScoreIndex(threshold, tokenizer)
    raise ValueError(f"unknown similarity index {kind!r}: choose 'pruned' or 'rouge-score'")
