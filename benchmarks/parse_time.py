"""Time the answer parsers over a corpus of stored answers (no network beyond loopback).

`--collect CORPUS.json` runs the engine headless against the loopback fake server
(tests/fake_openai.py) once per API (completions; chat with text answers; chat with structured
output) to `--target` tasks and keeps every generation and instance answer with what its parser
needs (the prompt's examples, whether the task is a classification, a cut answer).
`--time CORPUS.json` parses them all with the prompt styles' own readers, as the engine does,
`--repeat` times, and prints the fastest pass per stage (us per answer). Compare two versions of
the parser by timing the same corpus with each (e.g. `git stash push -- selfinstruct_tui`).

    python benchmarks/parse_time.py --collect /tmp/corpus.json --target 300
    python benchmarks/parse_time.py --time /tmp/corpus.json --repeat 7
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

RUNS = (("completions", "auto"), ("chat", "off"), ("chat", "on"))


def collect(out: Path, target: int) -> None:
    from fake_openai import FakeOpenAI

    from selfinstruct_tui.engine.parsing import parse_classification

    corpus: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for name in ("SELFINSTRUCT_RUNS_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                     "XDG_CACHE_HOME"):
            env[name] = tempfile.mkdtemp(dir=tmp)
        config = Path(tmp) / "config.toml"
        config.write_text("")
        env["SELFINSTRUCT_CONFIG"] = str(config)
        for api, structured in RUNS:
            run_dir = Path(tmp) / f"run-{api}-{structured}"
            subprocess.run([sys.executable, "-m", "selfinstruct_tui", "run", "--headless",
                            "--run-dir", str(run_dir), "--base-url", server.base_url,
                            "--api", api, "--structured-output", structured,
                            "--target", str(target)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            conn = sqlite3.connect(run_dir / "run.sqlite")
            classified = {ref: parse_classification(text) for ref, text in conn.execute(
                "SELECT task_ref, response FROM prompts WHERE kind = 'classify' AND response "
                "IS NOT NULL")}
            for kind, ref, examples, text, finish in conn.execute(
                    "SELECT kind, task_ref, examples, response, finish_reason FROM prompts WHERE "
                    "kind IN ('generate', 'instances') AND response IS NOT NULL ORDER BY id"):
                corpus.append({"api": api, "kind": kind, "text": text,
                               "truncated": finish == "length",
                               "instructions": [e["instruction"] for e in json.loads(examples)],
                               "is_classification": bool(classified.get(ref))})
            conn.close()
    out.write_text(json.dumps(corpus, ensure_ascii=False))
    print(f"{len(corpus)} answers -> {out}")


def time_parsers(path: Path, repeat: int) -> None:
    from selfinstruct_tui.engine.prompts import style_for

    corpus = json.loads(path.read_text())
    styles = {api: style_for(api) for api in ("completions", "chat")}
    stages: dict[str, list] = {"generate": [], "instances": []}
    for answer in corpus:
        style = styles[answer["api"]]
        if answer["kind"] == "generate":
            stages["generate"].append((style.read_generation, answer["text"],
                                       answer["instructions"], answer["truncated"]))
        else:
            stages["instances"].append((style.read_instances, answer["text"],
                                        answer["is_classification"], answer["truncated"]))
    for stage, calls in stages.items():
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            for read, text, arg, truncated in calls:
                read(text, arg, truncated=truncated)
            best = min(best, time.perf_counter() - start)
        print(f"{stage:10} {len(calls):6} answers  {best * 1e3:8.1f} ms  "
              f"{best / max(len(calls), 1) * 1e6:7.1f} us/answer (min of {repeat})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--collect", type=Path, metavar="CORPUS.json")
    group.add_argument("--time", type=Path, metavar="CORPUS.json")
    parser.add_argument("--target", type=int, default=300, help="tasks per run (--collect)")
    parser.add_argument("--repeat", type=int, default=7, help="passes over the corpus (--time)")
    args = parser.parse_args()
    if args.collect:
        collect(args.collect, args.target)
    else:
        time_parsers(args.time, args.repeat)


if __name__ == "__main__":
    main()
