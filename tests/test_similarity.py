"""The similarity index must answer exactly as rouge-score does, for every input."""

from __future__ import annotations

import random

import pytest
from fake_openai import make_instruction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from selfinstruct_tui.engine.seeds import bundled_seeds_path, load_seeds
from selfinstruct_tui.engine.similarity import (
    NATIVE_AVAILABLE,
    NativeIndex,
    PrunedIndex,
    RougeScoreIndex,
    make_index,
    rouge_f,
)
from selfinstruct_tui.engine.tokenize import rouge_tokens, unicode_tokens

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

# Both implementations of the fast index must answer exactly as rouge-score: the compiled kernel
# (what runs whenever the package was built with a C compiler) and the numpy fallback.
IMPLS = [pytest.param(NativeIndex, id="native"), pytest.param(PrunedIndex, id="numpy")]

WORDS = ["the", "a", "of", "list", "write", "poem", "story", "Explain", "sort", "numbers", "why",
         "cat", "cats", "2", "42", "x1", "déjà", "vu", "İstanbul", "Kelvin", "straße", "中文",
         "東京", "naïve", "can't", "e-mail", "---", "!!", "", " "]
SEPARATORS = [" ", "  ", ", ", ". ", "\n", "\t", "-", "/", "'", "…", "\u00a0"]


@st.composite
def texts(draw, max_words: int = 14):
    n = draw(st.integers(0, max_words))
    parts = []
    for _ in range(n):
        parts.append(draw(st.sampled_from(WORDS) | st.text(max_size=6)))
        parts.append(draw(st.sampled_from(SEPARATORS)))
    return "".join(parts)


def assert_same(pruned, reference: RougeScoreIndex, query: str, k: int = 10) -> None:
    got = pruned.query(query, k)
    want = reference.query(query, k)
    assert got.max_score == want.max_score, query
    assert got.is_duplicate == want.is_duplicate, query
    assert got.top == want.top, query


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=st.lists(texts(), max_size=25), queries=st.lists(texts(), min_size=1, max_size=6),
       k=st.integers(0, 12), frequent_df=st.sampled_from([1, 2, 3, 256]))
def test_matches_rouge_score_on_random_and_adversarial_text(impl, pool, queries, k, frequent_df):
    # frequent_df small: many items become "frequent" bits, exercising that path too.
    pruned, reference = impl(frequent_df=frequent_df), RougeScoreIndex()
    for i, text in enumerate(pool):
        pruned.add(i, text)
        reference.add(i, text)
    for query in queries:
        assert_same(pruned, reference, query, k)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=80, deadline=None)
@given(pool=st.lists(texts(), min_size=1, max_size=20), data=st.data())
def test_stays_exact_after_removals(impl, pool, data):
    pruned = impl(frequent_df=data.draw(st.sampled_from([1, 2, 256])))
    reference = RougeScoreIndex()
    for i, text in enumerate(pool):
        pruned.add(i, text)
        reference.add(i, text)
    gone = data.draw(st.sets(st.integers(0, len(pool) - 1)))
    for i in gone:
        pruned.remove(i)
        reference.remove(i)
    assert len(pruned) == len(reference) == len(pool) - len(gone)
    for query in data.draw(st.lists(texts(), min_size=1, max_size=4)) + pool[:3]:
        assert_same(pruned, reference, query)


LONG_WORDS = ["the", "a", "of", "list", "sort", "x", "y", "z", "write", "poem", "1", "2"]


@st.composite
def long_texts(draw):
    """Long texts over a small vocabulary: LCS over several 64-bit words, many repeated tokens,
    and (with frequent_df=1) frequent-item requirements far above the usual handful."""
    if draw(st.booleans()):
        # runs of one word: whole 64-token blocks of the query without a match, which is where
        # the bit-parallel LCS carries from one word to the next
        runs = draw(st.lists(st.tuples(st.sampled_from(LONG_WORDS[:3]),
                                       st.sampled_from([1, 2, 30, 63, 64, 65, 128])), max_size=5))
        return " ".join(" ".join([word] * count) for word, count in runs)
    vocabulary = draw(st.sampled_from([LONG_WORDS, LONG_WORDS[:3], LONG_WORDS[3:5]]))
    size = draw(st.sampled_from([0, 1, 5, 20, 30, 63, 64, 65, 100, 128, 129, 200]))
    words = draw(st.lists(st.sampled_from(vocabulary), min_size=size, max_size=size))
    return " ".join(words)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=st.lists(long_texts(), min_size=1, max_size=12), data=st.data(),
       frequent_df=st.sampled_from([1, 2, 256]))
def test_long_and_repetitive_texts_match_rouge_score(impl, pool, data, frequent_df):
    pruned, reference = impl(frequent_df=frequent_df), RougeScoreIndex()
    for i, text in enumerate(pool):
        pruned.add(i, text)
        reference.add(i, text)
    # a pool entry with a few edits: high scores, long LCS
    base = data.draw(st.sampled_from(pool)).split()
    for _ in range(data.draw(st.integers(0, 5))):
        if base:
            base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.sampled_from(LONG_WORDS))
    for query in [" ".join(base), data.draw(long_texts())]:
        assert_same(pruned, reference, query, data.draw(st.integers(0, 12)))


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None)
@given(a=texts(), b=texts())
def test_pairwise_score_equals_rouge_score(impl, a, b):
    index = impl()
    index.add("b", b)
    want = SCORER.score(b, a)["rougeL"].fmeasure
    got = index.query(a).max_score
    assert got == want


