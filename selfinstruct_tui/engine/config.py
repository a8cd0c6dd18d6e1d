"""Run configuration: defaults, then the user's TOML config file, then environment, then flags.

The API key is never part of a config: only the *name* of the environment variable that holds it
(`key_env`) is stored, and the key is read from the environment when a client is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import time
import tomllib
import urllib.parse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import platformdirs

from selfinstruct_tui.engine import records
from selfinstruct_tui.engine.errors import ConfigError

Api = Literal["completions", "chat"]
Tokenizer = Literal["rouge", "unicode"]
StructuredOutput = Literal["auto", "on", "off"]

APP_NAME = "selfinstruct-tui"
BATCH_PROMPTS_PER_ROUND = 100  # generation prompts per round in batch mode (--prompts-per-round)
EMBEDDED = "embedded"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"  # the variable that holds the API key, unless key_env says
OFFLINE_URL = "http://offline.invalid/v1"  # the base URL of a --batch-command run without one


@dataclass
class RunConfig:
    # endpoint; base_url == "embedded" means the managed local llama.cpp server
    base_url: str = ""
    model: str = ""
    api: Api = "completions"
    key_env: str = DEFAULT_KEY_ENV
    model_path: str = ""
    # run
    target: int = 100
    random_seed: int = 0
    # send each generation request a `seed` (made from random_seed); false (--no-request-seed)
    # for an endpoint that refuses the field. The examples' sampling stays random_seed's.
    request_seed: bool = True
    concurrency: int = 8
    prompts_per_round: int = 0  # 0: as many as --concurrency
    # instruction generation (paper defaults)
    num_prompt_instructions: int = 8
    num_machine_instructions: int = 2
    generation_max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.5
    presence_penalty: float = 2.0
    frequency_penalty: float = 0.0
    # classification and instances
    classification_max_tokens: int = 3
    instance_max_tokens: int = 300
    instance_presence_penalty: float = 1.5
    max_instances: int = 5
    # filters
    threshold: float = 0.7
    tokenizer: Tokenizer = "rouge"
    min_words: int = 4
    max_words: int = 150
    filter_non_ascii: bool = True
    # requests
    request_timeout: float = 120.0
    connect_timeout: float = 5.0  # seconds to open a connection (openai-python's default)
    max_retries: int = 6
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    error_pause_seconds: float = 60.0
    price_input_per_1k: float = 0.0
    price_output_per_1k: float = 0.0
    # seconds that requests in flight may still take after a stop before they are abandoned
    stop_grace: float = 10.0
    # the model's context window in tokens (0: learned from the endpoint's first context error)
    context_window: int = 0
    # chat only: JSON-schema structured output (auto: used where the endpoint accepts it)
    structured_output: StructuredOutput = "auto"
    # the embedded model: 3 processes, one per prompt family, each keeping its few-shot prefix
    # evaluated (faster); 1 uses a third of the memory
    embedded_servers: int = 3
    # spend guards: stop when the run's cost (USD) or its tokens reach these (0: no limit) ...
    max_cost: float = 0.0
    max_tokens: int = 0
    # ... and pause when this many requests in a row (whole rounds) added nothing to the pool
    max_fruitless_requests: int = 40
    # batch mode: each stage of a round is one job through the Batch API (/v1/files,
    # /v1/batches) or, with batch_command, an offline command run on the job's file
    batch: bool = False
    batch_command: str = ""
    batch_poll_seconds: float = 30.0  # seconds between two polls of a pending batch
    # a batch (or a file of it) the endpoint answers 404 for is recorded lost, and its requests
    # sent again, once the 404s have lasted this long (and 3 polls) with no other answer between
    # them: a replica behind a router that did not create it, or a provider's eventual
    # consistency, answers 404 for a while to a batch that exists (and is paid)
    batch_lost_after_seconds: float = 600.0

    # fields added to every request's JSON body, e.g. {"chat_template_kwargs": {"enable_thinking":
    # false}} to turn a Qwen3 model's thinking off on vLLM or SGLang, or {"reasoning_effort":
    # "low"}; never one of the fields the run sets itself (EXTRA_BODY_RESERVED)
    extra_body: dict[str, Any] = field(default_factory=dict)

    # a pool of endpoints (`[[endpoints]]` tables, or --base-url given several times): each a
    # dict with base_url and optional model, key_env, concurrency, requests_per_minute (unset:
    # the run's own setting). Empty: `base_url` alone. See `endpoint_list`.
    endpoints: list[dict[str, Any]] = field(default_factory=list)

    @property
    def effective_prompts_per_round(self) -> int:
        if self.prompts_per_round:
            return self.prompts_per_round
        # A batch costs one job per stage whatever its size: rounds are larger.
        return BATCH_PROMPTS_PER_ROUND if self.uses_batch else self.total_concurrency

    @property
    def uses_batch(self) -> bool:
        """Batch mode: --batch, or --batch-command (the offline transport)."""
        return self.batch or bool(self.batch_command)

    @property
    def models_label(self) -> str:
        """The model for people: a pool whose endpoints ask for different models names each
        once, in the pool's order ("a, b"); otherwise `model`."""
        if len(self.endpoints) < 2:
            return self.model
        models = list(dict.fromkeys(e["model"] for e in self.endpoint_list()))
        return ", ".join(models) if len(models) > 1 else self.model

    @property
    def total_concurrency(self) -> int:
        """Requests in flight at most: the sum over the pool's endpoints, or `concurrency`."""
        if len(self.endpoints) < 2:
            return self.concurrency
        return sum(int(e["concurrency"]) for e in self.endpoint_list())

    def endpoint_list(self) -> list[dict[str, Any]]:
        """The pool's endpoints with every field filled in (base_url, model, key_env,
        concurrency, requests_per_minute: 0 for none); one entry for a single endpoint."""
        given = self.endpoints or [{"base_url": self.base_url}]
        return [{"base_url": str(e["base_url"]), "model": e.get("model") or self.model,
                 "key_env": e.get("key_env") or self.key_env,
                 "concurrency": int(e.get("concurrency") or self.concurrency),
                 "requests_per_minute": float(e.get("requests_per_minute")
                                              or self.requests_per_minute)}
                for e in given]

    @property
    def uses_embedded(self) -> bool:
        return self.base_url == EMBEDDED

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self, where: str = "settings", origins: dict[str, str] | None = None) -> None:
        """Raise ConfigError listing every setting that cannot work, one line each: where the
        value came from (`origins`: a setting's config file and line, "command line" or an
        environment variable; `where` for the rest), the setting with its flag, and the fix."""
        origins = origins or {}
        problems: list[str] = []

        def bad(name: str, text: str) -> None:
            flag = FLAGS.get(name)
            problems.append(f"{origins.get(name, where)}: {name}"
                            f"{f' ({flag})' if flag else ''} {text}")

        if self.api not in ("completions", "chat"):
            bad("api", f"must be 'completions' or 'chat', not {self.api!r}")
        if self.tokenizer not in ("rouge", "unicode"):
            bad("tokenizer", f"must be 'rouge' or 'unicode', not {self.tokenizer!r}")
        for name in ("target", "concurrency", "max_instances", "num_prompt_instructions",
                     "generation_max_tokens", "instance_max_tokens", "classification_max_tokens"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        if self.num_prompt_instructions >= 1 and \
                not 0 <= self.num_machine_instructions <= self.num_prompt_instructions:
            bad("num_machine_instructions", "must be between 0 and num_prompt_instructions")
        # a float that is no number gets one line (below), not also a range's
        nonfinite = [f.name for f in fields(self) if isinstance(getattr(self, f.name), float)
                     and not math.isfinite(getattr(self, f.name))]
        finite = {f.name for f in fields(self)} - set(nonfinite)
        if "threshold" in finite and not 0.0 < self.threshold <= 1.0:
            bad("threshold", "must be in (0, 1]")
        # the OpenAI API reference's ranges (other servers take the same)
        if "temperature" in finite and not 0.0 <= self.temperature <= 2.0:
            bad("temperature", f"must be between 0 and 2, not {self.temperature}")
        if "top_p" in finite and not 0.0 < self.top_p <= 1.0:
            bad("top_p", f"must be more than 0 and at most 1, not {self.top_p}")
        for name in ("presence_penalty", "frequency_penalty", "instance_presence_penalty"):
            value = getattr(self, name)
            if name in finite and not -2.0 <= value <= 2.0:
                bad(name, f"must be between -2 and 2, not {value}")
        if self.prompts_per_round < 0:
            bad("prompts_per_round", "must be 0 (auto) or more")
        if self.embedded_servers not in (1, 3):
            bad("embedded_servers", f"must be 1 or 3, not {self.embedded_servers}")
        if self.structured_output not in ("auto", "on", "off"):
            bad("structured_output", f"must be 'auto', 'on' or 'off', not "
                                     f"{self.structured_output!r}")
        for name in ("max_cost", "max_tokens", "stop_grace", "context_window",
                     "max_fruitless_requests", "min_words", "price_input_per_1k",
                     "price_output_per_1k", "requests_per_minute", "tokens_per_minute",
                     "batch_lost_after_seconds"):
            if getattr(self, name) < 0:
                bad(name, "must be 0 or more")
        for name in nonfinite:
            bad(name, f"must be a finite number, not {getattr(self, name)}")
        if self.max_cost > 0 and not (self.price_input_per_1k and self.price_output_per_1k):
            bad("max_cost", "needs both prices to count the cost: set price_input_per_1k and "
                            "price_output_per_1k (--price-in, --price-out, USD per 1K tokens), "
                            "or limit tokens with --max-tokens")
        if self.batch_poll_seconds <= 0:
            bad("batch_poll_seconds", "must be more than 0 seconds")
        if self.batch_command and not ("{input}" in self.batch_command
                                       and "{output}" in self.batch_command):
            bad("batch_command", "must name {input} and {output}, e.g. "
                                 "\"vllm run-batch -i {input} -o {output} --model M\"")
        if self.request_timeout <= 0:
            bad("request_timeout", "must be more than 0 seconds")
        if self.connect_timeout <= 0:
            bad("connect_timeout", "must be more than 0 seconds")
        if self.max_retries < 0:
            bad("max_retries", "must be 0 or more")
        if 0 < self.context_window < 256:
            bad("context_window", "must be 0 (learn it from the endpoint) or at least 256 tokens")
        if self.base_url not in ("", EMBEDDED) and (problem := url_problem(self.base_url)):
            bad("base_url", problem)
        if problem := key_env_problem(self.key_env):
            bad("key_env", problem)
        if self.max_words < self.min_words:
            bad("max_words", "must be at least min_words")
        if not isinstance(self.extra_body, dict):
            bad("extra_body", "must be a table of request fields, e.g. "
                              "{chat_template_kwargs = {enable_thinking = false}}")
        else:
            taken = sorted(EXTRA_BODY_RESERVED & set(self.extra_body))
            if taken:
                bad("extra_body", f"may not set {', '.join(taken)}: the run sets "
                                  f"{'these' if len(taken) > 1 else 'it'} itself (the sampling "
                                  "settings have their own settings and flags)")
            try:
                json.dumps(self.extra_body, allow_nan=False)
            except (TypeError, ValueError) as exc:
                bad("extra_body", f"must hold only what JSON can carry ({exc}); a TOML date "
                                  "or time, or nan, cannot be sent")
        origin = origins.get("endpoints", where)
        problems.extend(endpoint_problems(self.endpoints, origin, item="--base-url" if
                                          origin == "command line" else "[[endpoints]]"))
        if self.uses_batch and len(self.endpoints) > 1:
            bad("batch_command" if self.batch_command else "batch",
                f"sends each job to one endpoint, not a pool of {len(self.endpoints)} (from "
                f"{origin}): give one --base-url (a pool is for requests sent one by one; "
                "--no-batch resumes a batch run that way)")
        if not self.uses_batch and self.base_url == OFFLINE_URL:
            bad("base_url", "is needed: this run had no endpoint (--batch-command); give "
                            "--base-url to send its requests one by one")
        if self.endpoints and self.base_url == EMBEDDED:
            problems.append(f"{origin}: endpoints cannot be combined "
                            "with the embedded model; give --base-url once per endpoint (or "
                            "[[endpoints]] tables)")
        if problems:
            raise ConfigError("\n".join(problems))


# Each setting's command-line flag (selfinstruct run), named beside it in messages; a test checks
# this against the parser.
FLAGS = {
    "target": "--target", "model": "--model", "base_url": "--base-url", "api": "--api",
    "concurrency": "--concurrency", "random_seed": "--random-seed",
    "prompts_per_round": "--prompts-per-round", "batch": "--batch",
    "batch_command": "--batch-command", "batch_poll_seconds": "--batch-poll",
    "threshold": "--threshold", "tokenizer": "--tokenizer", "filter_non_ascii": "--allow-non-ascii",
    "requests_per_minute": "--rpm", "tokens_per_minute": "--tpm", "request_timeout": "--timeout",
    "connect_timeout": "--connect-timeout", "max_retries": "--max-retries",
    "price_input_per_1k": "--price-in", "price_output_per_1k": "--price-out",
    "key_env": "--key-env", "max_cost": "--max-cost", "max_tokens": "--max-tokens",
    "context_window": "--context-window", "stop_grace": "--stop-grace",
    "structured_output": "--structured-output", "embedded_servers": "--embedded-servers",
    "max_fruitless_requests": "--max-fruitless-requests", "model_path": "--model-path",
    "extra_body": "--extra-body", "request_seed": "--no-request-seed",
}


# An http(s) URL with a host and no spaces anywhere (a space in it only fails later, to connect).
_URL = re.compile(r"^https?://[^/\s]+(?:/\S*)?$")


def url_problem(url: str) -> str | None:
    """What is wrong with `url` as a base URL (the message names no secret it holds), or
    None. Refused: anything but http(s); a user name or password in it (the openai client
    sends the key as a bearer token and aiohttp refused the pair, each request failing as
    "malformed" after its retries, while the URL, password and all, went into the run's
    store and the printed resume command); a query string or fragment (the request path is
    appended after it: "/v1?api-key=...completions")."""
    if not _URL.match(url):
        return f"must be an http:// or https:// URL such as http://localhost:8000/v1, not {url!r}"
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        shown = f"{parts.scheme}://***@{parts.netloc.rsplit('@', 1)[1]}{parts.path}"
        return (f"must not hold a user name or password ({shown}): give the API key in "
                "OPENAI_API_KEY (or the variable key_env names), which is never written to disk")
    if parts.query or parts.fragment:
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        return (f"must not have a query string or fragment ({shown}?***): requests go to "
                "base_url + /completions; an API key goes in OPENAI_API_KEY (or the variable "
                "key_env names)")
    return None

# An environment variable's name as a shell can set it (POSIX: letters, digits, underscore).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def key_env_problem(name: str) -> str | None:
    """What is wrong with `name` as key_env (the message never repeats it: what is written
    there instead of a variable's name is most often the key itself), or None. Such a value
    was printed in the "is not set" note and stored in the run's config."""
    if _ENV_NAME.fullmatch(name):
        return None
    what = "is empty" if not name else "is not a variable name (letters, digits and _)"
    return (f"{what}: it names the environment variable that holds the API key (e.g. "
            "OPENAI_API_KEY), never the key itself; put the key in that variable")


ENDPOINT_FIELDS = {"base_url": "str", "model": "str", "key_env": "str", "concurrency": "int",
                   "requests_per_minute": "float"}


def endpoint_problems(endpoints: object, where: str = "settings",
                      lines: list[int] | None = None, text: str = "",
                      item: str = "[[endpoints]]") -> list[str]:
    """What is wrong with a list of endpoint tables, each problem naming the table (`where`,
    the line of its `[[endpoints]]` header when `lines` gives it, or of the field itself when
    `text`, the file, shows it) and the field."""
    if not isinstance(endpoints, list):
        return [f"{where}: endpoints must be a list of [[endpoints]] tables"]
    problems = []
    seen: set[str] = set()
    file_lines = records.file_lines(text)
    for n, entry in enumerate(endpoints, start=1):
        header = lines[n - 1] if lines and n <= len(lines) else None
        at = f"{where}:{header}" if header else where
        name = f"{at}: {item} #{n}"

        def field_at(key: str, header: int | None = header, n: int = n,
                     name: str = name) -> str:
            """The problem's prefix, at the field's own line when the file shows it."""
            if header is None or not file_lines:
                return f"{name}:"
            end = lines[n] if lines and n < len(lines) else None
            number = _line_of(file_lines, key, header + 1, end)
            return f"{where}:{number}: {item} #{n}:" if number else f"{name}:"

        if not isinstance(entry, dict):
            problems.append(f"{name} must be a table with base_url = \"http://...\"")
            continue
        for key, value in entry.items():
            type_name = ENDPOINT_FIELDS.get(key)
            if type_name is None:
                problems.append(f"{field_at(key)} unknown field {key!r}"
                                f"{_did_you_mean(key, list(ENDPOINT_FIELDS), 'fields')}")
                continue
            try:
                _coerce(value, type_name)
            except TypeError as exc:
                problems.append(f"{field_at(key)} field {key!r} must be {exc}, got "
                                f"{_toml_value(value)}")
        url = entry.get("base_url")
        if not url:
            problems.append(f"{name}: base_url is missing (e.g. base_url = "
                            "\"http://localhost:8000/v1\")")
        elif isinstance(url, str):
            if problem := url_problem(url):
                problems.append(f"{field_at('base_url')} base_url {problem}")
            elif endpoint_key(url) in seen:  # with or without a trailing slash: one endpoint
                problems.append(f"{field_at('base_url')} base_url {url!r} is listed twice")
            seen.add(endpoint_key(url))
        key_env = entry.get("key_env")
        if isinstance(key_env, str) and (problem := key_env_problem(key_env)):
            problems.append(f"{field_at('key_env')} field 'key_env' {problem}")
        concurrency = entry.get("concurrency")
        if isinstance(concurrency, int) and concurrency < 1:
            problems.append(f"{field_at('concurrency')} field 'concurrency' must be at least 1")
        rpm = entry.get("requests_per_minute")
        if isinstance(rpm, (int, float)) and (rpm < 0 or not math.isfinite(rpm)):
            problems.append(f"{field_at('requests_per_minute')} field 'requests_per_minute' "
                            "must be 0 or more")
    return problems


# Settings that may differ when a run resumes: they change speed, cost or the stopping point,
# never what a task looks like.
SAFE_ON_RESUME = {
    "target", "concurrency", "prompts_per_round", "request_timeout", "connect_timeout",
    "max_retries",
    "requests_per_minute", "tokens_per_minute", "error_pause_seconds", "price_input_per_1k",
    "price_output_per_1k", "base_url", "key_env", "model_path", "stop_grace", "context_window",
    "structured_output", "max_cost", "max_tokens", "max_fruitless_requests", "embedded_servers",
    "batch", "batch_command", "batch_poll_seconds", "batch_lost_after_seconds",
    "endpoints", "extra_body", "request_seed",
}

# Request fields the run sets itself (the paper's sampling settings, the prompt, the stop
# sequences, structured output) or that would change the answer's shape (several choices, a
# stream, log probabilities): `extra_body` may not hold them.
EXTRA_BODY_RESERVED = frozenset({
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "presence_penalty", "frequency_penalty", "seed", "stop", "response_format", "n", "best_of",
    "stream", "stream_options", "echo", "logprobs", "top_logprobs", "suffix",
})

SETTABLE = {f.name: f.type for f in fields(RunConfig)}
UI_SETTINGS = {"theme": "str", "refresh": "float", "seeds": "str"}
# Seconds between two screen updates, for --refresh and the config file's `refresh` (0 redrew
# the screen as fast as the loop could, a core's worth of CPU for nothing)
REFRESH_RANGE = (0.05, 60.0)
FILE_PATHS = ("seeds", "model_path")  # settings that name a file: relative to the config file


def user_config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME))


