"""The `selfinstruct` command: argument parsing and dispatch.

`session` resolves what a run needs, the engine runs it, `headless` prints it or the app shows
it; `engine.runs` keeps run directories and detached runs. Exit codes: 0 target reached, 2 bad
input or settings, 3 endpoint failing or paused by a spend guard, 4 a spend limit, 130 stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfinstruct_tui import __version__
from selfinstruct_tui.console import reader_gone, text_console
from selfinstruct_tui.engine.config import FLAGS, REFRESH_RANGE, endpoint_key
from selfinstruct_tui.engine.errors import ConfigError, InputFileError, UserError
from selfinstruct_tui.engine.exports import FORMATS
from selfinstruct_tui.engine.invocation import command_line
from selfinstruct_tui.engine.runs import DETACHED_ENV, RUN_LOG

err = text_console(stderr=True)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", metavar="PATH", help="seed file (default: the bundled seed set)")
    p.add_argument("--run-dir", metavar="DIR", help="run directory; an existing one is resumed")
    p.add_argument("--target", type=int, metavar="N",
                   help="machine-generated tasks to reach (100)")
    p.add_argument("--model", metavar="NAME", help="model name at the endpoint")
    p.add_argument("--base-url", metavar="URL", dest="base_url", action="append",
                   help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; give it "
                   "several times for a pool of endpoints (each with --concurrency requests in "
                   "flight; requests go to the least loaded)")
    p.add_argument("--api", choices=["completions", "chat"], help="completions (base models, "
                   "the paper's setting) or chat (chat models)")
    p.add_argument("--concurrency", type=int, metavar="C", help="requests in flight (default 8)")
    p.add_argument("--random-seed", type=int, metavar="S", dest="random_seed",
                   help="seed of the prompts' example sampling, of the requests' seed and of the "
                        "review's sample (0)")
    p.add_argument("--no-request-seed", dest="request_seed", action="store_const", const=False,
                   help="send the requests no seed field (for an endpoint that refuses it; the "
                        "examples' sampling keeps --random-seed)")
    p.add_argument("--prompts-per-round", type=int, dest="prompts_per_round", metavar="P",
                   help="generation prompts per round (default: --concurrency; 100 with --batch)")
    p.add_argument("--batch", action="store_const", const=True,
                   help="send each stage of a round as one job through the Batch API "
                        "(/v1/files, /v1/batches); a pending batch is resumed by polling it")
    p.add_argument("--no-batch", action="store_true", dest="no_batch",
                   help="resume a batch run sending requests one by one (jobs already sent are "
                        "still read)")
    p.add_argument("--batch-command", dest="batch_command", metavar="CMD",
                   help='batch mode without an API: run CMD on each job\'s file, e.g. '
                        '"vllm run-batch -i {input} -o {output} --model M"')
    p.add_argument("--batch-poll", type=float, dest="batch_poll_seconds", metavar="SECONDS",
                   help="seconds between two polls of a pending batch (30); a batch command "
                        "this session started is read as soon as it exits")
    p.add_argument("--threshold", type=float, help="ROUGE-L near-duplicate threshold (0.7)")
    p.add_argument("--tokenizer", choices=["rouge", "unicode"],
                   help="similarity tokenizer; 'unicode' dedupes non-English text")
    p.add_argument("--allow-non-ascii", dest="filter_non_ascii", action="store_const",
                   const=False, help="keep instructions that start with a non-ASCII character")
    p.add_argument("--rpm", type=float, dest="requests_per_minute",
                   help="requests per minute, paced evenly (one every 60/N s)")
    p.add_argument("--tpm", type=float, dest="tokens_per_minute",
                   help="tokens per minute (estimated: prompt + max_tokens), paced evenly")
    p.add_argument("--timeout", type=float, dest="request_timeout",
                   help="seconds to wait for an answer (120)")
    p.add_argument("--connect-timeout", type=float, dest="connect_timeout",
                   help="seconds to open a connection to an endpoint (default 5)")
    p.add_argument("--max-retries", type=int, dest="max_retries", metavar="N",
                   help="attempts after a request's first, on errors worth retrying (6)")
    p.add_argument("--price-in", type=float, dest="price_input_per_1k",
                   help="USD per 1K input (prompt) tokens, for the cost shown and --max-cost")
    p.add_argument("--price-out", type=float, dest="price_output_per_1k",
                   help="USD per 1K output (completion) tokens")
    p.add_argument("--key-env", dest="key_env", help="environment variable with the API key")
    p.add_argument("--max-cost", type=float, dest="max_cost", metavar="USD",
                   help="stop cleanly (exit 4) when the run has cost this much (needs "
                        "--price-in/out; 0: no limit, the default)")
    p.add_argument("--max-tokens", type=int, dest="max_tokens", metavar="N",
                   help="stop cleanly (exit 4) when the run has used this many tokens in all "
                        "(0: no limit, the default)")
    p.add_argument("--context-window", type=int, dest="context_window", metavar="N",
                   help="the model's context window in tokens (default: learned from the "
                   "endpoint's first context-length error)")
    p.add_argument("--stop-grace", type=float, dest="stop_grace", metavar="SECONDS",
                   help="after a stop, how long requests in flight may finish (10)")
    p.add_argument("--structured-output", choices=["auto", "on", "off"],
                   dest="structured_output", help="chat: JSON-schema answers (auto: where the "
                   "endpoint supports them)")
    p.add_argument("--extra-body", type=_json_object, dest="extra_body", metavar="JSON",
                   help="fields added to every request's body, e.g. '{\"chat_template_kwargs\": "
                   "{\"enable_thinking\": false}}' (Qwen3 on vLLM/SGLang: no thinking)")
    p.add_argument("--embedded-servers", type=int, choices=[1, 3], dest="embedded_servers",
                   help="embedded model: 3 processes, one per prompt family, each reusing its "
                   "few-shot prefix (default, faster), or 1 (a third of the memory)")
    p.add_argument("--max-fruitless-requests", type=int, dest="max_fruitless_requests",
                   metavar="N", help="pause after this many requests in a row that added "
                   "nothing to the pool (40; 0: never)")
    p.add_argument("--model-path", dest="model_path", metavar="FILE.gguf",
                   help="serve this GGUF with the embedded llama.cpp server")
    p.add_argument("--local-port", type=int, dest="local_port", help=argparse.SUPPRESS)
    p.add_argument("--headless", action="store_true", help="no TUI: print progress")
    p.add_argument("--theme", help="TUI theme (ember, paper, high-contrast or your own)")
    p.add_argument("--refresh", type=_refresh_seconds,
                   help="TUI refresh interval in seconds (0.5)")
    p.add_argument("--compact", action="store_true", help="layout for 80x24 terminals")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (survives the terminal); see `selfinstruct attach`")
    p.add_argument("--paused", action="store_true",
                   help="start paused: nothing is sent until you resume it (p in the TUI, or in "
                   "a TUI attached to a --detach run)")


def _refresh_seconds(text: str) -> float:
    """--refresh's value: seconds between two screen updates, from 0.05 to 60 (0 redrew the
    screen as fast as the loop could, a core's worth of CPU for nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    low, high = REFRESH_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} s: give 0.05 to 60 seconds (0.5 is the "
                                         "default)")
    return value


