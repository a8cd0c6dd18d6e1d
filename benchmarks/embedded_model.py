"""The embedded model: tokens/s through our client vs llama-cpp-python in-process, same prompt.

Also measures the time from `selfinstruct run` to the first accepted task (a real subprocess).

    python benchmarks/embedded_model.py [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os

import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from selfinstruct_tui.engine import prompts as P  # noqa: E402
from selfinstruct_tui.engine.llm import ClientSettings, LLMClient, SamplingParams  # noqa: E402
from selfinstruct_tui.engine.local_model import (  # noqa: E402
    LocalModelServer,
    default_model_path,
    default_threads,
)

PROMPT = P.generation_completion(
    [t for t in ["Give three tips for staying focused while studying.",
                 "Classify the sentiment of the review as positive or negative.",
                 "Write a haiku about autumn leaves.", "Explain what a mortgage is.",
                 "Sort the numbers in ascending order.", "Translate the sentence into French.",
                 "Suggest a name for a bakery.", "Summarize the paragraph in one sentence."]])


def through_client(tokens: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalModelServer(tmp)
        server.start()
        try:
            async def go() -> float:
                client = LLMClient(ClientSettings(base_url=server.base_url, model="m",
                                                  concurrency=1))
                produced, seconds = 0, 0.0
                for i in range(-1, repeats):  # i == -1: warm-up, not timed
                    t0 = time.perf_counter()
                    resp = await client.request(
                        P.CompletionRequest(PROMPT.prompt, ()),
                        SamplingParams(max_tokens=tokens, temperature=0.7, seed=i))
                    if i >= 0:
                        seconds += time.perf_counter() - t0
                        produced += resp.completion_tokens
                await client.close()
                return produced / seconds

            return asyncio.run(go())
        finally:
            server.stop()


def in_process(tokens: int, repeats: int) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=default_threads(),
                n_threads_batch=default_threads(), verbose=False)
    produced, seconds = 0, 0.0
    for i in range(-1, repeats):  # i == -1: warm-up, not timed
        t0 = time.perf_counter()
        out = llm.create_completion(PROMPT.prompt, max_tokens=tokens, temperature=0.7, seed=i)
        if i >= 0:
            seconds += time.perf_counter() - t0
            produced += out["usage"]["completion_tokens"]
    return produced / seconds


def time_to_first_task() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "selfinstruct_tui", "run", "--headless",
                                 "--run-dir", str(run_dir), "--target", "1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                try:
                    db = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True)
                    n = db.execute("SELECT COUNT(*) FROM tasks WHERE origin='machine'").fetchone()
                    db.close()
                    if n[0]:
                        return time.perf_counter() - t0
                except sqlite3.Error:
                    pass
                time.sleep(0.1)
            return time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours = through_client(args.tokens, args.repeats)
    base = in_process(args.tokens, args.repeats)
    print(f"threads: {default_threads()}, prompt: {len(PROMPT.prompt)} chars, "
          f"max_tokens: {args.tokens}, repeats: {args.repeats}")
    print(f"tokens/s through our client (llama_cpp.server): {ours:.1f}")
    print(f"tokens/s llama-cpp-python in-process:           {base:.1f}")
    print(f"ratio: {ours / base:.2f}")
    first = time_to_first_task()
    print(f"selfinstruct run -> first accepted task: {first:.1f}s")



if __name__ == "__main__":
    main()
