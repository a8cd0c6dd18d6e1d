"""Time the answer parsers over a corpus of stored answers (no network beyond loopback).

`--collect CORPUS.json` runs the engine headless against the loopback fake server
(tests/fake_openai.py) once per API (completions; chat with text answers; chat with structured
output) to `--target` tasks and keeps every generation and instance answer with what its parser
needs (the prompt's examples, whether the task is a classification, a cut answer).
`--time CORPUS.json` parses them all with the prompt styles' own readers, as the engine does,
`--repeat` times, and prints the fastest pass per stage (CPU us per answer) against a baseline
timed in the same run, alternately: by default the reference implementation's reading (Stanford
Alpaca's split of a generation answer on its numbered lines, yizhongw/self-instruct's split of an
instance answer on "Input:"/"Output:"), so the ratio is what reading real models' layouts costs
over the naive split; with `--against DIR` (a checkout of another version, e.g. `git worktree add
/tmp/base HEAD~1`), that version's parsers, and the answers whose results differ are counted.

    python benchmarks/parse_time.py --collect /tmp/corpus.json --target 300
    python benchmarks/parse_time.py --time /tmp/corpus.json --repeat 7
    python benchmarks/parse_time.py --time /tmp/corpus.json --against /tmp/base
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

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


Reader = Callable[[str, Any, bool], Any]  # (answer, examples or is_classification, cut)


def stage_calls(corpus: list[dict], package: ModuleType) -> dict[str, list]:
    """Per stage, (reader, text, its second argument, truncated) for every answer, with the
    prompt styles of `package` (a selfinstruct_tui imported from some tree)."""
    style_for = package.engine.prompts.style_for
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
    return stages


_ALPACA_SPLIT = re.compile(r"\n\d+\s?\. ")
_INSTANCE_SPLIT = re.compile(r"(?:Input|Output)\s*:")


def reference_calls(corpus: list[dict]) -> dict[str, list]:
    """The reference implementations' reading of the same answers: Stanford Alpaca's split of
    a generation answer on its numbered lines (generate_instruction.py, post_process_gpt3_
    response: re.split, then a strip of each part), yizhongw/self-instruct's split of an
    instance answer on its labels (re.split, strip)."""
    def generation(text: str, _examples: Any, truncated: bool = False) -> list[str]:
        return [part.strip() for part in _ALPACA_SPLIT.split(text)]

    def instances(text: str, _cls: Any, truncated: bool = False) -> list[str]:
        return [part.strip() for part in _INSTANCE_SPLIT.split(text)]

    stages: dict[str, list] = {"generate": [], "instances": []}
    for answer in corpus:
        read = generation if answer["kind"] == "generate" else instances
        stages["generate" if answer["kind"] == "generate" else "instances"].append(
            (read, answer["text"], None, answer["truncated"]))
    return stages


def import_package(tree: Path) -> ModuleType:
    """selfinstruct_tui (with engine.prompts and engine.parsing loaded) from `tree`; the
    modules of an earlier import are set aside, not reloaded, so both stay usable."""
    for name in [m for m in sys.modules if m == "selfinstruct_tui" or
                 m.startswith("selfinstruct_tui.")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        package = importlib.import_module("selfinstruct_tui")
        importlib.import_module("selfinstruct_tui.engine.prompts")
        importlib.import_module("selfinstruct_tui.engine.parsing")
    finally:
        sys.path.remove(str(tree))
    return package


def best_pass(calls: list, repeat_into: list[float]) -> None:
    start = time.process_time()
    for read, text, arg, truncated in calls:
        read(text, arg, truncated=truncated)
    repeat_into.append(time.process_time() - start)


def time_parsers(path: Path, repeat: int, against: Path | None) -> None:
    corpus = json.loads(path.read_text())
    base = reference_calls(corpus) if against is None else \
        stage_calls(corpus, import_package(against))
    ours = stage_calls(corpus, import_package(ROOT))
    name = "reference split" if against is None else f"{against}"
    for stage, calls in ours.items():
        times: list[float] = []
        base_times: list[float] = []
        for _ in range(repeat):  # alternately, so the machine's drift hits both
            best_pass(base[stage], base_times)
            best_pass(calls, times)
        n = max(len(calls), 1)
        mine, theirs = min(times) / n, min(base_times) / n
        line = (f"{stage:10} {len(calls):6} answers  {mine * 1e6:7.1f} us/answer  baseline "
                f"({name}) {theirs * 1e6:7.1f} us  ratio {mine / theirs:5.2f}")
        if against is not None:
            differ = sum(repr(a[0](a[1], a[2], truncated=a[3])) !=
                         repr(b[0](b[1], b[2], truncated=b[3]))
                         for a, b in zip(calls, base[stage], strict=True))
            line += f"  results differ: {differ}"
        print(line + f" (CPU, min of {repeat})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--collect", type=Path, metavar="CORPUS.json")
    group.add_argument("--time", type=Path, metavar="CORPUS.json")
    parser.add_argument("--target", type=int, default=300, help="tasks per run (--collect)")
    parser.add_argument("--repeat", type=int, default=7, help="passes over the corpus (--time)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="time another checkout's parsers as the baseline (--time)")
    args = parser.parse_args()
    if args.collect:
        collect(args.collect, args.target)
    else:
        time_parsers(args.time, args.repeat, args.against)


if __name__ == "__main__":
    main()
