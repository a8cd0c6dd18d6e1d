"""Our SimilarityIndex against rouge-score itself, in one run.

For pools of 1k, 10k, 50k and 100k realistic instructions it streams 1,000 candidates (about a fifth
near duplicates) and prints candidates/s for rouge-score against the whole pool and for our index,
their ratio, the disagreements (max score, decision and top-10 with scores; must be 0) and the
index's memory. Then it simulates the filter work of whole runs (every candidate against the growing
pool) and prints their time, peak memory, and the time rouge-score would need at the measured rate.

    python benchmarks/similarity.py                # pools + 52k and 100k runs
    python benchmarks/similarity.py --million      # also a 1M-instruction run (long)
    python benchmarks/similarity.py --quick        # small sizes, for a smoke test
    python benchmarks/similarity.py --impl numpy   # the fallback used without a C compiler

`ours` is the index the app uses (`make_index`): the compiled kernel when it was built at install
time. The pool table also times the numpy fallback on the same candidates (`numpy cand/s`).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import corpus  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from selfinstruct_tui.engine.seeds import bundled_seeds_path, load_seeds  # noqa: E402
from selfinstruct_tui.engine.similarity import (  # noqa: E402
    NATIVE_AVAILABLE,
    NativeIndex,
    PrunedIndex,
)

IMPLS = {"native": NativeIndex, "numpy": PrunedIndex}
Index = NativeIndex if NATIVE_AVAILABLE else PrunedIndex

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_reference(pool: list[str], candidate: str, k: int = 10):
    scored = []
    for i, text in enumerate(pool):
        f = SCORER.score(text, candidate)["rougeL"].fmeasure
        if f > 0:
            scored.append((-f, i))
    scored.sort()
    best = -scored[0][0] if scored else 0.0
    return best, best > 0.7, [(i, -nf) for nf, i in scored[:k]]


def bench_pool(n: int, candidates_n: int, rouge_samples: int, fallback: bool = True) -> dict:
    pool = corpus.pool(n, seed=n)
    cands = corpus.candidates(pool, candidates_n, seed=n + 1)
    tracemalloc.start()
    index = Index()
    t0 = time.perf_counter()
    for i, text in enumerate(pool):
        index.add(i, text)
    build = time.perf_counter() - t0
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t0 = time.perf_counter()
    ours = [index.query(c) for c in cands]
    ours_rate = len(cands) / (time.perf_counter() - t0)
    numpy_rate = 0.0
    if Index is not PrunedIndex and fallback:
        slow = PrunedIndex()
        for i, text in enumerate(pool):
            slow.add(i, text)
        t0 = time.perf_counter()
        fallback_results = [slow.query(c) for c in cands]
        numpy_rate = len(cands) / (time.perf_counter() - t0)
        assert fallback_results == ours, "the numpy fallback disagrees with the kernel"
        del slow
    sample = random.Random(n).sample(range(len(cands)), rouge_samples)
    t0 = time.perf_counter()
    reference = {j: rouge_reference(pool, cands[j]) for j in sample}
    rouge_rate = len(sample) / (time.perf_counter() - t0)
    disagreements = 0
    for j, (best, dup, top) in reference.items():
        got = ours[j]
        if (got.max_score != best or got.is_duplicate != dup
                or [(m.key, m.score) for m in got.top] != top):
            disagreements += 1
    return dict(n=n, build=build, memory=memory, ours=ours_rate, rouge=rouge_rate, numpy=numpy_rate,
                ratio=ours_rate / rouge_rate, checked=len(sample), disagreements=disagreements,
                duplicates=sum(r.is_duplicate for r in ours))


def simulate_run(target: int, pair_seconds: float, progress: bool = False) -> dict:
    """The filter work of a whole run: candidates against the growing pool until `target`."""
    seeds = [t.instruction for t in load_seeds(bundled_seeds_path())]
    index = Index()
    for i, text in enumerate(seeds):
        index.add(("seed", i), text)
    rng = random.Random(target)
    accepted: list[str] = []
    candidates = 0
    pairs = 0
    t0 = time.perf_counter()
    next_report = 100_000
    while len(accepted) < target:
        if accepted and rng.random() < 0.2:
            text = corpus.near_duplicate(rng, rng.choice(accepted))
        else:
            text = corpus.instruction(rng)
        candidates += 1
        pairs += len(index)
        if not index.query(text).is_duplicate:
            index.add(len(accepted), text)
            accepted.append(text)
            if progress and len(accepted) == next_report:
                next_report += 100_000
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"  ... {len(accepted):,} accepted, {candidates:,} candidates, "
                      f"{time.perf_counter() - t0:.0f}s, peak RSS {rss:.0f} MB", flush=True)
    took = time.perf_counter() - t0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(target=target, candidates=candidates, seconds=took, peak_rss_mb=peak_rss,
                rouge_hours=pairs * pair_seconds / 3600)


def rouge_pair_seconds() -> float:
    pool = corpus.pool(3000, seed=5)
    cand = corpus.instruction(random.Random(6))
    t0 = time.perf_counter()
    for text in pool:
        SCORER.score(text, cand)
    return (time.perf_counter() - t0) / len(pool)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--runs-only", type=int, nargs="+", metavar="N",
                        help="only simulate whole runs of these sizes")
    parser.add_argument("--impl", choices=sorted(IMPLS),
                        help="index implementation (default: what the app uses)")
    args = parser.parse_args()
    global Index
    if args.impl:
        Index = IMPLS[args.impl]
    print(f"index: {Index.__name__} ({'compiled kernel' if Index is NativeIndex else 'numpy'})")
    if args.runs_only:
        pair = rouge_pair_seconds()
        for target in args.runs_only:
            r = simulate_run(target, pair, progress=True)
            print(f"{r['target']:>12,} instructions: {r['candidates']:,} candidates, "
                  f"{r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB; rouge-score "
                  f"(estimated): {r['rouge_hours']:.0f} h", flush=True)
        return
    sizes = [(1_000, 100), (10_000, 10)] if args.quick else \
        [(1_000, 200), (10_000, 20), (50_000, 5), (100_000, 3)]
    print("pool      build   index MB   ours cand/s   numpy cand/s   rouge-score cand/s      ratio"
          "   checked  disagreements  near-dups")
    total_disagreements = 0
    for n, samples in sizes:
        r = bench_pool(n, 1000, samples)
        total_disagreements += r["disagreements"]
        print(f"{r['n']:>7,}  {r['build']:5.1f}s  {r['memory'] / 2**20:9.1f}  {r['ours']:12,.0f}  "
              f"{(format(r['numpy'], '13,.0f') if r['numpy'] else '-'):>13}  {r['rouge']:19,.3f}  {r['ratio']:9,.0f}x  {r['checked']:7}  "
              f"{r['disagreements']:13}  {r['duplicates']:9}", flush=True)
    pair = rouge_pair_seconds()
    print(f"\nrouge-score: {pair * 1e6:.1f} us per pair")
    runs = [5_000] if args.quick else [52_000, 100_000]
    if args.million:
        runs.append(1_000_000)
    print("\nwhole run (filter work only)   candidates   ours       peak RSS   "
          "rouge-score (estimated)")
    for target in runs:
        r = simulate_run(target, pair, progress=target >= 500_000)
        print(f"{r['target']:>12,} instructions   {r['candidates']:10,}   {r['seconds']:7.1f}s   "
              f"{r['peak_rss_mb']:6.0f} MB   {r['rouge_hours']:8.1f} h", flush=True)
    print(f"\ndisagreements with rouge-score: {total_disagreements}")
    if total_disagreements:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