def user_config_path() -> Path:
    override = os.environ.get("SELFINSTRUCT_CONFIG")
    # ~ expanded here too: a service file or a quoted "~/..." does not go through the shell's
    return Path(override).expanduser() if override else user_config_dir() / "config.toml"


def user_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def user_cache_dir() -> Path:
    """The platform's user cache dir for the app ($XDG_CACHE_HOME/selfinstruct-tui on Linux,
    else ~/.cache/selfinstruct-tui): the embedded model's assembled file."""
    return Path(platformdirs.user_cache_dir(APP_NAME))


def runs_root() -> Path:
    override = os.environ.get("SELFINSTRUCT_RUNS_DIR")
    return Path(override).expanduser() if override else user_data_dir() / "runs"


def new_run_dir(model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model or "run").strip("-")[:40] or "run"
    base = runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _line_of(lines: list[str], key: str, first: int = 1, end: int | None = None) -> int | None:
    """The number of the first line in [first, end) (1-based) that sets `key`, or None: as
    `key =`, quoted (`"key" =`) or dotted (`key.field =`, TOML's other way to fill a table)."""
    stop = len(lines) + 1 if end is None else end
    k = re.escape(key)
    pattern = re.compile(rf"""\s*(?:{k}|"{k}"|'{k}')\s*[=.]""")
    for n in range(first, stop):
        if pattern.match(lines[n - 1]):
            return n
    return None