def test_tokenizer_is_rouge_scores_own():
    for text in ["İstanbul ŞEHİR", "Kelvin \u212a", "naïve café", "can't stop", "a_b-c", "中文",
                 "x\ny", "trailing\n", "ǅ ß ﬁ", "\u0130\u0307"]:
        assert rouge_tokens(text) == SCORER._tokenizer.tokenize(text)


@settings(max_examples=500, deadline=None)
@given(text=st.text() | texts())
def test_tokenizer_equals_rouge_score_on_any_text(text):
    assert rouge_tokens(text) == SCORER._tokenizer.tokenize(text)


@pytest.mark.parametrize("impl", IMPLS)
def test_threshold_boundary_uses_rouge_scores_float_arithmetic(impl):
    # LCS 7 with lengths 7+13 gives 0.7000000000000001 in rouge-score: a near duplicate.
    assert rouge_f(7, 7, 13) > 0.7
    # LCS 7 with lengths 10+10 gives exactly 0.7: not a near duplicate.
    assert rouge_f(7, 10, 10) == 0.7
    words = [f"w{i}" for i in range(30)]
    index = impl(threshold=0.7)
    index.add("long", " ".join(words[:13]))
    cand = " ".join(words[:7])
    assert index.query(cand).max_score == SCORER.score(" ".join(words[:13]), cand)["rougeL"].fmeasure
    assert index.query(cand).is_duplicate
    index2 = impl(threshold=0.7)
    index2.add("ten", " ".join(words[:7] + ["x", "y", "z"]))
    result = index2.query(" ".join(words[:7] + ["p", "q", "r"]))
    assert result.max_score == 0.7
    assert not result.is_duplicate


@pytest.mark.parametrize("impl", IMPLS)
def test_top_k_ties_break_by_insertion_order(impl):
    index = impl()
    for i in range(15):
        index.add(f"t{i}", "describe the weather today")
    top = index.query("describe the weather today").top
    assert [m.key for m in top] == [f"t{i}" for i in range(10)]
    assert all(m.score == 1.0 for m in top)


@pytest.mark.parametrize("impl", IMPLS)
def test_realistic_corpus_matches_rouge_score(impl):
    rng = random.Random(7)
    seeds = [t.instruction for t in load_seeds(bundled_seeds_path())]
    pool = seeds + [make_instruction(rng) for _ in range(400)]
    pruned, reference = impl(frequent_df=16), RougeScoreIndex()
    for i, text in enumerate(pool):
        pruned.add(i, text)
        reference.add(i, text)
    queries = [make_instruction(rng) for _ in range(30)]
    # near duplicates: pool items with one word changed
    for text in rng.sample(pool, 30):
        words = text.split()
        words[rng.randrange(len(words))] = "changed"
        queries.append(" ".join(words))
    duplicates = 0
    for query in queries:
        assert_same(pruned, reference, query)
        duplicates += pruned.query(query).is_duplicate
    assert duplicates >= 20  # the near duplicates are found


@pytest.mark.parametrize("impl", IMPLS)
def test_unicode_tokenizer_dedupes_cjk_where_rouge_cannot(impl):
    a, b = "请把下面的句子翻译成英文", "请把下面的句子翻译成法文"
    assert rouge_tokens(a) == []  # rouge-score sees nothing: every score is 0
    assert unicode_tokens("Übersetze 東京") == ["übersetze", "東", "京"]
    default = impl()
    default.add(1, a)
    assert default.query(b).max_score == 0.0
    multilingual = impl(tokenizer="unicode")
    multilingual.add(1, a)
    result = multilingual.query(b)
    assert result.is_duplicate and result.max_score > 0.8


@pytest.mark.parametrize("impl", IMPLS)
def test_duplicate_key_is_refused(impl):
    index = impl()
    index.add(1, "x y z")
    with pytest.raises(KeyError):
        index.add(1, "a b c")


def test_compiled_kernel_is_installed_and_used():
    # The install compiles rouge_kernel.c (hatch_build.py); a silent fallback to numpy would make
    # every run several times slower, so the test environment insists on the kernel.
    assert NATIVE_AVAILABLE, "reinstall with a C compiler: _selfinstruct_rouge was not built"
    assert isinstance(make_index("pruned"), NativeIndex)
    assert isinstance(make_index("pruned", tokenizer="unicode"), NativeIndex)


def test_removed_entries_never_come_back():
    index = NativeIndex(frequent_df=1)
    for i in range(200):
        index.add(i, f"write a poem about the number {i % 7} and the sea")
    for i in range(0, 200, 2):
        index.remove(i)
    assert len(index) == 100 and 0 not in index and 1 in index
    top = index.query("write a poem about the number 3 and the sea", k=10).top
    assert all(m.key % 2 == 1 for m in top)
    assert [m.key for m in top] == [3, 17, 31, 45, 59, 73, 87, 101, 115, 129]
    with pytest.raises(KeyError):
        index.remove(0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("width", [17, 20, 31, 40])
def test_many_shared_frequent_words_are_counted_in_full(impl, width):
    # Entries that share only frequent words with the query are found by counting those words per
    # entry; a count of 16 or more must not wrap, or a near duplicate is pruned by a wrong bound.
    words = [f"w{i}" for i in range(width)]
    index, reference = impl(frequent_df=3), RougeScoreIndex()
    pool = ["zz " + " ".join(words[:8])] * 2 + [" ".join(words)] * 3
    for i, text in enumerate(pool):
        index.add(i, text)
        reference.add(i, text)
    query = "zz " + " ".join(words)
    assert_same(index, reference, query, k=1)
    assert index.query(query, k=1).top[0].key == 2