def _output_path(text: str) -> str:
    """An output path flag's value (-o, --report): not empty (`-o ""`, an unset shell variable,
    quietly wrote the default file instead)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name a file (or - for stdout)")
    return text


def _json_object(text: str) -> dict[str, Any]:
    """--extra-body's value: a JSON object (argparse names the flag beside the message)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({exc.msg} at character {exc.pos}): give an object such as "
            "'{\"reasoning_effort\": \"low\"}', quoted for the shell") from None
    if not isinstance(value, dict):
        from selfinstruct_tui.engine.records import json_type_name

        raise argparse.ArgumentTypeError(
            f"must be a JSON object of request fields, not {json_type_name(value)}: "
            "e.g. '{\"reasoning_effort\": \"low\"}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfinstruct",
        description="Generate instruction-tuning data with the Self-Instruct method.")
    parser.add_argument("--version", action="version", version=f"selfinstruct-tui {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a run, or resume the one in --run-dir",
                         epilog="exit codes: 0 target reached, 1 the run store cannot be "
                                "written (a full disk), 2 bad input or settings, 3 endpoint "
                                "failing or a spend guard paused the run, 4 a spend limit "
                                "(--max-cost, --max-tokens) was reached, 130 stopped by the "
                                "user (Ctrl-C, SIGTERM); the run resumes with --run-dir")
    _add_run_flags(run)

    attach = sub.add_parser("attach", help="open the TUI on a run another process drives")
    attach.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    attach.add_argument("--refresh", type=_refresh_seconds,
                        help="screen refresh interval (0.5 s)")
    attach.add_argument("--compact", action="store_true", help="layout for 80x24 terminals")
    attach.add_argument("--theme")

    sub.add_parser("runs", help="list runs, most recent activity first: state, pool size, "
                   "last activity")

    export = sub.add_parser("export", help="export a run's tasks")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="alpaca: a JSON list of {instruction, input, output}; "
                        "self-instruct, openai-chat, sharegpt: JSON Lines; rejections: every "
                        "rejected candidate with its reason")
    export.add_argument("-o", "--output", metavar="FILE", type=_output_path,
                        help="the file to write (- for stdout; default: export-FORMAT in the "
                        "run directory)")
    export.add_argument("--reviewed-only", action="store_true", dest="reviewed_only",
                        help="only tasks that passed the quality review (yes on all three "
                        "questions; see `selfinstruct review`)")

    _add_review_parser(sub)

    seeds = sub.add_parser("seeds", help="seed file tools")
    seeds_sub = seeds.add_subparsers(dest="seeds_command", required=True)
    check = seeds_sub.add_parser("check", help="validate a seed file and summarise it")
    check.add_argument("path", metavar="PATH")
    seeds_export = seeds_sub.add_parser(
        "export", help="write a run's current seed set (pending edits included) as JSONL")
    seeds_export.add_argument("run_dir", metavar="RUN_DIR")
    seeds_export.add_argument("-o", "--output", metavar="FILE", type=_output_path,
                              help="the file to write (default, or -: stdout)")

    dedup = sub.add_parser("dedup", help="drop near-duplicate instructions from a dataset")
    dedup.add_argument("input", metavar="INPUT")
    dedup.add_argument("-o", "--output", metavar="OUTPUT", type=_output_path,
                       help="the file to write (- for stdout; default: INPUT.dedup.EXT)")
    dedup.add_argument("--threshold", type=float, default=0.7,
                       help="drop an item whose ROUGE-L against a kept one is above this (0.7)")
    dedup.add_argument("--field", default="instruction",
                       help="the records' field holding the instruction (instruction)")
    dedup.add_argument("--report", metavar="FILE", type=_output_path,
                       help="write each dropped item with the kept one it collided with "
                            "(JSON Lines; - for stdout)")
    dedup.add_argument("--tokenizer", choices=["rouge", "unicode"], default="rouge",
                       help="rouge (rouge-score's: [a-z0-9] only) or unicode (for non-English "
                            "text)")
    return parser


