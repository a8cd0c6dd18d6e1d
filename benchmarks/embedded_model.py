"""The embedded model as the user waits for it: the default pipeline, both ways, in one run.

Runs `selfinstruct run --headless --target N` (the README's first command, headless) twice in
this run: with one llama.cpp process for every prompt, and with one process per prompt family
(the default: each keeps its few-shot prefix evaluated). Same prompts, same sampling, same seed.
For each it prints the time to the first accepted task, accepted tasks per minute, prompt and
completion tokens per second over the run, and the ratio (goal: >= 2x tasks per minute).

The second part is the raw comparison kept from before: completion tokens/s for one prompt
through our client and the server vs llama-cpp-python in-process (the server's overhead).

    python benchmarks/embedded_model.py [--tasks 20] [--raw-tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
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
    ["Give three tips for staying focused while studying.",
     "Classify the sentiment of the review as positive or negative.",
     "Write a haiku about autumn leaves.", "Explain what a mortgage is.",
     "Sort the numbers in ascending order.", "Translate the sentence into French.",
     "Suggest a name for a bakery.", "Summarize the paragraph in one sentence."])


def pipeline(tasks: int, servers: int) -> dict[str, float]:
    """One headless run to `tasks` machine tasks; its figures from the run's own store."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENAI_", "SELFINSTRUCT_"))}
        env["SELFINSTRUCT_CONFIG"] = str(Path(tmp) / "none.toml")
        Path(env["SELFINSTRUCT_CONFIG"]).write_text("")  # no user settings
        env["SELFINSTRUCT_RUNS_DIR"] = str(Path(tmp) / "runs")
        env["PYTHONPATH"] = str(ROOT)
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "selfinstruct_tui", "run", "--headless", "--run-dir",
             str(run_dir), "--target", str(tasks), "--random-seed", "1",
             "--embedded-servers", str(servers)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"the run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        db = sqlite3.connect(run_dir / "run.sqlite")
        started = min(r[0] for r in db.execute("SELECT created FROM prompts"))
        created = sorted(r[0] for r in db.execute(
            "SELECT created FROM tasks WHERE origin = 'machine'"))
        ended = max(r[0] for r in db.execute("SELECT finished FROM prompts"))
        p_tok, c_tok = db.execute("SELECT SUM(prompt_tokens), SUM(completion_tokens) "
                                  "FROM prompts").fetchone()
        outputs = [i["output"] for (instances,) in db.execute(
            "SELECT instances FROM tasks WHERE origin = 'machine'")
            for i in json.loads(instances)]
        db.close()
    # "1. ..." with no second item: the few-shot examples' numbering copied into an answer
    numbered = sum(1 for o in outputs if re.match(r"\s*1[.)]\s", o) and not
                   re.search(r"(?m)^\s*2[.)]\s", o))
    seconds = ended - started
    return {"first": created[0] - t0, "tasks": len(created), "per_min": len(created) / seconds
            * 60, "prompt_tps": p_tok / seconds, "completion_tps": c_tok / seconds,
            "seconds": seconds, "numbered": numbered, "outputs": len(outputs)}


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--raw-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-raw", action="store_true")
    args = parser.parse_args()
    print(f"default pipeline to {args.tasks} tasks, {default_threads()} cores, seed 1")
    rows = {}
    for servers, name in ((1, "one process"), (3, "one per family")):
        r = rows[servers] = pipeline(args.tasks, servers)
        print(f"  {name:<15} first task {r['first']:5.1f}s   {r['per_min']:5.1f} tasks/min   "
              f"prompt {r['prompt_tps']:6.1f} tok/s   completion {r['completion_tps']:5.1f} "
              f"tok/s   ({r['tasks']:.0f} tasks in {r['seconds']:.0f}s; numbered one-item "
              f"outputs: {r['numbered']:.0f} of {r['outputs']:.0f})")
    ratio = rows[3]["per_min"] / rows[1]["per_min"]
    print(f"  tasks per minute, one per family / one process: {ratio:.2f}x (goal >= 2x)")
    if args.skip_raw:
        return
    ours = through_client(args.raw_tokens, args.repeats)
    base = in_process(args.raw_tokens, args.repeats)
    print(f"raw completion tokens/s for one prompt ({args.raw_tokens} tokens): through our "
          f"client {ours:.1f}, llama-cpp-python in-process {base:.1f}, ratio {ours / base:.2f}")


if __name__ == "__main__":
    main()