# A TOML table header, [name], [name.sub] or [[name]], and its first name (bare or quoted).
_TABLE_HEADER = re.compile(r"""\s*\[\[?\s*([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*[\].]""")


def _table_lines(lines: list[str], name: str | None = None) -> list[int]:
    """The numbers (1-based) of the lines that open a table, only `name`'s when given."""
    found = []
    for n, line in enumerate(lines, start=1):
        header = _TABLE_HEADER.match(line)
        if header and (name is None or header.group(1).strip("\"'") == name):
            found.append(n)
    return found


# Names a user gives the API key's setting in a config file (there is none: keys stay in the
# environment, never on disk).
_KEY_NAMES = {"api_key", "apikey", "key", "openai_api_key", "openai_key", "token", "api_token",
              "access_token", "secret_key", "bearer_token", "authorization"}


def _did_you_mean(key: str, known: list[str], what: str) -> str:
    """The end of an unknown key's message: the setting it is a typo of or a flag's name for
    (`concurency`, `rpm`, `max-cost`: "; did you mean 'max_cost'?"), else the known names."""
    by_flag = {flag.removeprefix("--").replace("-", "_"): name for name, flag in FLAGS.items()
               if name in known}
    spelled = key.strip().lower().replace("-", "_")
    if spelled in _KEY_NAMES:
        # a key written into the file: say where keys go, not every setting there is
        return ("; the API key is never read from a file: delete this line and put the key "
                f"in the environment variable {DEFAULT_KEY_ENV} (or the one key_env names)")
    wanted = by_flag.get(spelled) or (spelled if spelled in known else None)
    close = [wanted] if wanted else difflib.get_close_matches(spelled, known, n=1, cutoff=0.75)
    if close == ["filter_non_ascii"] and "allow" in spelled:  # the flag turns the filter off
        return "; did you mean filter_non_ascii = false (what --allow-non-ascii sets)?"
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (known {what}: {', '.join(sorted(known))})"