RUN_FLAG_NAMES = tuple(FLAGS)  # the run settings that have a flag of `run`


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {name: getattr(args, name, None) for name in RUN_FLAG_NAMES
             if getattr(args, name, None) is not None}
    if getattr(args, "no_batch", False):
        if flags.get("batch") or flags.get("batch_command"):
            raise ConfigError("--no-batch cannot be combined with --batch or --batch-command")
        flags["batch"], flags["batch_command"] = False, ""
    elif "batch_command" in flags and not str(flags["batch_command"]).strip():
        # "" would be no command at all: the run fell back to the embedded model
        raise ConfigError("--batch-command is empty: give the command run on each batch file, "
                          "e.g. --batch-command \"vllm run-batch -i {input} -o {output} --model "
                          "M\", or leave the flag out")
    urls = flags.get("base_url")
    if isinstance(urls, list):  # --base-url given once per endpoint
        # one endpoint however often given (with or without a trailing slash): the first
        # spelling is kept
        spelled: dict[str, str] = {}
        for url in urls:
            spelled.setdefault(endpoint_key(url), url)
        unique = list(spelled.values())
        flags["base_url"] = unique[0]
        if len(unique) > 1:
            flags["endpoints"] = [{"base_url": url} for url in unique]
    return flags




def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SELFINSTRUCT_LOG", "WARNING"))
    if os.environ.get(DETACHED_ENV):
        # A detached engine outlives the terminal that started it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)  # the resume command uses them
    commands = {"run": cmd_detach if getattr(args, "detach", False) else cmd_run,
                "attach": cmd_attach, "runs": cmd_runs, "export": cmd_export,
                "seeds": cmd_seeds, "dedup": cmd_dedup, "review": cmd_review}
    try:
        return commands[args.command](args)
    except InputFileError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False)
        return exc.exit_code
    except UserError as exc:
        err.print(f"error: {exc}", markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        return 130
    except BrokenPipeError:
        # The reader of stdout stopped reading (`selfinstruct export RUN -o - | head`): not an
        # error of ours to report. Quiet, with the status of a command ended by SIGPIPE, as
        # `cat` or `grep` end there.
        reader_gone()
        return 128 + signal.SIGPIPE


def cmd_seeds_check(args: argparse.Namespace) -> int:
    from selfinstruct_tui.engine.records import read_utf8
    from selfinstruct_tui.engine.seeds import (
        instruction_key,
        near_duplicate_seeds,
        parse_seeds,
        summarize,
    )

    tasks, fmt = parse_seeds(args.path, read_utf8(args.path))
    summary = summarize(tasks, fmt)
    out = text_console()
    out.print(f"{args.path}: OK ({fmt} format)", markup=False)
    out.print(f"  tasks:           {summary.count}")
    out.print(f"  instances:       {summary.instances}")
    out.print(f"  classification:  {summary.classification} ({summary.classification_share:.1%})")
    out.print(f"  without input:   {summary.without_input} ({summary.without_input_share:.1%})")
    for warning in summary.warnings:
        out.print(f"  warning: {warning}", markup=False)
    texts = {task.id: instruction_key(task.instruction) for task in tasks}
    for hit in near_duplicate_seeds(tasks):
        same = ", the same instruction" if texts[hit.seed] == texts[hit.other] else ""
        out.print(f"  near-duplicate seeds (ROUGE-L {hit.score:.2f}{same}): {hit.seed} ~ "
                  f"{hit.other}", markup=False)
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    """`seeds check` or `seeds export`."""
    return cmd_seeds_export(args) if args.seeds_command == "export" else cmd_seeds_check(args)


def cmd_seeds_export(args: argparse.Namespace) -> int:
    """Write a run's seed set (the pending one if edits wait for the next round); exit 2 for a
    directory that is not a run or a file that cannot be written."""
    from selfinstruct_tui.engine.exports import export_seeds

    replaced = _existing([args.output] if args.output not in (None, "-") else [])
    try:
        path, count, pending = export_seeds(args.run_dir, args.output)
    except IsADirectoryError:
        raise UserError(f"{args.output}: is a directory; name a file with -o") from None
    except BrokenPipeError:
        raise  # the reader of stdout has gone (`| head`): see main
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write the seeds ({exc.strerror or exc}); "
                        "choose another -o") from None
    which = "pending seed set (applies at the next round)" if pending else "seed set"
    if str(path) == "-":
        err.print(f"{count} seeds ({which}) of {args.run_dir}", markup=False)
    else:
        text_console().print(
            f"wrote {count} seeds ({which}) to {path}", markup=False)
    _say_replaced(replaced)
    return 0


