"""Realistic synthetic instruction pools for benchmarks (no network, no downloads).

Instructions are built from many task shapes with large vocabularies, mixed with the bundled seed
set, so that pool statistics resemble a Self-Instruct pool: 5-40 words, a long tail of rare words,
frequent function words ("the", "a", "of", "given"), and max ROUGE-L against the pool mostly in
0.2-0.6 with a share of real near duplicates.
"""

from __future__ import annotations

import random

TOPICS = """budget recipe garden contract poem essay bridge vaccine election river library startup
festival museum bicycle volcano marathon orchestra spreadsheet password interview mortgage glacier
telescope protein satellite compost novel lecture tariff harbor vineyard algorithm theorem pension
curriculum wetland pharmacy parliament bakery insurance migration drought keyboard sonnet invoice
itinerary warranty podcast tournament monastery canal fossil enzyme hurricane referendum carpool
apprenticeship diet backpack lighthouse franchise quarry ledger tapestry ferry orchard salary dialect
proverb riddle ritual census airline battery cathedral chemistry climate coffee database democracy
earthquake ecosystem email emergency engine exam factory farm fashion fever fitness football forest
friendship galaxy genome guitar habit hospital hotel immigration inflation internet island journal
kitchen language laptop lawsuit leadership loan magnet marketing meditation microscope mountain
negotiation newspaper nutrition ocean office painting pandemic passport philosophy photography
physics pizza planet plastic pollution pottery poverty printer privacy pyramid railway rainforest
recession recycling religion restaurant robot rocket salad school science sculpture shipping sleep
smartphone soccer software soil speech stadium stock subway supermarket surgery symphony tax tea
temple tennis theater tourism traffic translation tsunami university vacation village volunteer
wedding whale wildfire wind wine workshop yoga zoo""".split()
ADJECTIVES = """historical economic quiet urban rural digital ancient modern healthy risky frugal
seasonal legal medical musical tropical nordic coastal academic casual formal technical spicy gentle
rapid slow cheap luxury public private ethical chemical local global personal remote weekly daily
common rare simple complex open hidden fresh solar marine lunar civic social famous unusual popular
sustainable affordable innovative traditional controversial efficient dangerous peaceful""".split()
AUDIENCES = """a child|a tourist|a manager|a student|a farmer|a nurse|a judge|an engineer|a retiree|
a beginner|an investor|a chef|a teacher|a journalist|a pilot|a librarian|a scientist|a parent|
a teenager|a customer|a landlord|a voter|a patient|an artist""".replace("\n", "").split("|")
VERBS = """Explain Describe Summarize Compare List Suggest Rewrite Classify Translate Outline
Evaluate Propose Identify Convert Recommend Estimate Justify Critique Plan Design Analyze Predict
Name Generate Create Find Tell Give Choose Check Brainstorm Draft Define Rank Review Argue""".split()
OBJECTS = [
    "the {a} {t}", "a {t} for {aud}", "{n} facts about the {t}", "how a {t} works",
    "why {aud} would need a {t}", "the history of the {t}", "a {a} plan to improve the {t}",
    "the difference between a {t} and a {t2}", "a short story about a {t}",
    "the risks of a {a} {t}", "a product description for a {a} {t}", "a poem about the {t}",
    "{n} questions to ask before buying a {t}", "the main argument for a {a} {t}",
    "an email asking {aud} about the {t}", "a recipe that uses {t} as an ingredient",
    "the sentiment of a review of the {t}", "a slogan for a {a} {t}", "the budget of a {t}",
    "a lesson plan about the {t}", "the most {a} feature of the {t}", "a joke about a {t}",
    "a checklist for maintaining a {t}", "the causes of the {a} {t} crisis",
    "a dialogue between {aud} and {aud2}", "a tweet about the {t}", "the {t} in one word",
    "common myths about the {t}", "a title for an article on the {t}", "the future of the {t}",
]
MODIFIERS = [
    "", "", "", "in the context of the {t2}", "using {a} language", "with an example from the {t2}",
    "for {aud}", "from the point of view of {aud}", "as if it were a {t2}", "in {lang}",
    "compared with the {t2}", "during a {t2}", "in a {a} tone", "without technical terms",
]
CONSTRAINTS = [
    "", "", "", "in {n} sentences", "as a bulleted list", "without using the word {t2}",
    "in under {n}0 words", "and explain your reasoning", "and give one example",
    "in the form of a table", "then rate it from 1 to {n}", "and suggest a next step",
]
LANGS = ["French", "Spanish", "plain English", "German", "simple terms", "Italian"]


def _fill(rng: random.Random, pattern: str) -> str:
    return pattern.format(
        a=rng.choice(ADJECTIVES), a2=rng.choice(ADJECTIVES), t=rng.choice(TOPICS),
        t2=rng.choice(TOPICS), aud=rng.choice(AUDIENCES), aud2=rng.choice(AUDIENCES),
        n=rng.randint(2, 9), lang=rng.choice(LANGS))


FUNCTION_WORDS = ("the a of to and in for given following that is with on as an by be this "
                  "it from or are your each which how what its into their than".split())
_SYLLABLES = ("ka lo mi ter son van ril dus pel gra bin tor mes qua zen lis dor fen cal rup "
              "nex tam hol ber vis cor lan pri mon sil ").split()


def _vocabulary(size: int = 20_000, seed: int = 99) -> list[str]:
    rng = random.Random(seed)
    words = list(dict.fromkeys(TOPICS + ADJECTIVES))
    seen = set(words)
    while len(words) < size:
        w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


VOCAB = _vocabulary()
# Zipf-like weights: a few content words are common, most are rare (as in real instructions).
_CUM = []
_total = 0.0
for _rank in range(len(VOCAB)):
    _total += 1.0 / (_rank + 1) ** 1.05
    _CUM.append(_total)


def instruction(rng: random.Random) -> str:
    """Zipf-distributed content words among frequent function words, 5-30 tokens."""
    length = max(5, min(30, int(rng.lognormvariate(2.6, 0.35))))
    words = [rng.choice(VERBS)]
    content = rng.choices(VOCAB, cum_weights=_CUM, k=length)
    for i in range(length - 1):
        words.append(rng.choice(FUNCTION_WORDS) if rng.random() < 0.4 else content[i])
    return " ".join(words) + "."


def near_duplicate(rng: random.Random, text: str) -> str:
    words = text.split()
    for _ in range(1 if len(words) < 12 else 2):
        words[rng.randrange(len(words))] = rng.choice(TOPICS)
    return " ".join(words)


def pool(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [instruction(rng) for _ in range(n)]


def candidates(existing: list[str], n: int, seed: int = 1, dup_share: float = 0.2) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if existing and rng.random() < dup_share:
            out.append(near_duplicate(rng, rng.choice(existing)))
        else:
            out.append(instruction(rng))
    return out