def _toml_error(exc: tomllib.TOMLDecodeError, text: str) -> str:
    """"LINE: not valid TOML: what (column N)" from tomllib's "what (at line L, column N)" or
    "what (at end of document)": the line first, as every other message about the file."""
    message = str(exc)
    at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if at:
        return f"{at[1]}: not valid TOML: {message[:at.start()]} (column {at[2]})"
    end = re.search(r"\s*\(at end of document\)$", message)
    if end:
        return (f"{max(1, len(records.file_lines(text)))}: not valid TOML: "
                f"{message[:end.start()]} (at the end of the file)")
    return f"1: not valid TOML: {message}"


def _toml_value(value: Any) -> str:
    """A value as the config file spells it (true, "4", [1, 2]), not as Python does (True)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # a TOML date or time
        return str(value)


def _coerce(value: Any, type_name: str) -> Any:
    """The value as the setting's type; TypeError naming the type. The Literal-typed settings
    (api, tokenizer, structured_output) are strings here; `validate` checks their values."""
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        raise TypeError("true or false")
    if type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("an integer")
    if type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError("a number")
    if type_name.startswith("dict"):
        if isinstance(value, dict):
            return value
        raise TypeError("a table (TOML) or a JSON object")
    if isinstance(value, str):
        return value
    raise TypeError("a string")


class FileSettings(dict[str, Any]):
    """Settings read from a config file; `origins` maps each to its "path:line", so that a
    value `validate` turns down is named where it was written."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: dict[str, str] = {}


