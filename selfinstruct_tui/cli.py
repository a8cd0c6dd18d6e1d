"""The `selfinstruct` command: builds an engine and drives it headless or hands it to the app."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from selfinstruct_tui import __version__
from selfinstruct_tui.engine.config import (
    RunConfig,
    build_config,
    load_user_config,
    merge_for_resume,
    new_run_dir,
)
from selfinstruct_tui.engine.errors import ConfigError, InputFileError, UserError
from selfinstruct_tui.engine.exports import FORMATS

err = Console(stderr=True, highlight=False, soft_wrap=True)

# Settings a small embedded model works better with (used unless the user set them).
EMBEDDED_DEFAULTS = {"concurrency": 2, "generation_max_tokens": 384, "instance_max_tokens": 200}


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", metavar="PATH", help="seed file (default: the bundled seed set)")
    p.add_argument("--run-dir", metavar="DIR", help="run directory; an existing one is resumed")
    p.add_argument("--target", type=int, metavar="N", help="machine-generated tasks to reach")
    p.add_argument("--model", metavar="NAME", help="model name at the endpoint")
    p.add_argument("--base-url", metavar="URL", dest="base_url",
                   help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--api", choices=["completions", "chat"], help="completions (base models, "
                   "the paper's setting) or chat (chat models)")
    p.add_argument("--concurrency", type=int, metavar="C", help="requests in flight (default 8)")
    p.add_argument("--random-seed", type=int, metavar="S", dest="random_seed")
    p.add_argument("--prompts-per-round", type=int, dest="prompts_per_round", metavar="P")
    p.add_argument("--threshold", type=float, help="ROUGE-L near-duplicate threshold (0.7)")
    p.add_argument("--tokenizer", choices=["rouge", "unicode"],
                   help="similarity tokenizer; 'unicode' dedupes non-English text")
    p.add_argument("--allow-non-ascii", dest="filter_non_ascii", action="store_const",
                   const=False, help="keep instructions that start with a non-ASCII character")
    p.add_argument("--rpm", type=float, dest="requests_per_minute", help="requests per minute")
    p.add_argument("--tpm", type=float, dest="tokens_per_minute", help="tokens per minute")
    p.add_argument("--timeout", type=float, dest="request_timeout", help="seconds per request")
    p.add_argument("--max-retries", type=int, dest="max_retries")
    p.add_argument("--price-in", type=float, dest="price_input_per_1k",
                   help="price per 1K input tokens")
    p.add_argument("--price-out", type=float, dest="price_output_per_1k",
                   help="price per 1K output tokens")
    p.add_argument("--key-env", dest="key_env", help="environment variable with the API key")
    p.add_argument("--max-cost", type=float, dest="max_cost", metavar="USD",
                   help="stop cleanly when the run has cost this much (needs --price-in/out)")
    p.add_argument("--max-tokens", type=int, dest="max_tokens", metavar="N",
                   help="stop cleanly when the run has used this many tokens in all")
    p.add_argument("--context-window", type=int, dest="context_window", metavar="N",
                   help="the model's context window in tokens (default: learned from the "
                   "endpoint's first context-length error)")
    p.add_argument("--stop-grace", type=float, dest="stop_grace", metavar="SECONDS",
                   help="after a stop, how long requests in flight may finish (10)")
    p.add_argument("--structured-output", choices=["auto", "on", "off"],
                   dest="structured_output", help="chat: JSON-schema answers (auto: where the "
                   "endpoint supports them)")
    p.add_argument("--max-fruitless-requests", type=int, dest="max_fruitless_requests",
                   metavar="N", help="pause after this many requests in a row that added "
                   "nothing to the pool (40; 0: never)")
    p.add_argument("--model-path", dest="model_path", metavar="FILE.gguf",
                   help="serve this GGUF with the embedded llama.cpp server")
    p.add_argument("--local-port", type=int, dest="local_port", help=argparse.SUPPRESS)
    p.add_argument("--headless", action="store_true", help="no TUI: print progress")
    p.add_argument("--theme", help="TUI theme (ember, paper, high-contrast or your own)")
    p.add_argument("--refresh", type=float, help="TUI refresh interval in seconds (0.5)")
    p.add_argument("--compact", action="store_true", help="layout for 80x24 terminals")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (survives the terminal); see `selfinstruct attach`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfinstruct",
        description="Generate instruction-tuning data with the Self-Instruct method.")
    parser.add_argument("--version", action="version", version=f"selfinstruct-tui {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a run, or resume the one in --run-dir")
    _add_run_flags(run)

    attach = sub.add_parser("attach", help="open the TUI on a run another process drives")
    attach.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    attach.add_argument("--refresh", type=float, help="screen refresh interval (0.5 s)")
    attach.add_argument("--compact", action="store_true", help="layout for 80x24 terminals")
    attach.add_argument("--theme")

    sub.add_parser("runs", help="list runs: state, pool size, last activity")

    export = sub.add_parser("export", help="export a run's tasks")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("-o", "--output", metavar="FILE")

    seeds = sub.add_parser("seeds", help="seed file tools")
    seeds_sub = seeds.add_subparsers(dest="seeds_command", required=True)
    check = seeds_sub.add_parser("check", help="validate a seed file and summarise it")
    check.add_argument("path", metavar="PATH")

    dedup = sub.add_parser("dedup", help="drop near-duplicate instructions from a dataset")
    dedup.add_argument("input", metavar="INPUT")
    dedup.add_argument("-o", "--output", metavar="OUTPUT")
    dedup.add_argument("--threshold", type=float, default=0.7)
    dedup.add_argument("--field", default="instruction")
    dedup.add_argument("--report", metavar="FILE")
    dedup.add_argument("--tokenizer", choices=["rouge", "unicode"], default="rouge")
    return parser


RUN_FLAG_NAMES = ("target", "model", "base_url", "api", "concurrency", "random_seed",
                  "prompts_per_round", "threshold", "tokenizer", "filter_non_ascii",
                  "requests_per_minute", "tokens_per_minute", "request_timeout", "max_retries",
                  "price_input_per_1k", "price_output_per_1k", "key_env", "model_path",
                  "max_cost", "max_tokens", "context_window", "stop_grace", "structured_output",
                  "max_fruitless_requests")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in RUN_FLAG_NAMES
            if getattr(args, name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SELFINSTRUCT_LOG", "WARNING"))
    if os.environ.get(DETACHED_ENV):
        # A detached engine outlives the terminal that started it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)  # `--detach` re-runs them
    try:
        if args.command == "run":
            return cmd_detach(args) if args.detach else cmd_run(args)
        if args.command == "attach":
            return cmd_attach(args)
        if args.command == "runs":
            return cmd_runs(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "seeds":
            return cmd_seeds_check(args)
        if args.command == "dedup":
            from selfinstruct_tui.engine.dedup import cmd_dedup

            return cmd_dedup(args)
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
    return 2


# -- seeds ----------------------------------------------------------------------------------------

def cmd_seeds_check(args: argparse.Namespace) -> int:
    from selfinstruct_tui.engine.records import read_utf8
    from selfinstruct_tui.engine.seeds import parse_seeds, summarize
    from selfinstruct_tui.engine.similarity import make_index

    tasks, fmt = parse_seeds(args.path, read_utf8(args.path))
    summary = summarize(tasks, fmt)
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"{args.path}: OK ({fmt} format)", markup=False)
    out.print(f"  tasks:           {summary.count}")
    out.print(f"  instances:       {summary.instances}")
    out.print(f"  classification:  {summary.classification} ({summary.classification_share:.1%})")
    out.print(f"  without input:   {summary.without_input} ({summary.without_input_share:.1%})")
    index = make_index()
    close = []
    for task in tasks:
        hit = index.query(task.instruction, k=1).most_similar
        if hit is not None and hit.score > 0.7:
            close.append(f"  near-duplicate seeds (ROUGE-L {hit.score:.2f}): {task.id} ~ {hit.key}")
        index.add(task.id, task.instruction)
    for warning in summary.warnings:
        out.print(f"  warning: {warning}", markup=False)
    for line in close:
        out.print(line, markup=False)
    return 0


# -- export ---------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    from selfinstruct_tui.engine.exports import export_run
    from selfinstruct_tui.engine.store import is_run_dir

    if not is_run_dir(args.run_dir):
        raise UserError(f"{args.run_dir}: not a run directory (no run.sqlite in it)")
    path, count = export_run(args.run_dir, args.format, args.output)
    Console(highlight=False, soft_wrap=True).print(f"wrote {count} rows ({args.format}) to {path}", markup=False)
    return 0


# -- run ------------------------------------------------------------------------------------------

def prepare_run(args: argparse.Namespace) -> tuple[Path, RunConfig, bool]:
    """Resolve the run directory and config; a changed config on resume is refused.

    `--seeds` on resume is accepted when the file holds the run's seed set (as it started or
    as last edited); a different set is refused with what differs.
    """
    from selfinstruct_tui.engine.store import RunStore, is_run_dir

    flags = _flags(args)
    if args.run_dir and is_run_dir(args.run_dir):
        store = RunStore(args.run_dir)
        try:
            stored = store.config()
            if stored is not None:
                cfg, refused = merge_for_resume(stored, flags)
                if args.seeds:
                    why = _seeds_differ(Path(args.seeds), store)
                    if why:
                        refused.append(why)
        finally:
            store.close()
        if stored is not None:
            if refused:
                raise ConfigError(
                    f"{args.run_dir} holds a run with different settings, so it cannot resume "
                    "with this command:\n  " + "\n  ".join(refused) +
                    "\nLeave these flags out to resume as it was, or start a new run with another "
                    "--run-dir. (Safe to change on resume: target, concurrency, rate limits, "
                    "timeouts, prices, spend limits, base URL.)")
            return Path(args.run_dir), cfg, True
        # A run directory without a config is one whose start failed: start it afresh.
    file_settings = load_user_config()
    explicit = {**file_settings, **flags}
    cfg = build_config(file_settings, flags)
    if cfg.uses_embedded:
        for key, value in EMBEDDED_DEFAULTS.items():
            if key not in explicit:
                setattr(cfg, key, value)
        if not cfg.model:
            cfg.model = Path(cfg.model_path).stem if cfg.model_path else "gemma-3-270m"
        if cfg.api == "chat" and "api" not in explicit:
            cfg.api = "completions"
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(cfg.model or "run")
    return run_dir, cfg, False


def _seeds_differ(path: Path, store: Any) -> str | None:
    """Why the seed file cannot resume this run, or None when it holds the run's seed set."""
    from selfinstruct_tui.engine.seeds import load_seeds, seed_difference, seed_fingerprint

    file_tasks = load_seeds(path)
    run_tasks = [t.to_seed() for t in store.tasks(status="active", origin="seed")]
    why = seed_difference(file_tasks, run_tasks)
    if why is None or seed_fingerprint(file_tasks) == store.get_meta("seeds_original"):
        return None
    return (f"seeds: {path} is not this run's seed set ({why}). Leave out --seeds to resume "
            "with the run's own seeds (edit them in the TUI, key e)")


def resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    """The exact command that resumes this run: the one given, with --run-dir and without
    --detach."""
    argv = [a for a in getattr(args, "raw_argv", ["run"]) if a != "--detach"]
    if not any(a == "--run-dir" or a.startswith("--run-dir=") for a in argv):
        argv += ["--run-dir", str(run_dir)]
    return "selfinstruct " + shlex.join(argv)


def _discover_model(base_url: str, api_key: str) -> str:
    """With no --model: use the endpoint's only model (vLLM, llama.cpp, Ollama list theirs)."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=10,
                           max_retries=1)
    try:
        models = [m.id for m in client.models.list()]
    except openai.AuthenticationError:
        raise UserError(f"{base_url} refused the API key: set OPENAI_API_KEY (or the key_env "
                        "setting)") from None
    except openai.APIError as exc:
        raise UserError(f"cannot list the models at {base_url} ({exc.__class__.__name__}); "
                        "check --base-url, or name the model with --model") from None
    finally:
        client.close()
    if len(models) == 1:
        return models[0]
    if not models:
        raise UserError(f"{base_url} lists no models; name one with --model")
    shown = ", ".join(models[:10]) + (" ..." if len(models) > 10 else "")
    raise UserError(f"{base_url} serves several models ({shown}); choose one with --model")


def cmd_run(args: argparse.Namespace) -> int:
    from selfinstruct_tui.engine.seeds import bundled_seeds_path, load_seeds
    from selfinstruct_tui.engine.store import RunStore, seed_tasks_to_pool

    run_dir, cfg, resumed = prepare_run(args)
    seeds = None
    if not resumed:
        seeds_path = Path(args.seeds) if args.seeds else bundled_seeds_path()
        seeds = load_seeds(seeds_path)  # bad seeds fail before anything is created
    api_key = os.environ.get(cfg.key_env, "")
    out = Console(highlight=False, soft_wrap=True)
    from selfinstruct_tui.engine.similarity import FALLBACK_NOTICE, NATIVE_AVAILABLE

    if not NATIVE_AVAILABLE:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"note: {FALLBACK_NOTICE}", markup=False)
    server = None
    base_url = cfg.base_url
    if cfg.uses_embedded:
        from selfinstruct_tui.engine.local_model import LocalModelServer

        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        server = LocalModelServer(run_dir, model_path=cfg.model_path or None,
                                  port=getattr(args, "local_port", None))
        out.print(f"starting the embedded model ({cfg.model}, {server.threads} threads); "
                  f"log: {server.log_path}", markup=False)
        base_url = server.start()
    try:
        if not cfg.model:
            cfg.model = _discover_model(base_url, api_key)
        store = RunStore(run_dir)
        try:
            if not resumed:
                from selfinstruct_tui.engine.seeds import seed_fingerprint

                assert seeds is not None
                remember_run(run_dir)
                store.save_config(cfg)
                store.set_meta("seeds_path", str(Path(args.seeds).resolve()) if args.seeds
                               else "bundled")
                store.set_meta("seeds_original", seed_fingerprint(seeds))
                store.replace_seeds(seed_tasks_to_pool(seeds, 1))
            else:
                store.save_config(cfg)
            return _drive(args, store, cfg, api_key, base_url, server, out)
        finally:
            store.close()
    finally:
        if server is not None:
            server.stop()


def _drive(args: argparse.Namespace, store: Any, cfg: RunConfig, api_key: str, base_url: str,
           server: Any, out: Console) -> int:
    from selfinstruct_tui.engine import events as ev
    from selfinstruct_tui.engine.engine import Engine

    engine = Engine(store, cfg, api_key=api_key, base_url=base_url)
    resume = resume_command(args, store.run_dir)
    if not args.headless:
        return _run_tui(args, store, cfg, engine, resume)
    from selfinstruct_tui.headless import HeadlessPrinter

    printer = HeadlessPrinter(out, embedded=cfg.uses_embedded,
                              tokens_per_second=lambda: engine.tokens_per_second,
                              resume_command=resume, priced=bool(
                                  cfg.price_input_per_1k or cfg.price_output_per_1k))
    engine.bus.subscribe(printer)

    def on_event(event: ev.Event) -> None:
        # Headless has nobody to press "resume": a run paused by errors or by a spend guard
        # stops and says how to resume; the exit code (3) tells scripts it did not finish.
        if isinstance(event, ev.Paused) and event.by_errors:
            engine.stop(ev.FinishReason.FAILING, event.reason)

    engine.bus.subscribe(on_event)
    if server is not None:
        def watch_server(event: ev.Event) -> None:
            if isinstance(event, ev.RequestError) and event.kind == "connection":
                why = server.check_alive()
                if why:
                    engine.stop(ev.FinishReason.FAILING, why)

        engine.bus.subscribe(watch_server)
    signals = [0]

    def on_signal(signum: int, frame: Any) -> None:
        # First: stop (in flight gets the grace); second: abandon in flight now; third: quit.
        signals[0] += 1
        if signals[0] == 1:
            engine.stop()
        elif signals[0] == 2:
            printer.note("stopping now: abandoning the requests in flight")
            engine.stop_now()
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_signal)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        finished = engine.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        printer.close()
    reason = ev.FinishReason(finished.reason)
    if reason in (ev.FinishReason.FAILING, ev.FinishReason.ERROR):
        err.print(f"error: {finished.message}", markup=False)
        err.print(f"The run is saved; resume it with: {resume}", markup=False)
    return reason.exit_code


def _run_tui(args: argparse.Namespace, store: Any, cfg: RunConfig, engine: Any,
             resume: str) -> int:
    from selfinstruct_tui.engine.events import FinishReason
    from selfinstruct_tui.tui.app import create_app

    seeds_path = store.get_meta("seeds_path")
    app = create_app(
        store.run_dir, engine=engine, refresh=args.refresh, theme=args.theme,
        compact=args.compact,
        seeds_file=seeds_path if seeds_path and seeds_path != "bundled" else None,
        embedded=cfg.uses_embedded, resume_command=resume)
    try:
        app.run()
    finally:
        # Quitting never hangs on the worker: stop it (in-flight requests get the grace).
        engine.stop()
        if app.engine_thread is not None:
            app.engine_thread.join(timeout=cfg.stop_grace + 20)
    from selfinstruct_tui.engine.control import DETACH_EXIT

    if app.return_value == DETACH_EXIT:
        # `d`: the engine stopped cleanly; a background process resumes the same run.
        proc = spawn_detached(store.run_dir, ["run", "--headless", "--run-dir",
                                              str(store.run_dir)])
        out = Console(highlight=False, soft_wrap=True)
        out.print(f"the run continues in the background (pid {proc.pid}); log: "
                  f"{store.run_dir / RUN_LOG}", markup=False)
        out.print(f"watch it: selfinstruct attach {store.run_dir}", markup=False)
        return 0
    finished = engine.finished
    if finished is None:
        return FinishReason.STOPPED.exit_code
    if finished.reason is not FinishReason.TARGET:
        Console(highlight=False, soft_wrap=True).print(
            f"{'stopped' if finished.reason is FinishReason.STOPPED else 'ended'} at "
            f"{finished.accepted}/{finished.target} machine tasks"
            + (f": {finished.message}" if finished.message else "")
            + f"\nresume with: {resume}", markup=False)
    return FinishReason(finished.reason).exit_code


# -- detach / attach / runs ------------------------------------------------------------------------

DETACHED_ENV = "SELFINSTRUCT_DETACHED"

RUN_LOG = "run.log"


def registry_path() -> Path:
    from selfinstruct_tui.engine.config import user_data_dir

    return user_data_dir() / "runs.txt"


def remember_run(run_dir: Path) -> None:
    """Runs outside the default folder are listed by `selfinstruct runs` too."""
    path = registry_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known = set(path.read_text().splitlines()) if path.exists() else set()
        entry = str(run_dir.resolve())
        if entry not in known:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(entry + "\n")
    except OSError:
        pass


def known_runs() -> list[Path]:
    from selfinstruct_tui.engine.config import runs_root
    from selfinstruct_tui.engine.store import is_run_dir

    found: dict[str, Path] = {}
    root = runs_root()
    if root.is_dir():
        for child in root.iterdir():
            if is_run_dir(child):
                found[str(child.resolve())] = child
    try:
        for line in registry_path().read_text().splitlines():
            if line and is_run_dir(line):
                found.setdefault(str(Path(line).resolve()), Path(line))
    except OSError:
        pass
    return sorted(found.values(), key=lambda p: p.stat().st_mtime)


def spawn_detached(run_dir: Path, argv: list[str]) -> Any:
    """`selfinstruct run ARGV` in its own session, SIGHUP ignored, output to the run's log.

    Returns the `subprocess.Popen`."""
    import subprocess

    log_path = run_dir / RUN_LOG
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "selfinstruct_tui", *argv], stdin=subprocess.DEVNULL,
            stdout=fd, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, DETACHED_ENV: "1", "NO_COLOR": "1"}, close_fds=True)
    finally:
        os.close(fd)
    (run_dir / "engine.pid").write_text(f"{proc.pid}\n")
    return proc


DETACH_START_TIMEOUT = 600.0  # seconds; the embedded model's own start is bounded below this


def cmd_detach(args: argparse.Namespace) -> int:
    """Start the engine as a background process of its own session; return once it runs.

    Waits until the engine has written its running state (store created, heartbeat) or has
    exited; a failed start prints the end of its log, is recorded as `failed` for `runs`, and
    exits non-zero.
    """
    run_dir, cfg, resumed = prepare_run(args)  # refuse bad settings here, in the foreground
    if not resumed:
        from selfinstruct_tui.engine.seeds import bundled_seeds_path, load_seeds

        load_seeds(Path(args.seeds) if args.seeds else bundled_seeds_path())
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(run_dir, 0o700)
    remember_run(run_dir)
    argv = [a for a in args.raw_argv if a != "--detach"]
    if not any(a == "--run-dir" or a.startswith("--run-dir=") for a in argv):
        argv += ["--run-dir", str(run_dir)]
    if "--headless" not in argv:
        argv.append("--headless")
    proc = spawn_detached(run_dir, argv)
    log_path = run_dir / RUN_LOG
    out = Console(highlight=False, soft_wrap=True)
    outcome = _wait_for_start(run_dir, proc, out)
    if outcome == "running":
        out.print(f"{'resumed' if resumed else 'started'} run in the background "
                  f"(pid {proc.pid})", markup=False)
        out.print(f"run directory: {run_dir}", markup=False)
        out.print(f"log: {log_path}", markup=False)
        out.print(f"watch it:  selfinstruct attach {run_dir}", markup=False)
        out.print("list runs: selfinstruct runs", markup=False)
        return 0
    if outcome == "starting":
        out.print(f"the background run (pid {proc.pid}) is still starting after "
                  f"{DETACH_START_TIMEOUT:.0f}s; follow {log_path} and `selfinstruct runs`",
                  markup=False)
        return 0
    code = proc.returncode
    if code == 0:
        out.print(f"the background run finished already (pid {proc.pid}); log: {log_path}",
                  markup=False)
        return 0
    tail = _log_tail(log_path)
    _record_failed_start(run_dir, proc.pid, code, tail)
    err.print(f"error: the background run failed to start (exit {code}). The end of "
              f"{log_path}:", markup=False)
    for line in tail:
        err.print(f"  {line}", markup=False)
    return code if code and code > 0 else 1


def _wait_for_start(run_dir: Path, proc: Any, out: Console) -> str:
    """"running", "exited" or "starting" (still starting at the timeout)."""
    from selfinstruct_tui.engine.store import RunStore, is_run_dir

    started = time.monotonic()
    told = False
    while time.monotonic() - started < DETACH_START_TIMEOUT:
        if proc.poll() is not None:
            return "exited"
        if is_run_dir(run_dir):
            try:
                store = RunStore(run_dir, readonly=True)
                try:
                    state = store.get_meta("state") or {}
                finally:
                    store.close()
            except Exception:  # being created right now: look again
                state = {}
            if state.get("pid") == proc.pid and state.get("state") not in (None, "starting"):
                return "running"
        if not told and time.monotonic() - started > 2:
            told = True
            out.print("waiting for the background run to start ...", markup=False)
        time.sleep(0.1)
    return "starting"


def _log_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ["(no log)"]
    return [line for line in text.splitlines() if line.strip()][-lines:] or ["(empty log)"]


def _record_failed_start(run_dir: Path, pid: int, code: int | None, tail: list[str]) -> None:
    """Mark the run `failed` so that `runs` lists it (a store is made if none exists)."""
    from selfinstruct_tui.engine.store import RunStore

    try:
        store = RunStore(run_dir)
        try:
            store.set_meta("state", {"state": "failed", "pid": pid, "ts": time.time(),
                                     "reason": tail[-1] if tail else f"exit {code}",
                                     "by_errors": True, "exit_code": code})
        finally:
            store.close()
    except UserError:
        pass


def cmd_runs(args: argparse.Namespace) -> int:
    import time as _time

    from rich.table import Table

    from selfinstruct_tui.engine.control import run_status
    from selfinstruct_tui.engine.store import RunStore

    table = Table(box=None, header_style="bold")
    for col in ("directory", "state", "pool", "target", "last activity"):
        table.add_column(col, overflow="fold")
    lines = []
    for run_dir in known_runs():
        try:
            store = RunStore(run_dir, readonly=True)
        except UserError:
            continue
        try:
            state, pid = run_status(store)
            cfg = store.config()
            pool = store.count_tasks("machine")
            meta = store.get_meta("state") or {}
            ts = meta.get("ts")
        finally:
            store.close()
        shown = f"{state} (pid {pid})" if state in ("running", "paused", "stopping") else state
        if state == "failed" and meta.get("reason"):
            shown = f"failed: {str(meta['reason'])[:60]}"
        elif state == "stopped" and meta.get("finish_reason") in ("failing", "limit"):
            shown = "stopped: " + ("endpoint failing or paused by a spend guard"
                                   if meta["finish_reason"] == "failing" else "spend limit")
        ago = "-" if not ts else _ago(_time.time() - ts)
        row = (str(run_dir), shown, str(pool), str(cfg.target if cfg else "?"), ago)
        table.add_row(*row)
        lines.append("\t".join(row))
    out = Console(highlight=False, soft_wrap=True)
    if not lines:
        out.print("no runs yet: start one with `selfinstruct run`", markup=False)
    elif out.is_terminal:
        out.print(table)
    else:  # scripts get one tab-separated line per run, never truncated
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
    from selfinstruct_tui.tui.app import create_app

    create_app(run_dir, attach=True, refresh=args.refresh, theme=args.theme,
               compact=args.compact).run()
    return 0


def _pick_run() -> Path | None:
    runs = known_runs()
    if not runs:
        err.print("no runs to attach to: start one with `selfinstruct run --detach`",
                  markup=False)
        return None
    out = Console(highlight=False, soft_wrap=True)
    for n, run_dir in enumerate(runs, start=1):
        out.print(f"{n:>3}. {run_dir}", markup=False)
    if not sys.stdin.isatty():
        err.print("name the run: selfinstruct attach RUN_DIR", markup=False)
        return None
    choice = input(f"attach to which run [1-{len(runs)}, default {len(runs)}]? ").strip()
    try:
        return runs[int(choice or len(runs)) - 1]
    except (ValueError, IndexError):
        err.print(f"not a run number: {choice!r}", markup=False)
        return None
