"""Building a run, an engine and the app for Pilot tests, and a deterministic run for snapshots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.seeds import Instance, bundled_seeds_path, load_seeds
from selfinstruct_tui.engine.store import RejectionRecord, RoundStats, RunStore, seed_tasks_to_pool
from selfinstruct_tui.engine.task import SimilarTask, Task

T = TypeVar("T")


def new_run(run_dir: Path, base_url: str, target: int = 60, **cfg) -> tuple[RunStore, RunConfig]:
    store = RunStore(run_dir)
    config = RunConfig(**{"base_url": base_url, "model": "fake-model", "target": target,
                          "random_seed": 1, "concurrency": 4, **cfg})
    store.save_config(config)
    store.replace_seeds(seed_tasks_to_pool(load_seeds(bundled_seeds_path()), 1))
    return store, config


def make_engine(run_dir: Path, base_url: str, target: int = 60, **cfg) -> Engine:
    store, config = new_run(run_dir, base_url, target, **cfg)
    return Engine(store, config)


async def until(pilot, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def read_run(run_dir: Path, read: Callable[[RunStore], T]) -> T:
    """`read(store)` on the run's store opened read-only, closed afterwards."""
    store = RunStore(run_dir, readonly=True)
    try:
        return read(store)
    finally:
        store.close()


def count_machine(run_dir: Path) -> int:
    return read_run(run_dir, lambda store: store.count_tasks("machine"))


def deterministic_run(run_dir: Path, machine: int = 40) -> None:
    """A finished run with fixed content and numbers (no clock, no randomness) for snapshots."""
    store = RunStore(run_dir)
    config = RunConfig(base_url="http://127.0.0.1:9/v1", model="snapshot-model", target=machine,
                       price_input_per_1k=0.001, price_output_per_1k=0.002)
    store.save_config(config)
    seeds = seed_tasks_to_pool(load_seeds(bundled_seeds_path()), 1)
    for task in seeds:
        task.created = 1_700_000_000.0
    store.replace_seeds(seeds)
    next_id = len(seeds) + 1
    for r in range(1, 5):
        store.start_round(RoundStats(round=r, started=1_700_000_000.0 + r, prompts=8))
        accepted = 0
        for j in range(machine // 4):
            n = (r - 1) * (machine // 4) + j
            store.insert_task(Task(
                id=next_id, origin="machine", round=r, prompt_id=None,
                instruction=f"Describe item number {n} of the {['red', 'blue', 'green'][n % 3]} "
                            f"collection in {2 + n % 4} sentences.",
                is_classification=n % 5 == 0,
                instances=[Instance(f"input {n}", f"output {n}")] * (1 + n % 3),
                max_score=round(0.1 + (n % 7) * 0.08, 2),
                most_similar=[SimilarTask(1, seeds[0].instruction, 0.25)],
                created=1_700_000_000.0 + n))
            next_id += 1
            accepted += 1
        for k in range(3):
            store.add_rejection(RejectionRecord(
                0, r, f"Rejected candidate {r}-{k} about the same topic.",
                ["near_duplicate", "too_short", "blacklisted_word"][k], "fixed detail",
                similar_id=1 if k == 0 else None,
                similar_text=seeds[0].instruction if k == 0 else None,
                score=0.81 if k == 0 else None, raw="fixed raw", created=1_700_000_000.0))
        store.finish_round(RoundStats(
            round=r, started=1_700_000_000.0 + r, finished=1_700_000_010.0 + r, prompts=8,
            candidates=accepted + 3, accepted=accepted,
            rejected={"near_duplicate": 1, "too_short": 1, "blacklisted_word": 1},
            prompt_tokens=1000 * r, completion_tokens=200 * r, cost=0.0014 * r, wall_time=2.5,
            status="done", pool_after=r * (machine // 4)))
    store.set_meta("state", {"state": "finished", "pid": 0, "ts": 0, "reason": ""})
    store.close()


def run(coro) -> None:
    asyncio.run(coro)


async def assert_next_rounds_use_only(pilot, run_dir: Path, seed_count: int) -> set[str]:
    """Wait for the run to hold `seed_count` seeds, then check that the generation prompts of
    the rounds after that show only those seeds. Returns the seed instructions."""
    import json

    reader = RunStore(run_dir, readonly=True)
    try:
        await until(pilot, lambda: reader.count_tasks("seed") == seed_count, timeout=20)
        seeds = {t.instruction for t in reader.tasks(origin="seed")}
        first_new = reader.db.execute("SELECT MAX(round) FROM rounds").fetchone()[0] + 1

        def new_prompts():
            return reader.db.execute(
                "SELECT examples FROM prompts WHERE kind='generate' AND round >= ?",
                (first_new,)).fetchall()

        await until(pilot, lambda: len(new_prompts()) >= 2, timeout=30)
        for (examples,) in new_prompts():
            for example in json.loads(examples):
                if example["origin"] == "seed":
                    assert example["instruction"] in seeds
        return seeds
    finally:
        reader.close()