def _existing(paths: list[str | Path]) -> list[Path]:
    """The regular files among `paths` (outputs about to be written): replaced, said after."""
    return [Path(p) for p in paths if Path(p).is_file()]


def _say_replaced(replaced: Sequence[Path], then: str = "") -> None:
    """Say which files a command's output replaced (`then`: what follows, "; ..."): a file is
    never overwritten unsaid."""
    if replaced:
        err.print(f"note: replaced what was there: {', '.join(map(str, replaced))}{then}",
                  markup=False)


# -- export ---------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    from selfinstruct_tui.engine.exports import export_run
    from selfinstruct_tui.engine.store import is_run_dir

    if not is_run_dir(args.run_dir):
        raise UserError(f"{args.run_dir}: not a run directory (no run.sqlite in it)")
    try:
        exported = export_run(args.run_dir, args.format, args.output,
                              reviewed_only=args.reviewed_only)
    except IsADirectoryError:
        raise UserError(f"{args.output}: is a directory; name a file with -o") from None
    except BrokenPipeError:
        raise  # the reader of stdout has gone (`| head`): see main
    except OSError as exc:
        raise UserError(f"{args.output or args.run_dir}: cannot write the export "
                        f"({exc.strerror or exc}); choose another -o") from None
    path = exported.path
    if str(path) != "-":
        text_console().print(
            f"wrote {exported.counted} ({args.format}) to {path}; run metadata (model, "
            f"endpoints) in {path.name}.meta.json", markup=False)
        # derived from the store, so nothing is lost; but not unsaid
        _say_replaced(exported.replaced, "; -o FILE writes another file")
    else:  # the count still said, beside the data (as `seeds export -o -` says it)
        err.print(f"wrote {exported.counted} ({args.format}) of {args.run_dir} to stdout",
                  markup=False)
    for note in exported.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.reviewed_only and exported.rows == 0:
        from selfinstruct_tui.engine.review import summarize
        from selfinstruct_tui.engine.store import RunStore

        store = RunStore(args.run_dir, readonly=True)
        try:
            passed = summarize(store.reviews()).passed
        finally:
            store.close()
        print(f"note: {passed} reviewed task(s) passed all three questions, none of them is an "
              "active machine task now (promoted to a seed or dropped since)" if passed else
              "note: no reviewed task has passed all three questions yet", file=sys.stderr)
    return 0


# -- quality review -------------------------------------------------------------------------------

