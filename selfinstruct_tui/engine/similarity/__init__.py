"""Exact ROUGE-L near-duplicate search.

Every index here answers a query the way `rouge_score.RougeScorer(["rougeL"], use_stemmer=False)`
would if it scored the query against every instruction in the index: the same max F-measure (bit for
bit, including rouge-score's floating-point rounding), the same accept/reject decision at the
threshold, and the top-k most similar entries with their exact scores. Ties are broken by insertion
order (earlier first), so results are deterministic.

`RougeScoreIndex` (reference.py) literally calls rouge-score against every entry: the reference
and the baseline. `NativeIndex` (native.py) is the fast one the app uses (`make_index`): the method
below, compiled (similarity/rouge_kernel.c, built when the package is installed), with more
frequent items as bits, a staged, bit-sliced scan for entries that share only frequent words, and a
bit-parallel LCS of its own. `PrunedIndex` (numpy_index.py) is the same method in numpy, the
fallback where no C compiler was available. Neither ever computes an LCS it can prove cannot
matter:

* The LCS of two token lists is at most the size of their multiset intersection. Token occurrences
  are indexed as items "(token, k-th occurrence)", so one `bincount` over the inverted lists of the
  query's items yields the multiset intersection with every entry at once.
* ROUGE-L F = 2*LCS/(m+n) (up to rounding), so the intersection bounds each entry's score. Entries
  are visited in decreasing order of that bound and the exact LCS (rapidfuzz's bit-parallel LCSseq
  on token-id strings; rapidfuzz would hash multi-character strings, so each token id becomes one
  code point) is computed only while the bound can still beat the k-th best exact score so far.
* The exact score of an entry is computed with rouge-score's own float arithmetic (`rouge_f`), never
  with an integer shortcut: rouge-score yields 0.7000000000000001 for LCS 7 with lengths 7+13, and
  exactly 0.7 for 10+10.
"""

from selfinstruct_tui.engine.similarity.base import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    Match,
    SimilarityIndex,
    SimilarityResult,
    rouge_f,
)
from selfinstruct_tui.engine.similarity.native import (
    FALLBACK_NOTICE,
    NATIVE_AVAILABLE,
    NativeIndex,
    make_index,
)
from selfinstruct_tui.engine.similarity.numpy_index import PrunedIndex
from selfinstruct_tui.engine.similarity.reference import RougeScoreIndex

__all__ = [
    "DEFAULT_THRESHOLD", "DEFAULT_TOP_K", "FALLBACK_NOTICE", "NATIVE_AVAILABLE", "Match",
    "NativeIndex", "PrunedIndex", "RougeScoreIndex", "SimilarityIndex", "SimilarityResult",
    "make_index", "rouge_f",
]
