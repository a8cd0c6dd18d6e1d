"""Engine throughput against the fake OpenAI server with a fixed latency L and concurrency C.

Prints the requests/s achieved, its ratio to the limit C/L (goal: >= 0.9 at C=32, L=0.2 s), and
the engine's own CPU time per accepted task (process CPU time minus the fake server's threads is not
separable in one process, so the server runs in a subprocess).

    python benchmarks/engine_throughput.py [--concurrency 32] [--latency 0.2] [--target 3000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selfinstruct_tui.engine.config import RunConfig  # noqa: E402
from selfinstruct_tui.engine.engine import Engine  # noqa: E402
from selfinstruct_tui.engine.seeds import bundled_seeds_path, load_seeds  # noqa: E402
from selfinstruct_tui.engine.store import RunStore, seed_tasks_to_pool  # noqa: E402


def raw_client_rate(base_url: str, concurrency: int, seconds: float = 8.0) -> float:
    """The ceiling on this machine: C workers sending requests back to back, no engine."""
    import asyncio

    from selfinstruct_tui.engine import prompts as P
    from selfinstruct_tui.engine.llm import ClientSettings, LLMClient, SamplingParams

    async def go() -> float:
        client = LLMClient(ClientSettings(base_url=base_url, model="m", concurrency=concurrency))
        req = P.generation_completion([f"Explain topic {i}." for i in range(8)])
        done = 0
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await client.request(req, SamplingParams(max_tokens=64))
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        took = time.perf_counter() - start
        await client.close()
        return done / took

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--target", type=int, default=3000)  # steady state, not start-up
    parser.add_argument("--api", default="completions", choices=["completions", "chat"])
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(args.latency)],
        stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            store = RunStore(tmp)
            cfg = RunConfig(base_url=base_url, model="m", api=args.api, target=args.target,
                            concurrency=args.concurrency)
            store.save_config(cfg)
            store.replace_seeds(seed_tasks_to_pool(load_seeds(bundled_seeds_path()), 1))
            engine = Engine(store, cfg)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            finished = engine.run()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            requests = store.db.execute(
                "SELECT COUNT(*) FROM prompts WHERE error IS NULL").fetchone()[0]
            store.close()
        ceiling = raw_client_rate(base_url, args.concurrency)
    finally:
        server.terminate()
        server.wait()
    limit = args.concurrency / args.latency
    rate = requests / wall
    print(f"C={args.concurrency} L={args.latency}s api={args.api}: {requests} requests in "
          f"{wall:.1f}s, {finished.accepted} tasks accepted")
    print(f"requests/s: {rate:.1f}   limit C/L: {limit:.1f}   ratio: {rate / limit:.2f}")
    print(f"raw client, no engine, same server: {ceiling:.1f} requests/s "
          f"({ceiling / limit:.2f} of C/L); engine / raw client: {rate / ceiling:.2f}")
    print(f"engine CPU: {cpu:.2f}s total, {cpu / max(1, finished.accepted) * 1000:.2f} ms "
          "per accepted task")


if __name__ == "__main__":
    main()