def _add_review_parser(sub: Any) -> None:
    review = sub.add_parser("review", help="print a run's quality review: per question, tasks "
                            "reviewed, share of yes, 95%% Wilson interval")
    review.add_argument("run_dir", metavar="RUN_DIR")


def cmd_review(args: argparse.Namespace) -> int:
    """The review table the TUI shows under the task pool, as plain text (exit 0), also for a
    run without a review (it says so); UserError (exit 2) for a directory that is not a run."""
    from selfinstruct_tui.engine.review import summarize
    from selfinstruct_tui.engine.store import RunStore, is_run_dir

    if not is_run_dir(args.run_dir):
        raise UserError(f"{args.run_dir}: not a run directory (no run.sqlite in it)")
    store = RunStore(args.run_dir, readonly=True)
    try:
        records = store.reviews()
    finally:
        store.close()
    out = text_console()
    if not records:
        out.print(f"{args.run_dir}: no quality review yet; open the run in the TUI "
                  f"({command_line('attach', args.run_dir)}) and press r", markup=False)
        return 0
    out.print(f"quality review of {args.run_dir}", markup=False)
    for line in summarize(records).lines():
        out.print(line, markup=False)
    return 0


# -- run ------------------------------------------------------------------------------------------



def cmd_dedup(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from selfinstruct_tui.engine.dedup import (
        dedup,
        default_output,
        normalize_inputs,
        read_items,
        tokenless,
        write_dataset,
        write_report,
    )
    from selfinstruct_tui.engine.fsutil import check_output_path
    from selfinstruct_tui.engine.seeds import short_text
    from selfinstruct_tui.engine.similarity import FALLBACK_NOTICE, NATIVE_AVAILABLE

    src = Path(args.input)
    kind, items = read_items(src, args.field)
    out_path = Path(args.output) if args.output else default_output(src)
    # "-": stdout (the summary goes to stderr then); a file is never the input or the other
    # output (--report INPUT replaced the dataset with the report)
    to_stdout = str(out_path) == "-"
    if to_stdout and args.report == "-":
        raise UserError("-o - and --report - would both write to stdout; name a file for one")
    if not to_stdout:
        check_output_path(out_path, "-o", keep={"the input": src})
    if args.report and args.report != "-":
        check_output_path(args.report, "--report", keep={"the input": src} if to_stdout else
                          {"the input": src, "the output (-o)": out_path})
    if not NATIVE_AVAILABLE:
        err.print(f"note: {FALLBACK_NOTICE}", markup=False)
    silent = tokenless(items, args.tokenizer)
    if silent:
        first = silent[0]
        hint = " For non-English text use --tokenizer unicode." if args.tokenizer == "rouge" \
            else ""
        err.print(
            f"warning: {len(silent)} of {len(items)} items have no tokens under the "
            f"{args.tokenizer!r} tokenizer (e.g. {src}:{first.line}: "
            f"{short_text(first.text, 40)!r}); they "
            f"score 0 against everything and are never dropped as near duplicates.{hint}",
            markup=False)
    normalized = normalize_inputs(kind, items) if kind != "text" else 0
    started = time.perf_counter()
    bar = Progress(TextColumn("dedup"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=err, transient=True, disable=not err.is_terminal)
    with bar:
        task = bar.add_task("dedup", total=len(items))
        result = dedup(items, args.threshold, args.tokenizer,
                       progress=lambda n: bar.update(task, completed=n))
    writing = out_path
    replaced = _existing([p for p in (out_path, args.report) if p and str(p) != "-"])
    try:
        write_dataset(out_path, kind, result.kept)
        if args.report:
            writing = Path(args.report)
            write_report(args.report, result.dropped)
    except BrokenPipeError:
        raise  # the reader of stdout has gone (`| head`): see main
    except OSError as exc:
        flag = "-o" if writing is out_path else "--report"
        raise UserError(f"{writing}: cannot be written ({exc.strerror or exc}); choose another "
                        f"{flag}") from None
    took = time.perf_counter() - started
    counted = (f"kept {len(result.kept)} of {len(items)} ({len(result.dropped)} near "
               f"duplicate{'' if len(result.dropped) == 1 else 's'}, ")
    if result.instructions != len(items):  # rows that repeat an instruction: its instances
        dropped = result.instructions - result.kept_instructions
        what = "instructions" if args.field == "instruction" else f"distinct {args.field!r}"
        counted = (f"kept {result.kept_instructions} of {result.instructions} {what} "
                   f"({len(result.kept)} of {len(items)} rows: rows with the same {args.field} "
                   f"are one task's instances; "
                   f"{dropped} near duplicate{'' if dropped == 1 else 's'}, ")
    (err if "-" in (str(out_path), args.report) else text_console()).print(
        f"{counted}ROUGE-L > {args.threshold}) in {took:.1f}s; wrote "
        f"{'stdout' if to_stdout else out_path}"
        + (f"; {normalized} 'no input' placeholders written as empty inputs" if normalized
           else "")
        + (f"; report: {'stdout' if args.report == '-' else args.report}" if args.report
           else ""), markup=False)
    _say_replaced(replaced)
    return 0


# -- run ------------------------------------------------------------------------------------------

def run_request(args: argparse.Namespace) -> Any:
    from selfinstruct_tui.session import RunRequest

    return RunRequest(_flags(args), seeds=args.seeds, run_dir=args.run_dir,
                      argv=list(args.raw_argv), local_port=getattr(args, "local_port", None),
                      paused=bool(getattr(args, "paused", False)))


def cmd_run(args: argparse.Namespace) -> int:
    from selfinstruct_tui.engine.engine import Engine
    from selfinstruct_tui.engine.similarity import FALLBACK_NOTICE, NATIVE_AVAILABLE
    from selfinstruct_tui.session import prepare

    _check_theme(args, ui=not args.headless)  # before anything is created or started
    if not args.headless and _no_terminal(
            "selfinstruct run", "add --headless to print progress instead, or --detach to run "
            "it in the background"):
        return 2  # before anything is created or started
    session = prepare(run_request(args))
    out = text_console()
    _print_notes(session)
    if not NATIVE_AVAILABLE:
        err.print(f"note: {FALLBACK_NOTICE}", markup=False)
    try:
        try:
            store = session.open(lambda text: out.print(text, markup=False))
        except KeyboardInterrupt:  # while the embedded model starts or the model is looked up
            from selfinstruct_tui.engine.events import FinishReason

            err.print(_interrupted_at_start(session), markup=False)
            return FinishReason.STOPPED.exit_code
        engine = Engine(store, session.config, api_key=session.api_key,
                        base_url=session.base_url, routes=session.routes)
        if session.request.paused:
            engine.start_paused()
        try:
            if args.headless:
                from selfinstruct_tui.headless import run_headless

                return run_headless(engine, session, out, err)
            return _run_tui(args, engine, session)
        except KeyboardInterrupt:  # a third Ctrl-C: said as every other end is, exit 130
            from selfinstruct_tui.engine.events import FinishReason
            from selfinstruct_tui.headless import quit_note

            with contextlib.suppress(OSError):  # (stdout closed: the store still has it all)
                out.print(quit_note(engine, session), markup=False)
            return FinishReason.STOPPED.exit_code
    finally:
        session.close()


def _interrupted_at_start(session: Any) -> str:
    """What a Ctrl-C before the engine started says: nothing was sent; a resumed run is as it
    was, with the command that resumes it (it said only "interrupted")."""
    if session.resumed:
        return ("interrupted before the run started: no completion request was sent; the run "
                f"in {session.run_dir} is as it was\nresume with: {session.resume_command}")
    return ("interrupted before the run started: no completion request was sent and no run was "
            "created")


def _print_notes(session: Any) -> None:
    """What `prepare` found to say before the run starts (a resumed run's ignored settings)."""
    for note in session.notes:
        err.print(f"note: {note}", markup=False)


def _no_terminal(command: str, instead: str) -> bool:
    """True, after saying so, when stdin or stdout is not a terminal: the TUI would wait on
    one (it hung on `attach DIR </dev/null`)."""
    missing = [name for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout))
               if not stream.isatty()]
    if not missing:
        return False
    err.print(f"{command} opens the TUI, which needs a terminal ({' and '.join(missing)} "
              f"{'is' if len(missing) == 1 else 'are'} not one here): {instead}", markup=False)
    return True


