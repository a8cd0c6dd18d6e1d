"""The similarity index must answer exactly as rouge-score does, for every input."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from fake_openai import make_instruction
from selfinstruct_tui.engine.seeds import bundled_seeds_path, load_seeds
from selfinstruct_tui.engine.similarity import PrunedIndex, RougeScoreIndex, rouge_f
from selfinstruct_tui.engine.tokenize import rouge_tokens, unicode_tokens

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

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


def assert_same(pruned: PrunedIndex, reference: RougeScoreIndex, query: str, k: int = 10) -> None:
    got = pruned.query(query, k)
    want = reference.query(query, k)
    assert got.max_score == want.max_score, query
    assert got.is_duplicate == want.is_duplicate, query
    assert got.top == want.top, query


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=st.lists(texts(), max_size=25), queries=st.lists(texts(), min_size=1, max_size=6),
       k=st.integers(0, 12), frequent_df=st.sampled_from([1, 2, 3, 256]))
def test_matches_rouge_score_on_random_and_adversarial_text(pool, queries, k, frequent_df):
    # frequent_df small: many items become "frequent" bits, exercising that path too.
    pruned, reference = PrunedIndex(frequent_df=frequent_df), RougeScoreIndex()
    for i, text in enumerate(pool):
        pruned.add(i, text)
        reference.add(i, text)
    for query in queries:
        assert_same(pruned, reference, query, k)


@settings(max_examples=80, deadline=None)
@given(pool=st.lists(texts(), min_size=1, max_size=20), data=st.data())
def test_stays_exact_after_removals(pool, data):
    pruned = PrunedIndex(frequent_df=data.draw(st.sampled_from([1, 2, 256])))
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


@settings(max_examples=200, deadline=None)
@given(a=texts(), b=texts())
def test_pairwise_score_equals_rouge_score(a, b):
    index = PrunedIndex()
    index.add("b", b)
    want = SCORER.score(b, a)["rougeL"].fmeasure
    got = index.query(a).max_score
    assert got == want


def test_tokenizer_is_rouge_scores_own():
    for text in ["İstanbul ŞEHİR", "Kelvin \u212a", "naïve café", "can't stop", "a_b-c", "中文"]:
        assert rouge_tokens(text) == SCORER._tokenizer.tokenize(text)


def test_threshold_boundary_uses_rouge_scores_float_arithmetic():
    # LCS 7 with lengths 7+13 gives 0.7000000000000001 in rouge-score: a near duplicate.
    assert rouge_f(7, 7, 13) > 0.7
    # LCS 7 with lengths 10+10 gives exactly 0.7: not a near duplicate.
    assert rouge_f(7, 10, 10) == 0.7
    words = [f"w{i}" for i in range(30)]
    index = PrunedIndex(threshold=0.7)
    index.add("long", " ".join(words[:13]))
    cand = " ".join(words[:7])
    assert index.query(cand).max_score == SCORER.score(" ".join(words[:13]), cand)["rougeL"].fmeasure
    assert index.query(cand).is_duplicate
    index2 = PrunedIndex(threshold=0.7)
    index2.add("ten", " ".join(words[:7] + ["x", "y", "z"]))
    result = index2.query(" ".join(words[:7] + ["p", "q", "r"]))
    assert result.max_score == 0.7
    assert not result.is_duplicate


def test_top_k_ties_break_by_insertion_order():
    index = PrunedIndex()
    for i in range(15):
        index.add(f"t{i}", "describe the weather today")
    top = index.query("describe the weather today").top
    assert [m.key for m in top] == [f"t{i}" for i in range(10)]
    assert all(m.score == 1.0 for m in top)


def test_realistic_corpus_matches_rouge_score():
    rng = random.Random(7)
    seeds = [t.instruction for t in load_seeds(bundled_seeds_path())]
    pool = seeds + [make_instruction(rng) for _ in range(400)]
    pruned, reference = PrunedIndex(frequent_df=16), RougeScoreIndex()
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


def test_unicode_tokenizer_dedupes_cjk_where_rouge_cannot():
    a, b = "请把下面的句子翻译成英文", "请把下面的句子翻译成法文"
    assert rouge_tokens(a) == []  # rouge-score sees nothing: every score is 0
    assert unicode_tokens("Übersetze 東京") == ["übersetze", "東", "京"]
    default = PrunedIndex()
    default.add(1, a)
    assert default.query(b).max_score == 0.0
    multilingual = PrunedIndex(tokenizer="unicode")
    multilingual.add(1, a)
    result = multilingual.query(b)
    assert result.is_duplicate and result.max_score > 0.8


def test_duplicate_key_is_refused():
    index = PrunedIndex()
    index.add(1, "x y z")
    with pytest.raises(KeyError):
        index.add(1, "a b c")