def load_user_config(path: Path | None = None) -> FileSettings:
    """The user's config file as validated settings (with their lines, `FileSettings`); a
    missing file at the default path is an empty config. Raises ConfigError for a file that
    cannot be read or holds bad settings, and for a SELFINSTRUCT_CONFIG that names a file that
    does not exist (a typo there would otherwise drop every setting without a word)."""
    named = path is None and os.environ.get("SELFINSTRUCT_CONFIG")
    path = path or user_config_path()
    try:
        # utf-8-sig: a file saved "UTF-8 with BOM" (Windows Notepad) is UTF-8 all the same; the
        # BOM was read as a character of line 1, "not valid TOML: Invalid statement"
        raw = path.read_bytes()
    except FileNotFoundError:
        if named:
            raise ConfigError(
                f"SELFINSTRUCT_CONFIG={named}: no such file. Fix the path, create the file (an "
                "empty file is an empty config), or unset SELFINSTRUCT_CONFIG to use "
                f"{user_config_dir() / 'config.toml'}") from None
        return FileSettings()
    except IsADirectoryError:
        setting = f"SELFINSTRUCT_CONFIG={named}" if named else str(path)
        raise ConfigError(f"{setting}: a directory, not a config file; name the file itself "
                          f"(e.g. {path / 'config.toml'})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                          f"offset {exc.start}); save the file as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}:{_toml_error(exc, text)}; fix or delete the file") from None
    problems: list[str] = []
    out = FileSettings()
    file_lines = records.file_lines(text)
    for key, value in data.items():
        tables = _table_lines(file_lines, key)
        # a key's own line, or its table's header ([extra_body], [extra_body.x], [[endpoints]])
        where = f"{path}:{_line_of(file_lines, key) or (tables[0] if tables else 1)}"
        if key == "endpoints":  # [[endpoints]] tables: a pool of endpoints
            headers = [n for n in tables if file_lines[n - 1].lstrip().startswith("[[")]
            # [[endpoints]] tables, each named at its header; an inline list at its key's line
            found = endpoint_problems(value, str(path) if headers else where, headers or None,
                                      text)
            problems.extend(found)
            if not found:
                out[key] = [dict(e) for e in value]
                out.origins[key] = f"{path}:{headers[0]}" if headers else str(path)
            continue
        type_name = SETTABLE.get(key) or UI_SETTINGS.get(key)
        if type_name is None:
            problems.append(f"{where}: unknown setting {key!r}"
                            f"{_did_you_mean(key, [*SETTABLE, *UI_SETTINGS], 'settings')}")
            continue
        try:
            out[key] = _coerce(value, str(type_name))
            out.origins[key] = where
            if key in FILE_PATHS and out[key]:
                # relative to the config file, as a file that names files means: the same
                # config from any working directory
                out[key] = str(path.parent / Path(out[key]).expanduser())
        except TypeError as exc:
            flag = f" ({FLAGS[key]})" if key in FLAGS else ""
            problems.append(f"{where}: setting {key!r}{flag} must be {exc}, got "
                            f"{_toml_value(value)}")
    if "base_url" in out and "endpoints" in out:
        # the tables win: the top-level URL was dropped without a word
        problems.append(f"{out.origins['base_url']}: base_url and the [[endpoints]] table(s) "
                        f"at {out.origins['endpoints']} both name the endpoint; keep one (an "
                        "endpoint table holds its own base_url)")
    if problems:
        raise ConfigError("\n".join(problems))
    return out