def _check_theme(args: argparse.Namespace, ui: bool = True) -> None:
    """An unknown or broken theme (--theme, or the config file's `theme`) is an error before
    anything is created or started (ConfigError, exit 2), as other bad settings are; it was a
    notification in a UI that then used the default. Without a UI (`ui` False: --headless,
    --detach) only a --theme given is checked, as a bad --refresh is: the same command line
    is refused with or without --headless (a headless run took any name). The config file's
    theme is then left to the UI that attaches (`attach` checks it)."""
    from selfinstruct_tui.engine.config import load_user_config
    from selfinstruct_tui.tui.themes import choose_theme

    if not ui:
        if args.theme:
            choose_theme(args.theme, {})
        return
    try:
        settings: dict[str, Any] = load_user_config()
    except ConfigError:
        settings = {}  # (`run` refuses the file in prepare; `attach` goes on without it)
    choose_theme(args.theme, settings)


def _run_tui(args: argparse.Namespace, engine: Any, session: Any) -> int:
    from selfinstruct_tui.engine.batch import kept_note
    from selfinstruct_tui.engine.control import DETACH_EXIT
    from selfinstruct_tui.engine.events import FinishReason
    from selfinstruct_tui.engine.runs import spawn_detached
    from selfinstruct_tui.tui.app import create_app

    app = create_app(session.run_dir, engine=engine, refresh=args.refresh, theme=args.theme,
                     compact=args.compact, seeds_file=session.seeds_file,
                     embedded=session.config.uses_embedded,
                     resume_command=session.resume_command, notices=session.notes)
    try:
        app.run()
    finally:
        # Quitting never hangs on the worker: stop it (in-flight requests get the grace).
        engine.stop()
        if app.engine_thread is not None:
            app.engine_thread.join(timeout=session.config.stop_grace + 20)
    out = text_console()
    ended = engine.finished is not None and engine.finished.reason is not FinishReason.STOPPED
    if app.return_value == DETACH_EXIT and ended:
        # it ended on its own (target, a spend limit, an error) as the detach stopped it: a
        # background process would start it again, sending requests nobody asked for
        out.print("not moved to the background: the run ended on its own as it was detached",
                  markup=False)
    elif app.return_value == DETACH_EXIT:
        # `d`: the engine stopped cleanly; a background process resumes the same run, paused
        # if it was paused here (any pause: the user resumes it, by attaching and pressing p)
        session.release_lock()
        paused = engine.paused is not None
        proc = spawn_detached(session.run_dir, ["run", "--headless", "--run-dir",
                                                str(session.run_dir)]
                              + (["--paused"] if paused else []))
        out.print((f"the run stays paused in the background (pid {proc.pid}): nothing is sent "
                   "until you attach and press p" if paused else
                   f"the run continues in the background (pid {proc.pid})")
                  + f"; log: {session.run_dir / RUN_LOG}", markup=False)
        out.print(f"watch it: {command_line('attach', str(session.run_dir))}", markup=False)
        return 0
    finished = engine.finished
    if finished is None:
        return FinishReason.STOPPED.exit_code
    kept = [b for b in engine.store.batches(pending_only=True) if b.state == "submitted"]
    if kept and finished.reason is not FinishReason.TARGET:
        out.print(kept_note(len(kept), bool(session.config.batch_command)), markup=False)
    from selfinstruct_tui.headless import export_hint, session_spent

    spent = session_spent(engine, session.config)
    if finished.reason is FinishReason.TARGET:
        out.print(f"done: {finished.accepted}/{finished.target} machine tasks; {spent}\n"
                  f"{export_hint(str(session.run_dir))}", markup=False)
    else:
        pause = engine.paused
        why = finished.message or (f"it was paused: {pause.reason}"
                                   if pause is not None and pause.by_errors else "")
        out.print(f"{'stopped' if finished.reason is FinishReason.STOPPED else 'ended'} at "
                  f"{finished.accepted}/{finished.target} machine tasks"
                  + (f": {why}" if why else "") + f"; {spent}"
                  + f"\nresume with: {session.resume_command_after(why)}", markup=False)
    return FinishReason(finished.reason).exit_code


