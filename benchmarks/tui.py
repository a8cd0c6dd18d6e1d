"""The TUI with 100,000 tasks in a run (headless, App.run_test).

Measures the time to the first full frame, the time from a key press (page down, filter, sort) to
the updated screen, and peak RSS. Goals: first frame < 1.5 s, key to screen < 50 ms, RSS < 400 MB.
Baselines in the same run: the first frame of a 100-task run (Textual's own start-up, which no
pool size changes) and Pilot's own cost per key (a key bound to nothing), subtracted from the key
times. Wall and CPU seconds are both printed: on a busy machine the CPU figure is the steadier.

    python benchmarks/tui.py [--tasks 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import corpus  # noqa: E402

from selfinstruct_tui.engine.config import RunConfig  # noqa: E402
from selfinstruct_tui.engine.seeds import Instance, bundled_seeds_path, load_seeds  # noqa: E402
from selfinstruct_tui.engine.store import RoundStats, RunStore, seed_tasks_to_pool  # noqa: E402
from selfinstruct_tui.engine.task import Task  # noqa: E402


def build_run(run_dir: Path, n: int) -> None:
    store = RunStore(run_dir)
    store.save_config(RunConfig(base_url="http://127.0.0.1:9/v1", model="bench", target=n))
    seeds = seed_tasks_to_pool(load_seeds(bundled_seeds_path()), 1)
    store.replace_seeds(seeds)
    texts = corpus.pool(n, seed=3)
    next_id = len(seeds) + 1
    with store.db:
        for i, text in enumerate(texts):
            task = Task(id=next_id + i, origin="machine", instruction=text,
                        is_classification=i % 6 == 0, instances=[Instance("in", "out")],
                        round=1 + i // 100, max_score=(i % 70) / 100, created=float(i))
            store._insert_task(task)
    for r in range(1, n // 100 + 1):
        store.start_round(RoundStats(round=r, started=float(r), prompts=8))
        store.finish_round(RoundStats(round=r, started=float(r), finished=float(r) + 1,
                                      prompts=8, candidates=130, accepted=100,
                                      rejected={"near_duplicate": 30}, wall_time=1.0,
                                      status="done"))
    store.set_meta("state", {"state": "finished"})
    store.close()


async def measure(run_dir: Path, only_first_frame: bool = False) -> dict:
    from selfinstruct_tui.tui.app import create_app
    from selfinstruct_tui.tui.widgets.task_table import TaskTable

    t0, c0 = time.perf_counter(), time.process_time()
    app = create_app(run_dir, refresh=0.5)
    results: dict = {}
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        results["first_frame"] = time.perf_counter() - t0
        results["first_frame_cpu"] = time.process_time() - c0
        if only_first_frame:
            return results
        table = app.query_one(TaskTable)

        async def key_to_screen(*keys: str) -> float:
            start = time.perf_counter()
            await pilot.press(*keys)
            await pilot.pause()  # until the resulting refresh has been processed
            return time.perf_counter() - start

        # Pilot's own cost per key (press + wait for idle), measured with a key bound to nothing.
        def median(values: list[float]) -> float:
            return sorted(values)[len(values) // 2]

        results["pilot"] = median([await key_to_screen("z") for _ in range(9)])
        results["page_down"] = median([await key_to_screen("pagedown") for _ in range(9)])
        results["sort"] = await key_to_screen("c")
        await pilot.press("slash")
        results["filter_char"] = max([await key_to_screen(ch) for ch in "the"])
        results["shown"] = len(table.view)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small"
        build_run(small, 100)
        asyncio.run(measure(small, only_first_frame=True))  # imports and caches warm
        base = asyncio.run(measure(small, only_first_frame=True))
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        build_run(run_dir, args.tasks)
        print(f"built a run with {args.tasks:,} tasks in {time.perf_counter() - t0:.1f}s")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        r = asyncio.run(measure(run_dir))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"first full frame:      {r['first_frame'] * 1000:8.0f} ms   (goal < 1500 ms; "
          f"CPU {r['first_frame_cpu'] * 1000:.0f} ms)")
    print(f"  baseline, 100 tasks: {base['first_frame'] * 1000:8.0f} ms   (CPU "
          f"{base['first_frame_cpu'] * 1000:.0f} ms); 100k costs "
          f"{r['first_frame'] / base['first_frame']:.2f}x the baseline")
    base = r["pilot"]
    print(f"Pilot's own cost per key (a key bound to nothing): {base * 1000:.1f} ms; "
          "the times below are net of it")
    print(f"page down -> screen:   {(r['page_down'] - base) * 1000:8.1f} ms   (goal < 50 ms)")
    print(f"sort column -> screen: {(r['sort'] - base) * 1000:8.1f} ms")
    print(f"filter key -> screen:  {(r['filter_char'] - base) * 1000:8.1f} ms   (goal < 50 ms, "
          f"worst of 3 keys; {r['shown']:,} rows match)")
    print(f"peak RSS:              {rss:8.0f} MB   (goal < 400 MB; {rss_before:.0f} MB "
          "before the app)")


if __name__ == "__main__":
    main()
