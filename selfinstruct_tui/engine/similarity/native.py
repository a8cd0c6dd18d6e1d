"""The compiled index (rouge_kernel.c, built into the top-level module `_selfinstruct_rouge` when
the package is installed; see hatch_build.py), and `make_index`, which the app uses."""

from __future__ import annotations

from collections.abc import Hashable

from selfinstruct_tui.engine.similarity.base import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    Match,
    SimilarityIndex,
    SimilarityResult,
)
from selfinstruct_tui.engine.similarity.numpy_index import PrunedIndex
from selfinstruct_tui.engine.similarity.reference import RougeScoreIndex

try:  # built from rouge_kernel.c when the package is installed (see hatch_build.py)
    import _selfinstruct_rouge as _native
except ImportError:  # no C compiler at install time: the numpy implementation does the work
    _native = None

NATIVE_AVAILABLE = _native is not None
FALLBACK_NOTICE = (
    "the compiled similarity kernel (_selfinstruct_rouge) is not installed, so the near-duplicate "
    "filter uses its numpy fallback: the same results, 3-6x slower. Reinstall selfinstruct-tui "
    "where a C compiler and the Python headers are present to get it."
)


class NativeIndex(SimilarityIndex):
    """`PrunedIndex`'s method, compiled (rouge_kernel.c), with no per-query numpy overhead.

    Python keeps the vocabulary (token -> id) and the keys; the kernel keeps the token-id sequences,
    the inverted lists, the frequent-item masks and the length buckets, and answers a query in one
    call: counting, bounding, the bit-parallel LCS and the top-k all happen in C.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, tokenizer: str = "rouge",
                 frequent_df: int = 256) -> None:
        if _native is None:
            raise RuntimeError("the compiled similarity kernel (_selfinstruct_rouge) is not "
                               "installed; reinstall selfinstruct-tui with a C compiler present")
        super().__init__(threshold, tokenizer)
        self._kernel = _native.Kernel(frequent_df)
        self._vocab: dict[str, int] = {}
        self._slot_of: dict[Hashable, int] = {}
        self._keys: list[Hashable] = []

    def add(self, key: Hashable, text: str) -> None:
        if key in self._slot_of:
            raise KeyError(f"duplicate key {key!r}")
        vocab = self._vocab
        ids = []
        for tok in self._tokenize(text):
            tid = vocab.get(tok)
            if tid is None:
                tid = vocab[tok] = len(vocab) + 1
            ids.append(tid)
        slot = self._kernel.add(ids)
        assert slot == len(self._keys)
        self._keys.append(key)
        self._slot_of[key] = slot

    def remove(self, key: Hashable) -> None:
        slot = self._slot_of.pop(key)
        self._kernel.remove(slot)
        self._keys[slot] = None

    def query(self, text: str, k: int = DEFAULT_TOP_K) -> SimilarityResult:
        get = self._vocab.get
        # Unknown tokens get id 0: they count towards the length and match nothing.
        hits = self._kernel.query([get(tok, 0) for tok in self._tokenize(text)], max(k, 1))
        if not hits:
            return SimilarityResult(0.0, (), False)
        best = hits[0][1]
        keys = self._keys
        top = tuple([Match(keys[slot], score) for slot, score in hits[:k]])
        return SimilarityResult(best, top, best > self.threshold)

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, key: object) -> bool:
        return key in self._slot_of


def make_index(
    kind: str = "pruned", threshold: float = DEFAULT_THRESHOLD, tokenizer: str = "rouge"
) -> SimilarityIndex:
    """`pruned`: the compiled index when it is installed, else the numpy one (same answers)."""
    if kind == "pruned":
        if NATIVE_AVAILABLE:
            return NativeIndex(threshold, tokenizer)
        return PrunedIndex(threshold, tokenizer)
    if kind == "rouge-score":
        return RougeScoreIndex(threshold, tokenizer)
    raise ValueError(f"unknown similarity index {kind!r}: choose 'pruned' or 'rouge-score'")