# -- detach / attach / runs ------------------------------------------------------------------------

def cmd_detach(args: argparse.Namespace) -> int:
    """Start the engine as a background process of its own session; return once it runs.

    Waits until the engine has written its running state (store created, heartbeat) or has
    exited; a failed start prints the end of its log, is recorded as `failed` for `runs`, and
    exits non-zero.
    """
    from selfinstruct_tui.engine.runs import (
        DETACH_START_TIMEOUT,
        log_tail,
        record_failed_start,
        remember_run,
        spawn_detached,
        wait_for_start,
    )
    from selfinstruct_tui.session import prepare

    _check_theme(args, ui=False)  # (the background process would refuse it, unseen)
    session = prepare(run_request(args))  # refuse bad settings here, in the foreground
    _print_notes(session)
    run_dir = session.run_dir
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # new directories only: 0700
    remember_run(run_dir)
    argv = [a for a in args.raw_argv if a != "--detach"]
    if not any(a == "--run-dir" or a.startswith("--run-dir=") for a in argv):
        argv += ["--run-dir", str(run_dir)]
    if "--headless" not in argv:
        argv.append("--headless")
    proc = spawn_detached(run_dir, argv)
    log_path = run_dir / RUN_LOG
    out = text_console()
    outcome = wait_for_start(run_dir, proc, lambda: out.print(
        "waiting for the background run to start ...", markup=False))
    if outcome == "running":
        out.print(f"{'resumed' if session.resumed else 'started'} run in the background "
                  f"(pid {proc.pid})" + (", paused: nothing is sent until you attach and press p"
                                         if session.request.paused else ""), markup=False)
        out.print(f"run directory: {run_dir}", markup=False)
        out.print(f"log: {log_path}", markup=False)
        out.print(f"watch it:  {command_line('attach', str(run_dir))}", markup=False)
        out.print(f"list runs: {command_line('runs')}", markup=False)
        return 0
    if outcome == "starting":
        out.print(f"the background run (pid {proc.pid}) is still starting after "
                  f"{DETACH_START_TIMEOUT:.0f}s; follow {log_path} and `{command_line('runs')}`",
                  markup=False)
        return 0
    code = proc.returncode
    if code == 0:
        out.print(f"the background run finished already (pid {proc.pid}); log: {log_path}",
                  markup=False)
        return 0
    tail = log_tail(log_path)
    record_failed_start(run_dir, proc.pid, code, tail)
    err.print(f"error: the background run failed to start (exit {code}). The end of "
              f"{log_path}:", markup=False)
    for line in tail:
        err.print(f"  {line}", markup=False)
    return code if code and code > 0 else 1


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from selfinstruct_tui.engine.runs import runs_by_activity

    table = Table(box=None, header_style="bold")
    for col in ("directory", "state", "pool", "target", "last activity"):
        table.add_column(col, overflow="fold")
    lines = []
    for run_dir, info in runs_by_activity():
        if info is None:
            row = (str(run_dir), "unreadable (not a run database)", "?", "?", "-")
        else:
            ago = "-" if not info.last_activity else _ago(time.time() - info.last_activity)
            row = (str(run_dir), info.shown_state, str(info.pool),
                   str(info.target if info.target is not None else "?"), ago)
        table.add_row(*row)
        lines.append("\t".join(row))
    out = text_console()
    if not lines:
        out.print(f"no runs yet: start one with `{command_line('run')}`", markup=False)
    elif out.is_terminal:
        out.print(f"{len(lines)} run{'s' if len(lines) != 1 else ''}, most recent activity "
                  "first", markup=False)
        out.print(table)
    else:  # scripts get one tab-separated line per run, never truncated, in the same order
        print("\n".join(["directory\tstate\tpool\ttarget\tlast activity", *lines]))
    return 0


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def cmd_attach(args: argparse.Namespace) -> int:
    from selfinstruct_tui.engine.control import check_owner

    run_dir = Path(args.run_dir) if args.run_dir else _pick_run()
    if run_dir is None:
        return 2
    check_owner(run_dir)
    _check_theme(args)
    if _no_terminal("selfinstruct attach", f"`{command_line('runs')}` lists runs and their state, "
                    f"{RUN_LOG} in the run directory is its progress"):
        return 2
    from selfinstruct_tui.engine.runs import left_attached_lines
    from selfinstruct_tui.tui.app import create_app

    app = create_app(run_dir, attach=True, refresh=args.refresh, theme=args.theme,
                     compact=args.compact)
    app.run()
    if app.return_value is not None:  # (None: the app failed; Textual said why)
        out = text_console()
        for line in left_attached_lines(run_dir):  # leaving never stops the run: say so
            out.print(line, markup=False)
    return 0


def _pick_run() -> Path | None:
    from selfinstruct_tui.engine.runs import runs_by_activity

    listed = runs_by_activity()
    if not listed:
        err.print(f"no runs to attach to: start one with `{command_line('run', '--detach')}`",
                  markup=False)
        return None
    out = text_console()
    out.print("most recent activity first:", markup=False)
    for n, (run_dir, info) in enumerate(listed, start=1):
        # each with its state, as `selfinstruct runs` shows it
        state = "unreadable" if info is None else \
            f"{info.shown_state}, pool {info.pool}/" \
            f"{info.target if info.target is not None else '?'}"
        out.print(f"{n:>3}. {run_dir}  ({state})", markup=False)
    if not sys.stdin.isatty():
        err.print(f"name the run: {command_line('attach')} RUN_DIR", markup=False)
        return None
    runs = [run_dir for run_dir, _ in listed]
    choice = input(f"attach to which run [1-{len(runs)}, default 1]? ").strip()
    try:
        return runs[int(choice or 1) - 1]
    except (ValueError, IndexError):
        err.print(f"not a run number: {choice!r}", markup=False)
        return None
