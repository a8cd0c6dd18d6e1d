"""What a run needs before its engine starts: the config (new, or the stored one on resume),
the seeds, the endpoint (a remote one, or the embedded llama.cpp server), the model and the store.

`prepare(request)` checks everything that can be checked without the endpoint, so bad input fails
before anything is created; `Session.open()` then starts the embedded model if any, discovers the
model name, and creates or reopens the run's store. Errors are `UserError`s naming the setting.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct_tui.engine.config import (
    DEFAULT_KEY_ENV,
    FLAGS,
    OFFLINE_URL,
    SAFE_ON_RESUME,
    RunConfig,
    build_config,
    file_ignored_on_resume,
    load_user_config,
    merge_for_resume,
    new_run_dir,
)
from selfinstruct_tui.engine.control import RunState
from selfinstruct_tui.engine.errors import ConfigError, InputFileError, UserError
from selfinstruct_tui.engine.events import USER_PAUSE
from selfinstruct_tui.engine.invocation import command_line, with_command
from selfinstruct_tui.engine.runs import (
    LOCK_FILE,
    RunLock,
    busy,
    lock_holder,
    remember_run,
    unfit_for_a_new_run,
)
from selfinstruct_tui.engine.seeds import (
    SeedTask,
    bundled_seeds_path,
    instruction_key,
    load_seeds,
    seed_difference,
    seed_fingerprint,
    seed_from_record,
)
from selfinstruct_tui.engine.store import RunStore, is_run_dir, seed_tasks_to_pool

PATH_FLAGS = ("--seeds", "--run-dir", "--model-path")
# Settings a small embedded model works better with (used unless the user set them).
EMBEDDED_DEFAULTS = {"concurrency": 2, "generation_max_tokens": 384, "instance_max_tokens": 200}


@dataclass
class RunRequest:
    """What the user asked for: run settings given as flags, the seed file, the directory, and
    the command line as typed (`argv`, for the resume command)."""

    flags: dict[str, Any]
    seeds: str | None = None
    run_dir: str | None = None
    argv: list[str] = field(default_factory=lambda: ["run"])
    local_port: int | None = None
    paused: bool = False  # --paused: the engine starts paused (Engine.start_paused)


@dataclass
class Session:
    run_dir: Path
    config: RunConfig
    resumed: bool
    request: RunRequest
    seeds: list[SeedTask] | None = None  # a new run's seed set
    api_key: str = field(default="", repr=False)
    base_url: str = ""
    server: Any = None  # the embedded model's LocalModels
    routes: dict[str, str] = field(default_factory=dict)  # request kind -> its process
    store: RunStore | None = None
    lock: RunLock | None = None
    notes: list[str] = field(default_factory=list)  # to say before the run starts

    @property
    def resume_command(self) -> str:
        """The exact command that resumes this run: the one given, with --run-dir and without
        --detach and --paused."""
        return self.command_without()

    def resume_command_after(self, message: str) -> str:
        """The command that resumes the run after it stopped with `message`: the resume command,
        or, when an endpoint refused a field of --extra-body, the same without that field (the
        command as given repeated the refusal), or one that takes no seed, with NO_SEED_FLAG."""
        from selfinstruct_tui.engine.llm import (
            NO_SEED_FLAG,
            refused_extra_body_field,
            seed_refused,
            without_field,
        )

        if seed_refused(message):
            given = NO_SEED_FLAG in self.request.argv
            return self.resume_command + ("" if given else f" {NO_SEED_FLAG}")
        field_ = refused_extra_body_field(message)
        if field_ is None:
            return self.resume_command
        rest = without_field(self.config.extra_body, field_)
        return (f"{self.command_without('--extra-body')} --extra-body "
                f"{shlex.quote(json.dumps(rest, ensure_ascii=False))}")

    @property
    def resume_command_without_limits(self) -> str:
        """The resume command without --max-cost / --max-tokens (to be given higher)."""
        return self.command_without("--max-cost", "--max-tokens")

    def command_without(self, *flags: str) -> str:
        argv: list[str] = []
        skip = False
        for arg in self.request.argv:
            if skip:
                skip = False
                continue
            if arg in flags:
                skip = True
                continue
            if any(arg.startswith(f + "=") for f in flags):
                continue
            argv.append(arg)
        # resuming means going on: not again in the background, nor paused
        argv = [a for a in argv if a not in ("--detach", "--paused")]
        # Paths become absolute: the command must work from any directory.
        for n, arg in enumerate(argv):
            for flag in PATH_FLAGS:
                if arg == flag and n + 1 < len(argv):
                    argv[n + 1] = str(Path(argv[n + 1]).resolve())
                elif arg.startswith(flag + "="):
                    argv[n] = f"{flag}={Path(arg.split('=', 1)[1]).resolve()}"
        if not any(a == "--run-dir" or a.startswith("--run-dir=") for a in argv):
            argv += ["--run-dir", str(self.run_dir.resolve())]
        return command_line(*argv)

    def open(self, say: Callable[[str], None]) -> RunStore:
        """Start the embedded model (if any), find the model name, create or reopen the store."""
        created = not self.run_dir.exists()
        self.lock = RunLock(self.run_dir)
        self.lock.acquire()  # before anything runs: one engine per run
        try:
            return self._open(say)
        except BaseException:
            if created:  # a new run that could not start leaves no folder holding only a lock
                self.release_lock()
                with contextlib.suppress(OSError):
                    if [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
                        (self.run_dir / LOCK_FILE).unlink()
                        self.run_dir.rmdir()
            raise

    def _open(self, say: Callable[[str], None]) -> RunStore:
        cfg = self.config
        self.api_key = os.environ.get(cfg.key_env, "")
        self.base_url = cfg.base_url
        if cfg.uses_embedded:
            from selfinstruct_tui.engine.local_model import LocalModels

            self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.server = LocalModels(self.run_dir, count=cfg.embedded_servers,
                                      concurrency=cfg.concurrency,
                                      model_path=cfg.model_path or None,
                                      port=self.request.local_port)
            threads = self.server.threads
            threads_said = f"{threads} thread{'s' if threads != 1 else ''}"
            processes = f"{cfg.embedded_servers} processes, {threads_said} each" \
                if cfg.embedded_servers > 1 else threads_said
            say(f"starting the embedded model ({cfg.model}, {processes}); "
                f"log: {self.server.log_path}")
            self.routes = self.server.start()
            self.base_url = self.routes["generate"]
        if not cfg.model and len(cfg.endpoints) > 1:
            cfg.model = discover_pool_model(cfg.endpoint_list())
        elif not cfg.model:
            cfg.model = discover_model(self.base_url, self.api_key, cfg.key_env)
        store = self.store = RunStore(self.run_dir)
        store.save_config(cfg)
        if not self.resumed:
            assert self.seeds is not None
            remember_run(self.run_dir)
            store.set_meta("seeds_path", str(Path(self.request.seeds).resolve())
                           if self.request.seeds else "bundled")
            store.set_meta("seeds_original", seed_fingerprint(self.seeds))
            store.replace_seeds(seed_tasks_to_pool(self.seeds, 1))
        return store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.release_lock()

    def release_lock(self) -> None:
        """Let another process drive the run (the TUI's handover to a detached process)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def seeds_file(self) -> str | None:
        """The seed file a new run started from (for write-back from the seed editor)."""
        path = self.store.get_meta("seeds_path") if self.store is not None else None
        return path if path and path != "bundled" else None


def prepare(request: RunRequest) -> Session:
    """Resolve the run directory, the config and the seeds; refuse what cannot work.

    On resume a changed config is refused unless the change is safe, and `--seeds` is accepted
    when the file holds the run's seed set (as it started or as last edited). Raises
    ConfigError (exit 2) naming each refused setting, InputFileError for bad seed files,
    UserError for an SSL_CERT_FILE that holds no CA certificates.
    """
    from selfinstruct_tui.engine.llm import ssl_context

    ssl_context()  # a bad SSL_CERT_FILE is named here, before anything is created
    flags = request.flags
    if request.run_dir and not is_run_dir(request.run_dir):
        unfit = unfit_for_a_new_run(Path(request.run_dir))
        if unfit:
            raise ConfigError(unfit)
    elif request.run_dir:  # a run's directory: it resumes
        holder = lock_holder(Path(request.run_dir))
        if holder is not None:
            raise busy(Path(request.run_dir), holder)
        store = RunStore(request.run_dir)
        try:
            stored = store.config()
            seeds_path = store.get_meta("seeds_path")
            last_state = store.get_meta("state") or {}
            refused: list[str] = []
            if stored is not None:
                cfg, refused = merge_for_resume(stored, flags)
                if request.seeds:
                    why = seeds_differ(Path(request.seeds), store)
                    if why:
                        refused.append(why)
                elsewhere = None if refused else batches_pending_elsewhere(store, cfg)
                if elsewhere:  # a setting that is safe to change, but not while this job waits
                    raise ConfigError(f"{request.run_dir} cannot resume with this command: "
                                      f"{elsewhere}")
        finally:
            store.close()
        if stored is not None:
            if refused:
                raise ConfigError(
                    f"{request.run_dir} holds a run with different settings, so it cannot "
                    "resume with this command:\n  " + "\n  ".join(refused) +
                    "\nLeave these flags out to resume as it was, or start a new run with "
                    "another --run-dir. (Safe to change on resume: "
                    + ", ".join(sorted(FLAGS[k] for k in SAFE_ON_RESUME if k in FLAGS))
                    + "; in the config file also " + ", ".join(
                        sorted(k for k in SAFE_ON_RESUME if k not in FLAGS)) + ".)")
            return Session(Path(request.run_dir), cfg, True, request,
                           notes=file_ignored_on_resume(
                               cfg, flags, seeds_path=None if request.seeds else seeds_path)
                           + unset_key_notes(cfg) + left_paused_notes(last_state, request))
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
    run_dir = Path(request.run_dir) if request.run_dir else new_run_dir(cfg.model or "run")
    # `seeds = "PATH"` in the config file is the default seed file of new runs.
    from_file = not request.seeds and bool(file_settings.get("seeds"))
    if from_file:
        request.seeds = str(Path(file_settings["seeds"]).expanduser())
    # Bad seeds fail here, before anything is created.
    try:
        seeds = load_seeds(Path(request.seeds) if request.seeds else bundled_seeds_path())
    except InputFileError as exc:
        if not from_file:
            raise
        origin = getattr(file_settings, "origins", {}).get("seeds", "the config file")
        raise InputFileError([*exc.problems, f"{origin}: the seeds setting names this file; fix "
                                             "the file or the setting, or give --seeds"]) from None
    return Session(run_dir, cfg, False, request, seeds=seeds,
                   notes=pool_replaced_notes(file_settings, flags) + unset_key_notes(cfg)
                   + repeated_seed_notes(seeds, request.seeds))


def pool_replaced_notes(file_settings: Mapping[str, Any], flags: Mapping[str, Any],
                        env: Mapping[str, str] | None = None) -> list[str]:
    """A note when OPENAI_BASE_URL (no --base-url given) replaces the config file's pool of
    several [[endpoints]]: the environment comes after the file, and a variable exported for
    other tools would otherwise replace the pool unsaid."""
    env = os.environ if env is None else env
    pool = file_settings.get("endpoints") or []
    if len(pool) < 2 or flags.get("base_url") or not env.get("OPENAI_BASE_URL"):
        return []
    where = getattr(file_settings, "origins", {}).get("endpoints", "the config file")
    return [f"OPENAI_BASE_URL is set, so this run uses {env['OPENAI_BASE_URL']} "
            f"instead of the {len(pool)} [[endpoints]] at {where}; unset it to use them"]


def repeated_seed_notes(seeds: list[SeedTask], path: str | None) -> list[str]:
    """A note when seed tasks repeat another's instruction (spaces and case aside): such a
    task is sampled as an example as often as two, and only `seeds check` said so."""
    first: dict[str, str] = {}
    pairs = []
    for task in seeds:
        key = instruction_key(task.instruction)
        if key in first:
            pairs.append(f"{task.id} = {first[key]}")
        else:
            first[key] = task.id
    if not pairs:
        return []
    shown = ", ".join(pairs[:5]) + (f" and {len(pairs) - 5} more" if len(pairs) > 5 else "")
    return [with_command(
        f"{path or 'the seed file'}: {len(pairs)} seed task(s) repeat another's instruction "
        f"({shown}); each weighs as two in the prompts' examples. This lists them and the near "
        "duplicates:", command_line("seeds", "check", path or str(bundled_seeds_path())))]


def left_paused_notes(last_state: dict[str, Any], request: RunRequest) -> list[str]:
    """A note when the run's last process ended paused by the user (`last_state`: the store's
    "state" meta) and this command does not ask for --paused: the command resumes the run, so
    it runs (as quitting a paused TUI says); --paused keeps it paused."""
    if request.paused or last_state.get("reason") != USER_PAUSE or \
            last_state.get("state") == RunState.FAILED:
        return []
    return ["the run was paused when its last process ended; this command runs it (add "
            "--paused to start it paused: nothing is sent until you resume it with p)"]


def unset_key_notes(cfg: RunConfig, env: Mapping[str, str] | None = None) -> list[str]:
    """A note for each key_env other than the default OPENAI_API_KEY that is not set in the
    environment (a typo sent every request without a key, and the endpoint's 401 read as a
    refused key). The default unset is usual (a local server needs no key): no note."""
    env = os.environ if env is None else env
    if cfg.uses_embedded or cfg.base_url == OFFLINE_URL:
        return []
    urls: dict[str, list[str]] = {}
    for e in cfg.endpoint_list():
        urls.setdefault(e["key_env"], []).append(e["base_url"])
    return [f"{name} is not set in the environment: requests to {', '.join(at)} carry no API "
            f"key (key_env names the variable that holds it)"
            for name, at in urls.items() if name != DEFAULT_KEY_ENV and not env.get(name)]


def seeds_differ(path: Path, store: RunStore) -> str | None:
    """Why the seed file cannot resume this run, or None when it holds the run's seed set."""
    file_tasks = load_seeds(path)
    run_tasks = [t.to_seed() for t in store.tasks(status="active", origin="seed")]
    why = seed_difference(file_tasks, run_tasks)
    if why is None or seed_fingerprint(file_tasks) == store.get_meta("seeds_original"):
        return None
    pending = store.pending_seeds()  # edits the run applies when it resumes
    if pending is not None and seed_difference(
            file_tasks, [seed_from_record(d) for d in pending]) is None:
        return None
    return (f"seeds: {path} is not this run's seed set ({why}). Leave out --seeds to resume "
            "with the run's own seeds (edit them in the TUI, key e)")


class _Unreachable(UserError):
    """The endpoint at `base_url` could not be reached to list its models (down, still
    loading, a timeout); `why` in the client's words."""

    def __init__(self, base_url: str, why: str) -> None:
        super().__init__(f"cannot list the models at {base_url}: {why}; check --base-url and "
                         "that the server is up, or name the model with --model")
        self.base_url, self.why = base_url, why


class _Refused(UserError):
    """The endpoint at `base_url` answered the model list with an error (a refused key, a
    404): the message says it in full; `why` is that message."""

    def __init__(self, base_url: str, why: str) -> None:
        super().__init__(why)
        self.base_url, self.why = base_url, why


def batches_pending_elsewhere(store: RunStore, cfg: RunConfig) -> str | None:
    """Why `cfg` cannot resume the run in `store`: a Batch API job pending at another base URL
    than the one this session would poll (its batch id means nothing elsewhere), or None."""
    from selfinstruct_tui.engine.batch import OpenAIBatchTransport, held_elsewhere

    if cfg.batch_command:  # jobs of the Batch API wait for a session that uses it
        return None
    for record in store.batches(pending_only=True):
        if record.transport == OpenAIBatchTransport.name and record.state == "submitted" \
                and held_elsewhere(record, cfg.base_url):
            return (f"--base-url: batch job {record.id} ({record.batch_id}) is pending at "
                    f"{record.endpoint}, where it was created (its id means nothing elsewhere): "
                    f"give --base-url {record.endpoint} (alone, or first) until its answers "
                    "are read; it is not sent again")
    return None


def discover_pool_model(endpoints: list[dict[str, Any]]) -> str:
    """With no --model and a pool (`RunConfig.endpoint_list()`): the model of the first
    endpoint that answers, asked in order with its own key (`discover_model`); one that cannot
    be reached (a replica still loading) or refuses the list (its key refused, a 404) is
    skipped, as the run skips it: the pool takes it out, or drops it naming why, at its first
    request. Endpoints with their own model are asked only when all have one. Raises
    UserError as `discover_model` does (several models, none, not an API), or naming every
    endpoint when none listed its models."""
    asked = [e for e in endpoints if not e["model"]] or endpoints
    failed: list[str] = []
    refused = False
    for endpoint in asked:
        try:
            return discover_model(endpoint["base_url"], os.environ.get(endpoint["key_env"], ""),
                                  endpoint["key_env"])
        except _Unreachable as exc:
            failed.append(f"{exc.base_url}: {exc.why}")
        except _Refused as exc:
            if len(asked) == 1:
                raise
            refused = True
            failed.append(f"{exc.base_url}: {exc.why}")
    fix = "fix what each says" if refused else "check --base-url and that the servers are up"
    raise UserError("cannot list the models at any endpoint (" + "; ".join(failed) +
                    f"): {fix}, or name the model with --model")


def discover_model(base_url: str, api_key: str, key_env: str = DEFAULT_KEY_ENV) -> str:
    """With no --model: the endpoint's only model (vLLM, llama.cpp, Ollama list theirs).
    Raises UserError when the list can't be read or names none or several (`_Unreachable`
    when the endpoint could not be reached, `_Refused` when it answered with an error)."""
    import openai

    from selfinstruct_tui.engine.llm import (
        ClientSettings,
        Redactor,
        error_text,
        map_error,
        redirect_failure,
        status_failure,
    )

    # redirects not followed, as a request's are not (`llm.openai_client`)
    client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=10,
                           max_retries=1,
                           http_client=openai.DefaultHttpxClient(follow_redirects=False))
    redact = Redactor(api_key)
    try:
        models = [m.id for m in client.models.list()]
    except openai.AuthenticationError as exc:  # said as a request's 401 is: no key, or refused
        failure = status_failure(exc.status_code, error_text(exc), ClientSettings(
            base_url=base_url, model="", api_key=api_key, key_env=key_env))
        raise _Refused(base_url, redact(failure.message)) from None
    except openai.APIStatusError as exc:
        if 300 <= exc.status_code < 400:
            raise _Refused(base_url, redact(redirect_failure(exc, ClientSettings(
                base_url=base_url, model="")).message)) from None
        raise _Refused(base_url, f"cannot list the models at {base_url} ({exc.status_code}: "
                       f"{redact(error_text(exc))}); check --base-url, or name the model "
                       "with --model") from None
    except openai.APIError as exc:
        why = map_error(exc, ClientSettings(base_url=base_url, model="", request_timeout=10))
        raise _Unreachable(base_url, redact(why.message)) from None
    except (AttributeError, TypeError, ValueError, KeyError):
        # A 200 answer that is not the API's JSON: a web UI, a wrong path.
        raise UserError(f"{base_url}/models did not answer like an OpenAI-compatible API (a "
                        "web page?): check --base-url (it usually ends in /v1), or name the "
                        "model with --model") from None
    finally:
        client.close()
    if len(models) == 1:
        return models[0]
    if not models:
        raise UserError(f"{base_url} lists no models; name one with --model")
    shown = ", ".join(models[:10]) + (" ..." if len(models) > 10 else "")
    raise UserError(f"{base_url} serves several models ({shown}); choose one with --model")