def save_user_setting(key: str, value: Any, path: Path | None = None) -> None:
    """Remember one setting (e.g. the theme) in the config file, keeping the other lines."""
    from selfinstruct_tui.engine.fsutil import atomic_write_text

    path = path or user_config_path()
    try:
        lines = records.file_lines(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        lines = []
    rendered = f"{key} = {json.dumps(value)}"
    # A top-level key goes before the first table ([extra_body], [[endpoints]]): after it, it
    # would be that table's field (a theme sent in every request's body, or an endpoint's
    # unknown field that stops every run).
    tables = next(iter(_table_lines(lines)), len(lines) + 1)
    n = _line_of(lines, key, 1, tables)
    if n is not None:
        lines[n - 1] = rendered
    else:
        lines.insert(tables - 1, rendered)
    path.parent.mkdir(parents=True, exist_ok=True)  # the config folder: ours to make
    atomic_write_text(path, "\n".join(lines) + "\n")


_ENV_OF = {"base_url": "OPENAI_BASE_URL", "model": "SELFINSTRUCT_MODEL"}


def build_config(file_settings: dict[str, Any], flags: dict[str, Any],
                 env: dict[str, str] | None = None, *, check: bool = True) -> RunConfig:
    """A new run's config: defaults < config file < environment < flags. Raises ConfigError
    naming each setting that cannot work (`check` False: not checked, for comparing what a
    command would set)."""
    env = dict(os.environ) if env is None else env
    cfg = RunConfig()
    # where each value came from, for the messages of `validate`
    origins = dict(getattr(file_settings, "origins", {}))
    for key, value in file_settings.items():
        if key in SETTABLE:
            setattr(cfg, key, value)
    given = set()  # set by the environment or a flag
    for key, name in _ENV_OF.items():
        if env.get(name):
            setattr(cfg, key, env[name])
            origins[key] = f"environment variable {name}"
            given.add(key)
    for key, value in flags.items():
        if value is not None and key in SETTABLE:
            setattr(cfg, key, value)
            origins[key] = "command line"
            given.add(key)
    if "base_url" in given and flags.get("endpoints") is None:
        # one --base-url, or OPENAI_BASE_URL, replaces the config file's pool (the file's
        # first endpoint won over the environment variable, which was ignored unsaid)
        cfg.endpoints = []
    if len(cfg.endpoints) == 1:  # one [[endpoints]] table: the run's own endpoint settings
        for key, value in cfg.endpoints[0].items():
            if key in given:
                continue  # a file's value: the environment and the flags come after it
            setattr(cfg, key, float(value) if key == "requests_per_minute" else value)
            origins[key] = origins.get("endpoints", "settings")
        cfg.endpoints = []
    if cfg.endpoints:
        cfg.base_url = str(cfg.endpoints[0].get("base_url", ""))
    if cfg.model_path and not flags.get("base_url"):
        cfg.base_url = EMBEDDED
    if not cfg.base_url:
        # --batch-command needs no endpoint: nothing is sent over HTTP (the name is a
        # placeholder that never resolves); without it, the embedded model
        cfg.base_url = OFFLINE_URL if cfg.batch_command else EMBEDDED
    if not check:
        return cfg
    if cfg.batch_command and not cfg.model:
        raise ConfigError("--batch-command needs --model: the model name the command's lines "
                          "ask for (e.g. the one given to vllm run-batch --model)")
    cfg.validate(origins=origins)
    return cfg


def file_ignored_on_resume(resumed: RunConfig, flags: dict[str, Any],
                           file_settings: FileSettings | None = None,
                           env: dict[str, str] | None = None,
                           seeds_path: str | None = None) -> list[str]:
    """Notes (to print before the run starts) on the settings of the config file and the
    environment that a resumed run does not take: each "path:line: key = value (the run:
    value; how it can change)", in the file's order, where the run this command would start
    afresh (`build_config`, with the same flags) differs from `resumed` because of the file
    (its effect: with it against without it) or of an environment variable. A resumed run
    keeps its settings (flags change the safe ones, `merge_for_resume`); without these notes an
    edited config file looked applied and was not. `seeds_path`: the run's seed file ("bundled"
    or a path), against the file's `seeds`. `file_settings` None: the user's config file, read
    here (a ConfigError there is a note that the file, or the environment where the file alone
    reads, is not used: a resumed run does not need them)."""
    env = dict(os.environ) if env is None else env
    try:  # the file (and the environment) as a new run reads them
        if file_settings is None:
            file_settings = load_user_config()
        build_config(file_settings, {}, env)
    except ConfigError as exc:
        what = "the config file is not read"
        if file_settings is not None:  # read: if it builds alone, the environment is at fault
            with contextlib.suppress(ConfigError):
                build_config(file_settings, {}, {})
                what = "the environment's settings are not used"
        return [f"{what} for a resumed run (new runs stop on it): "
                f"{str(exc).splitlines()[0]}"]
    # The run this command would start afresh: with the file, without it, without both. Not
    # checked: a resume's flags may lean on the run's own settings (--max-cost on its prices),
    # which were blamed on the config file as a reason it was not read.
    from_file = build_config(file_settings, flags, env, check=False)
    without = build_config(FileSettings(), flags, env, check=False)
    bare = build_config(FileSettings(), flags, {}, check=False)
    origins = file_settings.origins
    pool = file_settings.get("endpoints") or []
    table = pool[0] if len(pool) == 1 else {}  # one [[endpoints]] table: the run's own fields
    found: list[tuple[tuple[str, int], str]] = []  # ((file, line), note line)
    for key, var in _ENV_OF.items():
        if _differs(key, getattr(without, key), getattr(bare, key)) and \
                _differs(key, getattr(without, key), getattr(resumed, key)):
            found.append((("", 0), f"environment variable {var}: {key} = "
                                   f"{_shown(key, getattr(without, key))} (the run: "
                                   f"{_shown(key, _kept(resumed, key))}; {_how(key)})"))
    differ = [f.name for f in fields(RunConfig)
              if _differs(f.name, getattr(from_file, f.name), getattr(without, f.name))
              and _differs(f.name, getattr(from_file, f.name), getattr(resumed, f.name))]
    if "endpoints" in differ and "base_url" in differ:
        differ.remove("base_url")  # the pool's first endpoint: said with the pool
    for key in differ:
        wanted = getattr(from_file, key)
        where = origins.get("endpoints") if key in table or key == "endpoints" else None
        where = where or origins.get(key) or str(user_config_path())
        how = _how(key)
        if key == "endpoints" and _urls(wanted) == _urls(_kept(resumed, key)):
            how = "per-endpoint settings are fixed once a run starts: a new run takes them"
        found.append((_place(where), f"{where}: {key} = {_shown(key, wanted)} (the run: "
                                     f"{_shown(key, _kept(resumed, key))}; {how})"))
    wanted_seeds = file_settings.get("seeds")
    if wanted_seeds and seeds_path and \
            str(Path(wanted_seeds).expanduser().resolve()) != seeds_path:
        where = origins.get("seeds") or str(user_config_path())
        found.append((_place(where), f"{where}: seeds = {wanted_seeds!r} (the run: its own seed "
                                     f"set, from {seeds_path}; edit it in the TUI, key e, or "
                                     "give --seeds with the run's set; a new run takes the "
                                     "file)"))
    if not found:
        return []
    return ["this resumed run keeps its own settings where the config file or the environment "
            "differs (they are for new runs):\n  "
            + "\n  ".join(line for _, line in sorted(found, key=lambda f: f[0]))]


def endpoint_key(base_url: object) -> str:
    """A base URL as the endpoint it names: http://host/v1/ and http://host/v1 are one."""
    return str(base_url).rstrip("/")


def _differs(key: str, a: Any, b: Any) -> bool:
    if key == "base_url":
        return endpoint_key(a) != endpoint_key(b)
    if key == "endpoints":
        return _endpoint_set(a) != _endpoint_set(b)
    return bool(a != b)


def _endpoint_set(endpoints: list[dict[str, Any]]) -> list[tuple[tuple[str, Any], ...]]:
    return [tuple(sorted({**e, "base_url": url}.items()))
            for e, url in zip(endpoints, _urls(endpoints), strict=True)]


def _urls(endpoints: list[dict[str, Any]]) -> list[str]:
    """The endpoints' base URLs, without a trailing slash (the same endpoint with or without)."""
    return [endpoint_key(e.get("base_url", "")) for e in endpoints]


def _kept(resumed: RunConfig, key: str) -> Any:
    """The resumed run's value as the file would give it: its one endpoint as a pool of one."""
    if key == "endpoints" and not resumed.endpoints:
        return [{"base_url": resumed.base_url}]
    return getattr(resumed, key)


def _how(key: str) -> str:
    if key not in SAFE_ON_RESUME:
        return "fixed once a run starts: a new run takes it"
    if key == "endpoints":
        return "safe to change: give --base-url for each endpoint"
    return f"safe to change with {FLAGS[key]}" if key in FLAGS else "safe to change"


def _place(origin: str) -> tuple[str, int]:
    """("path", line) of a "path:line" origin, for the notes' order."""
    path, _, line = origin.rpartition(":")
    return (path, int(line)) if line.isdigit() else (origin, 0)


def _shown(key: str, value: Any) -> str:
    if key == "endpoints":
        return ", ".join(str(e.get("base_url", "?")) + (
            " (" + ", ".join(f"{k} {_shown(k, v)}" for k, v in sorted(e.items())
                             if k != "base_url") + ")" if len(e) > 1 else "")
            for e in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else repr(value)


def merge_for_resume(stored: RunConfig, flags: dict[str, Any]) -> tuple[RunConfig, list[str]]:
    """The resumed run's config and the unsafe changes the flags ask for (empty when safe)."""
    cfg = dataclasses.replace(stored)
    refused = []
    origins = {}
    if flags.get("base_url") is not None and flags.get("endpoints") is None:
        flags = {**flags, "endpoints": []}  # one --base-url: the pool becomes that endpoint
    for key, value in flags.items():
        if value is None or key not in SETTABLE:
            continue
        old = getattr(stored, key)
        if value == old:
            continue
        if key in SAFE_ON_RESUME:
            setattr(cfg, key, value)
            origins[key] = "command line"
        else:
            refused.append(f"{key}: the run uses {old!r}, the command asks for {value!r}")
    if cfg.endpoints:
        cfg.base_url = str(cfg.endpoints[0].get("base_url", ""))
    cfg.validate("the run's saved settings", origins)
    return cfg, refused
