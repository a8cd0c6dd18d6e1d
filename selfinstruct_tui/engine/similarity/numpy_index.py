"""The numpy index: the pruned method in numpy, the fallback where no C compiler was available.

Same answers as the compiled kernel (`native.NativeIndex`), 3-6x slower.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from selfinstruct_tui.engine.similarity.base import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    Match,
    SimilarityIndex,
    SimilarityResult,
)

# Slack that makes a float bound safe against rouge-score's rounding (a few ulps at most).
_BOUND_SLACK = 1e-9


class _GrowableIntArray:
    __slots__ = ("data", "size")

    def __init__(self, dtype: type = np.int32) -> None:
        self.data: np.ndarray = np.empty(4, dtype=dtype)
        self.size = 0

    def append(self, value: int) -> None:
        if self.size == len(self.data):
            grown = np.empty(len(self.data) * 2, dtype=self.data.dtype)
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


class _LengthBucket:
    """The entries of one token length, with their frequent-item masks stored contiguously."""

    __slots__ = ("slots", "masks")

    def __init__(self) -> None:
        self.slots = _GrowableIntArray(np.int64)
        self.masks = _GrowableIntArray(np.uint64)

    def append(self, slot: int, mask: int) -> None:
        self.slots.append(slot)
        self.masks.append(mask)

    def discard(self, slot: int) -> None:
        view = self.slots.view()
        keep = view != slot
        kept_slots, kept_masks = view[keep], self.masks.view()[keep]
        n = len(kept_slots)
        self.slots.data[:n] = kept_slots
        self.masks.data[:n] = kept_masks
        self.slots.size = self.masks.size = n


_MAX_CODEPOINT = 0x10FFFF
# Up to this many slots, entries sharing only frequent items are found in one vectorised pass
# over the pool; beyond it, length buckets keep the work proportional to the feasible lengths.
_GLOBAL_SCAN_MAX = 150_000


def _codepoint(token_id: int) -> int:
    # Skip the surrogate block so every id maps to a valid code point.
    return token_id if token_id < 0xD800 else token_id + 0x800


class PrunedIndex(SimilarityIndex):
    """Exact and fast: inverted lists over token occurrences, bounds first, LCS last."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, tokenizer: str = "rouge",
                 frequent_df: int = 256) -> None:
        super().__init__(threshold, tokenizer)
        self._vocab: dict[str, int] = {}
        self._items: dict[tuple[int, int], int] = {}  # (token id, occurrence) -> item id
        self._postings: list[_GrowableIntArray] = []
        self._slot_of: dict[Hashable, int] = {}
        self._keys: list[Hashable] = []
        self._encoded = np.empty(1024, dtype=object)  # slot -> token ids as one code point each
        self._lengths = np.zeros(1024, dtype=np.int32)
        self._alive = 0
        self._wide = False  # vocabulary outgrew the code-point space: compare tuples of ids
        # The most frequent occurrence items ("the", "a", "of", ...) dominate the inverted lists.
        # Up to 64 of them become bits of a per-entry mask: their overlap is a popcount, and an
        # entry that shares only such items is looked at only in the length buckets where its
        # bound can still reach the k-th best score.
        self._frequent_df = frequent_df
        self._bit_of: dict[int, int] = {}
        self._fmask = np.zeros(1024, dtype=np.uint64)
        self._by_length: dict[int, _LengthBucket] = {}
        self._scratch = np.zeros(1024, dtype=bool)

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
        for slot in range(len(self._keys)):
            if isinstance(self._encoded[slot], str):
                self._encoded[slot] = tuple(_decode_codepoints(self._encoded[slot]))

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
        if slot >= len(self._lengths):
            grow = len(self._lengths)
            self._encoded = np.concatenate([self._encoded, np.empty(grow, dtype=object)])
            self._lengths = np.concatenate([self._lengths, np.zeros(grow, np.int32)])
            self._fmask = np.concatenate([self._fmask, np.zeros(grow, np.uint64)])
            self._scratch = np.zeros(len(self._lengths), dtype=bool)
        self._encoded[slot] = self._encode(ids)
        n = len(ids)
        self._lengths[slot] = n
        mask = 0
        promoted = False
        for item in self._occurrence_items(ids, learn=True):
            postings = self._postings[item]
            postings.append(slot)
            bit = self._bit_of.get(item)
            if bit is not None:
                mask |= 1 << bit
            elif postings.size >= self._frequent_df and len(self._bit_of) < 64:
                bit = self._bit_of[item] = len(self._bit_of)
                self._fmask[postings.view()] |= np.uint64(1 << bit)
                promoted = True
        self._fmask[slot] |= np.uint64(mask)
        if n:
            self._by_length.setdefault(n, _LengthBucket()).append(slot, int(self._fmask[slot]))
        if promoted:  # at most 64 times in the index's life
            for bucket in self._by_length.values():
                bucket.masks.view()[:] = self._fmask[bucket.slots.view()]
        self._slot_of[key] = slot
        self._alive += 1

    def remove(self, key: Hashable) -> None:
        slot = self._slot_of.pop(key)
        encoded = self._encoded[slot]
        ids = list(encoded) if self._wide else _decode_codepoints(encoded)
        for item in self._occurrence_items([i for i in ids if i > 0], learn=False):
            self._postings[item].discard(slot)
        n = int(self._lengths[slot])
        if n:
            self._by_length[n].discard(slot)
        self._encoded[slot] = ""
        self._lengths[slot] = 0
        self._fmask[slot] = 0
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
        bit_of = self._bit_of
        rare = [i for i in items if i not in bit_of]
        q = len(items) - len(rare)
        cmask = np.uint64(sum(1 << bit_of[i] for i in items if i in bit_of))
        postings = self._postings
        # Entries that share a rare item: their exact multiset intersection.
        if len(rare) == 1:
            hits = postings[rare[0]].view().astype(np.int64)
            overlap = np.ones(len(hits), dtype=np.int64)
        elif rare:
            joined = np.concatenate([postings[i].view() for i in rare])
            if len(joined) * 16 < len(self._keys):
                hits, overlap = np.unique(joined, return_counts=True)
            else:
                counts = np.bincount(joined)
                hits = np.flatnonzero(counts)
                overlap = counts[hits]
        else:
            hits = np.zeros(0, dtype=np.int64)
            overlap = np.zeros(0, dtype=np.int64)
        if q and len(hits):
            overlap = overlap + np.bitwise_count(self._fmask[hits] & cmask)
        lengths = self._lengths[hits].astype(np.int64)
        # Upper bound of each entry's F: the LCS is at most the multiset intersection.
        bounds = (2.0 * overlap) / (m + lengths)
        query_seq = self._encode(ids)
        need = max(k, 1)
        encoded = self._encoded
        scored_slots = np.zeros(0, dtype=np.int64)
        scored_f = np.zeros(0, dtype=np.float64)

        def score(slots: np.ndarray, n: np.ndarray) -> None:
            nonlocal scored_slots, scored_f
            lcs = process.cdist([query_seq], encoded[slots].tolist(), scorer=LCSseq.similarity,
                                dtype=np.int64, workers=1)[0]
            # rouge-score's arithmetic, elementwise (IEEE float64, same operation order). Every
            # entry visited shares a token with the query, so LCS >= 1 and p + r > 0.
            precision = lcs / n
            recall = lcs / float(m)
            f = 2 * precision * recall / (precision + recall)
            scored_slots = np.concatenate([scored_slots, slots])
            scored_f = np.concatenate([scored_f, f])

        def floor() -> float:
            if len(scored_f) < need:
                return 0.0
            kth = np.partition(scored_f, len(scored_f) - need)[len(scored_f) - need]
            return float(kth) * (1.0 - _BOUND_SLACK)

        done = np.zeros(len(hits), dtype=bool)
        # First batch: the best bounds give a k-th best score that prunes the rest.
        first = max(4 * need, 64)
        if len(hits) <= 2 * first:
            head = np.arange(len(hits))
        else:
            head = np.argpartition(-bounds, first - 1)[:first]
        if len(head):
            score(hits[head], lengths[head])
            done[head] = True
        if q:
            # Entries sharing only frequent items: overlap = popcount(mask & query mask) <= q,
            # so F <= 2*min(q, n)/(m + n) <= 2q/(m + q); per length n only entries with
            # popcount >= floor*(m+n)/2 can still matter.
            low = floor()
            found = []
            n_slots = len(self._keys)
            if 2.0 * q / (m + q) < low:
                pass  # no entry that shares only frequent items can reach the top k
            elif n_slots <= _GLOBAL_SCAN_MAX:
                # One vectorised pass: cheaper than a loop over length buckets on small pools.
                top_n = int(self._lengths[:n_slots].max()) if n_slots else 0
                ns = np.arange(top_n + 1, dtype=np.float64)
                need_by_len = np.maximum(1, np.ceil(low * (m + ns) / 2 - 1e-9))
                need_by_len[np.minimum(q, ns) * 2.0 / (m + ns) < low] = np.inf
                need_by_len[0] = np.inf
                counts = np.bitwise_count(self._fmask[:n_slots] & cmask)
                # Most entries fail the smallest requirement of any length: test that first.
                good = np.flatnonzero(counts >= need_by_len.min())
                lens = self._lengths[good]
                good = good[counts[good] >= need_by_len[lens]]
                if len(good):
                    found.append((good, counts[good], self._lengths[good]))
            else:
                for n, bucket in self._by_length.items():
                    if not bucket.slots.size or 2.0 * min(q, n) / (m + n) < low:
                        continue
                    need_overlap = max(1, math.ceil(low * (m + n) / 2 - 1e-9))
                    counts = np.bitwise_count(bucket.masks.view() & cmask)
                    good = np.flatnonzero(counts >= need_overlap)
                    if len(good):
                        found.append((bucket.slots.view()[good], counts[good],
                                      np.full(len(good), n, np.int64)))
            if found:
                slots = np.concatenate([f[0] for f in found])
                extra = np.concatenate([f[1] for f in found]).astype(np.int64)
                extra_len = np.concatenate([f[2] for f in found]).astype(np.int64)
                scratch = self._scratch
                scratch[hits] = True
                fresh = ~scratch[slots]
                scratch[hits] = False
                slots, extra, extra_len = slots[fresh], extra[fresh], extra_len[fresh]
                hits = np.concatenate([hits, slots])
                lengths = np.concatenate([lengths, extra_len])
                bounds = np.concatenate([bounds, (2.0 * extra) / (m + extra_len)])
                done = np.concatenate([done, np.zeros(len(slots), dtype=bool)])
        # Then every entry whose bound can still reach the k-th best exact score, best bounds
        # first (>= rather than >, so ties are resolved by insertion order, not visiting order).
        while True:
            rest = np.flatnonzero((bounds >= floor()) & ~done)
            if len(rest) == 0:
                break
            if len(rest) > 256:
                rest = rest[np.argpartition(-bounds[rest], 255)[:256]]
            score(hits[rest], lengths[rest])
            done[rest] = True
        if len(scored_f) == 0:
            return SimilarityResult(0.0, (), False)
        order = np.lexsort((scored_slots, -scored_f))[:k] if k > 0 else np.zeros(0, np.int64)
        best = float(scored_f.max())
        keys = self._keys
        top = tuple(Match(keys[slot], score) for slot, score in
                    zip(scored_slots[order].tolist(), scored_f[order].tolist(), strict=True))
        return SimilarityResult(best, top, best > self.threshold)


def _decode_codepoints(encoded: str) -> list[int]:
    out = []
    for ch in encoded:
        cp = ord(ch)
        out.append(cp if cp < 0xD800 else cp - 0x800)
    return out
