"""A real HTTP server on loopback that speaks the OpenAI wire format, standing in for the model.

It serves /v1/completions, /v1/chat/completions and /v1/models. Its answers are deterministic
functions of the request (so a run against it is reproducible) and look like what a model writes
for our prompts: numbered instructions (some near-duplicates, some with blacklisted words, some too
short), Yes/No answers, and instances in the requested format.

Faults are injectable at start or at run time with POST /_control (JSON): latency (seconds;
`latency_jitter` j draws each request's from uniform [L(1-j), L(1+j)], as real endpoints vary with
the answer's length, so concurrent clients do not stay in lockstep), a share of
429 / 500 answers, hangs (timeouts), truncated (finish_reason=length) and malformed bodies, a
required API key, and "down" (every request fails with 503).

Scripts make it return exactly a given text or status: `script={"generate": [...], ...}` (kinds
"generate", "classify", "instances", or "*" for every request). Each entry is a string (the
answer's text) or a dict with any of: text, finish_reason, status, body (a JSON error body or raw
text), content_type, headers, usage (False: no usage in the answer), shape ("chat" or
"completions": answer in that API's shape whatever was asked), hang (seconds), reasoning (a chat
message's `reasoning_content`, as vLLM and DeepSeek return a reasoning model's thinking; with
text None the message's content is null). Entries are used
in order; the last one repeats unless `repeat_last=False`, after which the default answers resume.
Structured output: `structured="json"` answers a request carrying a JSON schema in JSON,
"ignore" answers it as text, "reject" refuses it with a 400 that names response_format.

Batch API: /v1/files (multipart upload, GET .../content) and /v1/batches (create, retrieve,
cancel). A batch is `in_progress` for `batch_polls` retrieves, then `completed`: every input
line is answered with what the same request would get from /v1/completions or
/v1/chat/completions (the same default or scripted answers). Lines whose kind is in
`batch_fail_kinds` ({kind: message}) go to the error file as 400 lines; `batch_api=False`
answers 404 there (a server without the Batch API); `batch_end_status="expired"` ends a batch
expired with only the first half of its lines answered; `batch_poll_status` (set with
`configure`) answers every retrieve with that error status, `batch_poll_hang` (seconds) leaves
it unanswered that long (`batch_poll_hangs` counts them). `batch_files_lag` (n) leaves a
completed batch's output and error file ids null for n more retrieves (a provider that says
completed before it names the files); `batch_cancel_partial` makes a cancel end the batch
`cancelled` with the first half of its lines answered (paid), as OpenAI's does.
`batch_output_spoil` writes an output file with a line of text first, and last a line for a
custom_id of no request, the first line again and a line cut short;
`batch_files_gone` (n, set with `configure`) answers 404 for the next n file downloads;
`batch_poll_script` (a list of statuses, set with `configure`) answers the next retrieves one
each: an error status as that error (404: "no such batch", as a replica behind a router that
did not create it answers), 200 as usual (`[404] * n`: 404 for the next n retrieves).
`batch_creations` counts created batches; `batch_retrieves` counts polls. `moved` = (status,
base URL), set with `configure`: every request is answered with that redirect (3xx,
Location: the same path under that base URL).
Lost answers and refusals (set with `configure`): `batch_upload_hang` / `batch_create_hang`
(seconds) store an upload / create a batch, then answer that late (a client killed meanwhile
never learns its id);
`batch_upload_drop` / `batch_create_drop` (n) store the next n uploads / create the next n
batches, then close the connection without an answer; GET /v1/files (`?purpose=`) and GET
/v1/batches list them, newest first (`batch_list_fail` (n): the next n lists answer 503). `batch_invalid` ({code, message, param, line}) fails
each batch created while set at its first retrieve, as OpenAI's validation does (status
`failed`, `errors.data` that one error, or none for {"empty": true}, no line answered, no
file); a list of them (or None)
applies one to each next batch created, in order. `batch_create_error` ({status, message,
code, param}) answers each create with that error.
`uploads` counts the files uploaded (purpose batch).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERBS = ["Explain", "Describe", "Summarize", "Compare", "List", "Suggest", "Rewrite", "Classify",
         "Translate", "Outline", "Evaluate", "Propose", "Identify", "Convert", "Recommend",
         "Estimate", "Justify", "Critique", "Plan", "Design", "Analyze", "Predict", "Name",
         "Generate", "Create", "Find", "Tell", "Give", "Choose", "Check"]
ADJS = ["historical", "economic", "quiet", "urban", "rural", "digital", "ancient", "modern",
        "healthy", "risky", "frugal", "seasonal", "legal", "medical", "musical", "tropical",
        "nordic", "coastal", "academic", "casual", "formal", "technical", "spicy", "gentle",
        "rapid", "slow", "cheap", "luxury", "public", "private", "ethical", "chemical", "local",
        "global", "personal", "remote", "weekly", "daily", "common", "rare", "simple", "complex",
        "open", "hidden", "fresh", "solar", "marine", "lunar", "civic", "social"]
NOUNS = ["budget", "recipe", "garden", "contract", "poem", "essay", "bridge", "vaccine",
         "election", "river", "library", "startup", "festival", "museum", "bicycle", "volcano",
         "marathon", "orchestra", "spreadsheet", "password", "interview", "mortgage", "glacier",
         "telescope", "protein", "satellite", "compost", "novel", "lecture", "tariff", "harbor",
         "vineyard", "algorithm", "theorem", "pension", "curriculum", "wetland", "pharmacy",
         "parliament", "bakery", "insurance", "migration", "drought", "keyboard", "sonnet",
         "invoice", "itinerary", "warranty", "podcast", "tournament", "monastery", "canal",
         "fossil", "enzyme", "hurricane", "referendum", "carpool", "apprenticeship", "diet",
         "backpack", "lighthouse", "franchise", "quarry", "ledger", "tapestry", "ferry",
         "orchard", "bakery", "salary", "dialect", "proverb", "riddle", "ritual", "census"]
AUDIENCES = ["a child", "a tourist", "a manager", "a student", "a farmer", "a nurse", "a judge",
             "an engineer", "a retiree", "a beginner", "an investor", "a chef", "a teacher",
             "a journalist", "a pilot", "a librarian"]
BLACKLISTED = ["Draw a diagram of the {n}.", "Plot the {a} {n} on a graph.",
               "Describe the image of a {a} {n}.", "Go to the {n} and take a video of it."]


def _rng(*parts: Any) -> random.Random:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_instruction(rng: random.Random) -> str:
    verb, adj, noun, noun2 = (rng.choice(VERBS), rng.choice(ADJS), rng.choice(NOUNS),
                              rng.choice(NOUNS))
    shape = rng.randrange(5)
    if shape == 0:
        return f"{verb} the {adj} {noun} of a {noun2} for {rng.choice(AUDIENCES)}."
    if shape == 1:
        return f"{verb} {rng.randint(2, 9)} {adj} ways a {noun} could help a {noun2}."
    if shape == 2:
        return (f"Given a {noun}, {verb.lower()} whether its {noun2} is {adj} "
                f"or {rng.choice(ADJS)}.")
    if shape == 3:
        return f"{verb} why {rng.choice(AUDIENCES)} might prefer a {adj} {noun} over a {noun2}."
    return (f"{verb} a short {adj} {noun} about the {rng.choice(ADJS)} {noun2} "
            f"in {rng.randint(2, 6)} sentences.")


def _examples_in(prompt: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"(?m)^\d+\. (.+)$", prompt)]


def generation_items(prompt: str, seed: Any, count: int) -> list[str]:
    rng = _rng("gen", prompt, seed)
    examples = _examples_in(prompt)
    items = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.12 and examples:
            # A near-duplicate: an example with one word changed.
            words = rng.choice(examples).split()
            if len(words) > 3:
                words[rng.randrange(len(words))] = rng.choice(NOUNS)
            items.append(" ".join(words))
        elif roll < 0.17:
            items.append(rng.choice(BLACKLISTED).format(a=rng.choice(ADJS), n=rng.choice(NOUNS)))
        elif roll < 0.20:
            items.append(f"{rng.choice(VERBS)} it.")
        else:
            items.append(make_instruction(rng))
    return items


def classification_answer(instruction: str) -> str:
    head = instruction.lower()
    yes = head.startswith(("classify", "given a", "identify", "check", "is ", "determine"))
    return " Yes" if yes else " No"


def instances_text(instruction: str, label_first: bool, chat: bool, rng: random.Random) -> str:
    if label_first:
        named = re.search(r"is (\w+) or (\w+)", instruction)
        labels = [named.group(1).capitalize(), named.group(2).capitalize()] if named else \
            rng.sample(["Positive", "Negative", "Neutral", "Yes", "No", "Other"], 2)
        parts = []
        for label in labels:
            parts.append(f"Class label: {label}\nInput: A {rng.choice(ADJS)} "
                         f"{rng.choice(NOUNS)} that is clearly {label.lower()}.")
        text = "\n".join(parts)
        return text if chat else text[len("Class label:"):]
    parts = []
    for n in range(1, rng.randint(2, 4) + 1):
        needs_input = rng.random() < 0.6
        inp = f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} near the {rng.choice(NOUNS)}." \
            if needs_input else "(none)"
        out = (f"A {rng.choice(ADJS)} answer about the {rng.choice(NOUNS)}: "
               f"{rng.choice(VERBS).lower()} it carefully.")
        parts.append(f"Example {n}\nInput: {inp}\nOutput: {out}\n")
    text = "\n".join(parts)
    return text if chat else text[len("Example 1\n"):]


def instances_json(text: str, label_first: bool) -> str:
    """The same examples as `instances_text`, in the structured-output JSON shape."""
    out = []
    if label_first:
        for label, inp in re.findall(r"Class label: (.*)\nInput: (.*)", text):
            out.append({"label": label, "input": inp})
    else:
        for inp, outp in re.findall(r"Input: (.*)\nOutput: (.*)", text):
            out.append({"input": "" if inp == "(none)" else inp, "output": outp})
    return json.dumps({"instances": out})


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: at --concurrency 1024 most connects were dropped
    # and retried by the kernel until the client's timeout (the server, not the client, was slow)
    request_queue_size = 4096

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up on a request (a stop abandoning it, a timeout) closes the
        # connection under the handler: expected here, not worth a traceback.
        pass


class FakeOpenAI:
    """Start with `with FakeOpenAI() as server:`; point the client at `server.base_url`."""

    def __init__(self, *, latency: float = 0.0, latency_jitter: float = 0.0,
                 error_rate: float = 0.0,
                 error_status: int = 500, hang_rate: float = 0.0, hang_seconds: float = 30.0,
                 truncate_rate: float = 0.0, malformed_rate: float = 0.0,
                 api_key: str | None = None, down: bool = False, retry_after: float | None = None,
                 fail_first: int = 0, context_limit: int | None = None,
                 reject_param: str | None = None, script: dict[str, list] | None = None,
                 repeat_last: bool = True, structured: str = "json",
                 context_window: int | None = None, batch_polls: int = 2,
                 batch_fail_kinds: dict[str, str] | None = None, port: int = 0,
                 tls: ssl.SSLContext | None = None, thinking: bool = False) -> None:
        """`tls`: serve HTTPS with this server-side context (base_url is then https://).
        `thinking`: a thinking chat model behind a reasoning parser (Qwen3 on vLLM or SGLang):
        each unscripted chat answer is reasoning only, cut off (content null, the reasoning in
        `reasoning_content`), unless the body turns thinking off with chat_template_kwargs
        {"enable_thinking": false}."""
        self.settings: dict[str, Any] = dict(
            latency=latency, latency_jitter=latency_jitter, error_rate=error_rate,
            error_status=error_status, hang_rate=hang_rate, hang_seconds=hang_seconds, truncate_rate=truncate_rate,
            malformed_rate=malformed_rate, api_key=api_key, down=down, retry_after=retry_after,
            fail_first=fail_first, context_limit=context_limit, reject_param=reject_param,
            repeat_last=repeat_last, structured=structured, context_window=context_window,
            batch_polls=batch_polls, batch_fail_kinds=dict(batch_fail_kinds or {}),
            thinking=thinking)
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (filename, content)
        self.file_info: dict[str, dict[str, Any]] = {}  # id -> its File object
        self.uploads = 0
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_polls_of: dict[str, int] = {}
        self.batch_creations = 0
        self.batch_retrieves = 0
        self.batch_lines = 0
        self.batch_poll_hangs = 0
        self.scripts: dict[str, list] = {k: list(v) for k, v in (script or {}).items()}
        self.lock = threading.Lock()
        self.requests = 0
        self.by_kind: dict[str, int] = {}
        self.log: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic, kind, body)
        self.statuses: list[int] = []
        self.max_tokens_seen: list[int] = []
        self.seen_auth: set[str] = set()
        self._fault_rng = random.Random(1234)
        self.connections: set[socket.socket] = set()
        # called as on_request(kind, prompt) in the handler thread before a completion answers
        self.on_request: Callable[[str, str], None] | None = None
        # `port`: a fixed port, e.g. to bring an endpoint back where it was (0: any free port)
        self.httpd = _QuietServer(("127.0.0.1", port), self._handler())
        self.tls = tls
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving and drop every open connection: the endpoint is gone."""
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            connections, self.connections = list(self.connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def configure(self, **settings: Any) -> None:
        with self.lock:
            if "script" in settings:
                self.scripts = {k: list(v) for k, v in (settings.pop("script") or {}).items()}
            for key in ("batch_poll_script", "batch_invalid"):  # consumed here, not the caller's
                if isinstance(settings.get(key), list):
                    settings[key] = list(settings[key])
            self.settings.update(settings)

    def scripted(self, kind: str) -> Any:
        """The next scripted entry for a request of `kind`, or None for the default answer."""
        with self.lock:
            for key in ("*", kind):  # "*" entries answer the next requests, whatever kind
                entries = self.scripts.get(key)
                if entries:
                    if len(entries) > 1 or not self.settings["repeat_last"]:
                        return entries.pop(0)
                    return entries[0]
        return None

    def kinds(self) -> list[str]:
        with self.lock:
            return [k for _, k, _ in self.log]

    # -- request handling -----------------------------------------------------------------------
    def _fault(self) -> str | None:
        s = self.settings
        with self.lock:
            self.requests += 1
            n = self.requests
            roll = self._fault_rng.random()
        if s["down"]:
            return "down"
        if n <= s["fail_first"]:
            return "error"
        edges = [("error", s["error_rate"]), ("hang", s["hang_rate"]),
                 ("truncate", s["truncate_rate"]), ("malformed", s["malformed_rate"])]
        acc = 0.0
        for name, rate in edges:
            acc += rate
            if roll < acc:
                return name
        return None

    @staticmethod
    def prompt_of(path: str, body: dict[str, Any]) -> str:
        if path.endswith("chat/completions"):
            return "\n".join(str(m.get("content", "")) for m in body.get("messages") or [])
        return str(body.get("prompt", ""))

    @staticmethod
    def kind_of(prompt: str) -> str:
        if "say whether it is a classification task" in prompt[:600]:
            return "classify"
        if "Write examples for each task" in prompt[:600] or \
                "sorts its input into one of a few class labels" in prompt[:600]:
            return "instances"
        return "generate"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[str, str, int]:
        """(text, kind, completion tokens) for a completions or chat request."""
        chat = path.endswith("chat/completions")
        prompt = self.prompt_of(path, body)
        seed = body.get("seed")
        kind = self.kind_of(prompt)
        as_json = chat and self.settings["structured"] == "json" and \
            isinstance(body.get("response_format"), dict)
        if kind == "classify":
            instruction = prompt.rstrip().rsplit("Task:", 1)[-1].split("\n")[0].strip()
            return classification_answer(instruction).strip() if chat else \
                classification_answer(instruction), "classify", 1
        if kind == "instances":
            label_first = "class labels" in prompt[:600]
            instruction = prompt.rsplit("Task:", 1)[-1].split("\n")[0].strip()
            text = instances_text(instruction, label_first, chat, _rng("inst", prompt, seed))
            if as_json:
                text = instances_json(text, label_first)
            return text, "instances", len(text.split())
        examples = _examples_in(prompt)
        first = len(examples) + 1
        count = _rng("count", prompt, seed).randint(4, 7)
        items = generation_items(prompt, seed, count)
        if as_json:
            text = json.dumps({"tasks": [{"instruction": item} for item in items]})
        elif chat:
            text = "".join(f"{first + i}. {item}\n" for i, item in enumerate(items))
        else:
            text = " " + "\n".join(f"{first + i}. {item}" if i else item
                                   for i, item in enumerate(items))
        return text, "generate", len(text.split())

    # -- the Batch API --------------------------------------------------------------------------
    def add_file(self, name: str, data: bytes, purpose: str = "batch_output") -> dict[str, Any]:
        with self.lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = (name, data)
            self.uploads += purpose == "batch"
            info = {"id": file_id, "object": "file", "bytes": len(data),
                    "created_at": int(time.time()), "filename": name, "purpose": purpose,
                    "status": "processed"}
            self.file_info[file_id] = info
        return info

    def _take(self, setting: str) -> bool:
        """Whether a countdown setting (`batch_upload_drop`, ...) is still on; counts it down."""
        with self.lock:
            left = int(self.settings.get(setting) or 0)
            if left:
                self.settings[setting] = left - 1
            return left > 0

    def create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        input_id = body.get("input_file_id")
        if input_id not in self.files:
            return 400, {"error": {"message": f"no file {input_id}", "type": "invalid_request"}}
        lines = [ln for ln in self.files[input_id][1].decode().splitlines() if ln.strip()]
        with self.lock:
            self.batch_creations += 1
            batch_id = f"batch_{self.batch_creations}"
            batch = {"id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
                     "completion_window": body.get("completion_window", "24h"),
                     "created_at": int(time.time()), "input_file_id": input_id,
                     "status": "in_progress", "metadata": body.get("metadata"),
                     "output_file_id": None, "error_file_id": None,
                     "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
            invalid = self.settings.get("batch_invalid")
            if isinstance(invalid, list):  # one entry per batch created, in order
                invalid = invalid.pop(0) if invalid else None
            if invalid:
                batch["_invalid"] = dict(invalid)
            self.batches[batch_id] = batch
            self.batch_polls_of[batch_id] = 0
        return 200, {k: v for k, v in batch.items() if not k.startswith("_")}

    def retrieve_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, {"error": {"message": f"no batch {batch_id}", "type": "not_found"}}
            self.batch_retrieves += 1
            self.batch_polls_of[batch_id] += 1
            polls = self.batch_polls_of[batch_id]
            invalid = batch.pop("_invalid", None)
            if invalid:  # refused by validation: nothing ran, nothing is paid
                batch.update(status="failed", failed_at=int(time.time()), request_counts={
                    "total": 0, "completed": 0, "failed": 0}, errors={
                    "object": "list", "data": [] if invalid.get("empty") else [
                        {"param": None, "line": None, **invalid}]})
            ready = batch["status"] == "in_progress" and polls >= self.settings["batch_polls"]
        if ready:
            self._run_batch(batch)
        with self.lock:
            files = batch.get("_files")
            if files is not None and polls >= files[0]:  # the file ids are named now
                batch.update(output_file_id=files[1], error_file_id=files[2])
                del batch["_files"]
            shown = {k: v for k, v in batch.items() if k != "_files"}
            if files is not None and "_files" in batch:
                shown.update(output_file_id=None, error_file_id=None)
        return 200, shown

    def _run_batch(self, batch: dict[str, Any], end: str | None = None) -> None:
        data = self.files[batch["input_file_id"]][1].decode()
        out, errors = [], []
        todo = [ln for ln in data.splitlines() if ln.strip()]
        end = end or self.settings.get("batch_end_status", "completed")
        if end in ("expired", "cancelled"):  # it ended with half of the lines answered
            todo = todo[: len(todo) // 2]
        for n, raw in enumerate(todo):
            line = json.loads(raw)
            status, body = self.line_answer(line["url"], line["body"])
            if status == 200:
                out.append({"id": f"batch_req_{n}", "custom_id": line["custom_id"],
                            "response": {"status_code": 200, "request_id": f"req_{n}",
                                         "body": body}, "error": None})
            else:
                errors.append({"id": f"batch_req_{n}", "custom_id": line["custom_id"],
                               "response": {"status_code": status, "request_id": f"req_{n}",
                                            "body": body}, "error": None})
        text = "".join(json.dumps(x) + "\n" for x in out).encode()
        if out and self.settings.get("batch_output_spoil"):  # a provider's broken output file
            first = json.dumps(out[0])
            text = (b"not json at all\n" + text + json.dumps({**out[0], "custom_id": "nobody-1"})
                    .encode() + b"\n" + first.encode() + b"\n" + first[:40].encode())
        out_id = self.add_file("output.jsonl", text)["id"]
        err_id = self.add_file("errors.jsonl", "".join(json.dumps(x) + "\n" for x in errors)
                               .encode())["id"] if errors else None
        with self.lock:
            batch.update(status=end, output_file_id=out_id, error_file_id=err_id,
                         completed_at=int(time.time()),
                         request_counts={"total": len(out) + len(errors), "completed": len(out),
                                         "failed": len(errors)})
            lag = int(self.settings.get("batch_files_lag") or 0)
            if lag:
                batch["_files"] = (self.batch_polls_of[batch["id"]] + lag, out_id, err_id)

    def line_answer(self, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, response body) for one batch line: the same answer the request would get
        from the endpoint itself (default or scripted), or a 400 for a kind in
        `batch_fail_kinds`."""
        prompt = self.prompt_of(url, body)
        kind = self.kind_of(prompt)
        with self.lock:
            self.batch_lines += 1
            self.log.append((time.monotonic(), kind, body))
        failing = self.settings["batch_fail_kinds"].get(kind)
        if failing:
            return 400, {"error": {"message": failing, "type": "invalid_request_error"}}
        entry = self.scripted(kind)
        if isinstance(entry, str):
            entry = {"text": entry}
        entry = entry or {}
        if "status" in entry:
            return int(entry["status"]), entry.get("body") or {
                "error": {"message": f"scripted {entry['status']}", "type": "server_error"}}
        if "text" in entry:
            text, tokens = entry["text"], len(entry["text"].split())
        else:
            text, kind, tokens = self.answer(url, body)
        with self.lock:
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        usage = {"prompt_tokens": len(prompt) // 4 + 1, "completion_tokens": tokens,
                 "total_tokens": len(prompt) // 4 + 1 + tokens}
        finish = entry.get("finish_reason", "stop")
        if url.endswith("chat/completions"):
            return 200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": body.get(
                "model"), "choices": [{"index": 0, "finish_reason": finish, "message": {
                    "role": "assistant", "content": text}}], "usage": usage}
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": body.get("model"),
                     "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                  "logprobs": None}], "usage": usage}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the client's delayed ACK
            # adds ~40 ms to every response, which would be charged to the engine.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:
                    pass
                with server.lock:
                    server.connections.discard(self.connection)

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None,
                      raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, etype: str = "server_error",
                       headers: dict[str, str] | None = None) -> None:
                with server.lock:
                    server.statuses.append(status)
                self._send(status, {"error": {"message": message, "type": etype}}, headers)

            def _batch_api(self, method: str) -> bool:
                """Serve /v1/files and /v1/batches; False for any other path."""
                path = self.path.split("?")[0].rstrip("/")
                if "/files" not in path and "/batches" not in path:
                    return False
                raw = b""
                if method == "POST":
                    raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api_key = server.settings["api_key"]
                if api_key and self.headers.get("Authorization", "") != f"Bearer {api_key}":
                    self._error(401, "Incorrect API key provided", "invalid_request_error")
                    return True
                parts = path.split("/")
                if not server.settings.get("batch_api", True):  # a server without it
                    self._error(404, f"no route {self.path}", "not_found")
                    return True
                if method == "POST" and path.endswith("/files"):
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() +
                        b"\r\n\r\n" + raw)
                    fields = {part.get_param("name", header="content-disposition"): part
                              for part in message.iter_parts()}
                    if "file" not in fields:
                        self._error(400, "no file in the upload", "invalid_request_error")
                        return True
                    purpose = fields["purpose"].get_content().strip() if "purpose" in fields \
                        else "batch"
                    stored = server.add_file(fields["file"].get_filename() or "input",
                                             fields["file"].get_payload(decode=True), purpose)
                    if not self._answer_lost_or_late("upload"):  # stored either way
                        self._send(200, stored)
                elif method == "GET" and (path.endswith("/files") or
                                          path.endswith("/batches")) and \
                        server._take("batch_list_fail"):  # the look itself fails
                    self._error(503, "injected 503 on list")
                elif method == "GET" and path.endswith("/files"):
                    wanted = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                    with server.lock:
                        listed = [f for f in server.file_info.values()
                                  if f["purpose"] in wanted.get("purpose", [f["purpose"]])]
                    listed.sort(key=lambda f: int(f["id"].split("-")[1]), reverse=True)
                    self._send(200, {"object": "list", "data": listed, "has_more": False})
                elif method == "GET" and path.endswith("/batches"):
                    with server.lock:
                        listed = [{k: v for k, v in b.items() if not k.startswith("_")}
                                  for b in server.batches.values()]
                    listed.sort(key=lambda b: int(b["id"].split("_")[1]), reverse=True)
                    self._send(200, {"object": "list", "data": listed, "has_more": False})
                elif method == "GET" and path.endswith("/content") and \
                        server.settings.get("batch_files_gone"):  # deleted or expired files
                    with server.lock:
                        server.settings["batch_files_gone"] -= 1
                    self._error(404, f"No such File object: {parts[-2]}", "invalid_request_error")
                elif method == "GET" and path.endswith("/content") and parts[-2] in server.files:
                    data = server.files[parts[-2]][1]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif method == "POST" and path.endswith("/batches"):
                    refusal = server.settings.get("batch_create_error")
                    if refusal:
                        self._send(int(refusal.get("status", 400)), {"error": {
                            "message": refusal.get("message", "refused"),
                            "type": "invalid_request_error", "param": refusal.get("param"),
                            "code": refusal.get("code")}})
                        return True
                    created = server.create_batch(json.loads(raw or b"{}"))
                    if not self._answer_lost_or_late("create"):  # created either way
                        self._send(*created)
                elif method == "GET" and parts[-2] == "batches":
                    failing = server.settings.get("batch_poll_status")
                    hang = server.settings.get("batch_poll_hang")
                    if hang:  # the poll gets no answer (counted as it arrives)
                        with server.lock:
                            server.batch_poll_hangs += 1
                        time.sleep(float(hang))
                        return True
                    with server.lock:
                        script = server.settings.get("batch_poll_script")
                        scripted = int(script.pop(0)) if script else 200
                    if scripted == 404:
                        self._error(404, f"No batch found with id '{parts[-1]}'",
                                    "invalid_request_error")
                    elif scripted != 200:
                        self._error(scripted, f"injected {scripted} on poll")
                    elif failing:  # the endpoint fails its polls (a gateway in trouble)
                        self._error(int(failing), f"injected {failing} on poll")
                    else:
                        self._send(*server.retrieve_batch(parts[-1]))
                elif method == "POST" and path.endswith("/cancel") and parts[-2] in server.batches:
                    batch = server.batches[parts[-2]]
                    if batch["status"] == "in_progress" and \
                            server.settings.get("batch_cancel_partial"):
                        server._run_batch(batch, "cancelled")  # what it answered is paid
                    with server.lock:
                        if batch["status"] == "in_progress":
                            batch["status"] = "cancelled"
                    self._send(200, batch)
                else:
                    self._error(404, f"no route {self.path}", "not_found")
                return True

            def _answer_lost_or_late(self, step: str) -> bool:
                """After the `step` ("upload", "create") was done: True when its answer is
                lost (`batch_{step}_drop`: the connection is closed); else it waits
                `batch_{step}_hang` seconds first, if set, and returns False."""
                if server._take(f"batch_{step}_drop"):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return True
                hang = server.settings.get(f"batch_{step}_hang")
                if hang:
                    time.sleep(float(hang))
                return False

            def _moved(self) -> bool:
                """`moved` = (status, base URL), set with `configure`: every request is
                answered with that redirect to the same path under the other base URL."""
                moved = server.settings.get("moved")
                if not moved:
                    return False
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, base = moved
                self._send(int(status), "", {"Location": base + self.path.removeprefix("/v1")})
                return True

            def do_GET(self) -> None:  # noqa: N802
                if self._moved() or self._batch_api("GET"):
                    return
                if self.path.rstrip("/").endswith("/models"):
                    api_key = server.settings["api_key"]  # listing models needs the key too
                    if api_key and self.headers.get("Authorization", "") != f"Bearer {api_key}":
                        self._error(401, "Incorrect API key provided", "invalid_request_error")
                        return
                    self._send(200, {"object": "list", "data": [
                        {"id": "fake-model", "object": "model", "owned_by": "tests"}]})
                else:
                    self._error(404, f"no route {self.path}", "not_found")

            def do_POST(self) -> None:  # noqa: N802
                if self._moved() or self._batch_api("POST"):
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._error(400, "invalid JSON body", "invalid_request_error")
                    return
                if self.path == "/_control":
                    server.configure(**body)
                    self._send(200, {"ok": True, "requests": server.requests})
                    return
                s = server.settings
                auth = self.headers.get("Authorization", "")
                with server.lock:
                    server.seen_auth.add(auth)
                if s["api_key"] and auth != f"Bearer {s['api_key']}":
                    self._error(401, "Incorrect API key provided", "invalid_request_error")
                    return
                if not self.path.endswith(("/completions", "/chat/completions")):
                    self._error(404, f"no route {self.path}", "not_found")
                    return
                prompt = server.prompt_of(self.path, body)
                kind = server.kind_of(prompt)
                with server.lock:
                    server.log.append((time.monotonic(), kind, body))
                if server.on_request is not None:
                    server.on_request(kind, prompt)
                rejected = s["reject_param"]
                if rejected and rejected in body:
                    self._error(400, f"Unsupported parameter: '{rejected}' is not supported "
                                     "with this model.", "invalid_request_error")
                    return
                if s["structured"] == "reject" and "response_format" in body:
                    self._error(400, "response_format of type json_schema is not supported by "
                                     "this server", "invalid_request_error")
                    return
                max_tokens = int(body.get("max_tokens") or 16)
                with server.lock:
                    server.max_tokens_seen.append(max_tokens)
                limit = s["context_limit"]
                if limit and max_tokens > limit:
                    self._error(400, f"This model's maximum context length is {limit + 100} "
                                     f"tokens, however you requested {max_tokens + 100} tokens "
                                     f"(100 in your prompt; {max_tokens} for the completion).",
                                "invalid_request_error")
                    return
                window = s["context_window"]
                prompt_tokens = len(prompt) // 4 + 1
                if window and prompt_tokens + max_tokens > window:
                    self._error(400, f"This model's maximum context length is {window} tokens, "
                                     f"however you requested {prompt_tokens + max_tokens} tokens "
                                     f"({prompt_tokens} in your prompt; {max_tokens} for the "
                                     "completion). Please reduce your prompt; or completion "
                                     "length.", "invalid_request_error")
                    return
                if s["latency"]:
                    jitter = s.get("latency_jitter") or 0.0
                    time.sleep(s["latency"] * (1 + jitter * (2 * random.random() - 1)))
                fault = server._fault()
                if fault == "down":
                    self._error(503, "service unavailable")
                    return
                if fault == "error":
                    status = s["error_status"]
                    headers = {}
                    if s["retry_after"] is not None:
                        headers["Retry-After"] = str(s["retry_after"])
                    self._error(status, "injected failure",
                                "rate_limit_error" if status == 429 else "server_error", headers)
                    return
                if fault == "hang":
                    time.sleep(s["hang_seconds"])
                if fault == "malformed":
                    self._send(200, None, raw=b'{"id": "cmpl-x", "choices": [{"te')
                    return
                entry = server.scripted(kind)
                if isinstance(entry, str):
                    entry = {"text": entry}
                entry = entry or {}
                if entry.get("hang"):
                    time.sleep(float(entry["hang"]))
                if "status" in entry:
                    self._scripted_error(entry)
                    return
                if s["thinking"] and "text" not in entry and \
                        self.path.endswith("chat/completions") and \
                        (body.get("chat_template_kwargs") or {}).get("enable_thinking") is not False:
                    entry = {"text": None, "finish_reason": "length",
                             "reasoning": "Okay, the user wants me to look at this task. First"}
                if "text" in entry:
                    text = entry["text"]
                    tokens = len((text or entry.get("reasoning") or "").split())
                else:
                    text, kind, tokens = server.answer(self.path, body)
                finish = entry.get("finish_reason", "stop")
                if fault == "truncate":
                    text, finish = text[: max(1, len(text) // 2)], "length"
                with server.lock:
                    server.by_kind[kind] = server.by_kind.get(kind, 0) + 1
                    server.statuses.append(200)
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                         "total_tokens": prompt_tokens + tokens}
                model = body.get("model", "fake-model")
                chat = self.path.endswith("chat/completions")
                shape = entry.get("shape") or ("chat" if chat else "completions")
                if shape == "chat":
                    message = {"role": "assistant", "content": text}
                    if entry.get("reasoning") is not None:
                        message["reasoning_content"] = entry["reasoning"]
                    payload = {"id": "chatcmpl-fake", "object": "chat.completion",
                               "created": int(time.time()), "model": model,
                               "choices": [{"index": 0, "finish_reason": finish,
                                            "message": message}],
                               "usage": usage}
                else:
                    payload = {"id": "cmpl-fake", "object": "text_completion",
                               "created": int(time.time()), "model": model,
                               "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                            "logprobs": None}],
                               "usage": usage}
                if entry.get("usage") is False:
                    del payload["usage"]
                self._send(200, payload)

            def _scripted_error(self, entry: dict[str, Any]) -> None:
                status = int(entry["status"])
                with server.lock:
                    server.statuses.append(status)
                body = entry.get("body", {"error": {"message": f"scripted {status}",
                                                    "type": "server_error"}})
                raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", entry.get("content_type", "application/json"))
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (entry.get("headers") or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(raw)

        return Handler


if __name__ == "__main__":  # a standalone server for manual runs and benchmarks
    import argparse

    parser = argparse.ArgumentParser(description="fake OpenAI-compatible server")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--script", default="{}", help='JSON, e.g. {"*": ["I\'m sorry."]}')
    parser.add_argument("--no-repeat", action="store_true",
                        help="scripted entries are used once, then the default answers")
    parser.add_argument("--structured", default="json", choices=["json", "ignore", "reject"])
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--context-window", type=int, default=None)
    parser.add_argument("--port", type=int, default=0,
                        help="listen on this port (0: a free one), e.g. to restart a server a "
                             "run was using")
    args = parser.parse_args()
    srv = FakeOpenAI(latency=args.latency, script=json.loads(args.script),
                     repeat_last=not args.no_repeat, structured=args.structured,
                     api_key=args.api_key, context_window=args.context_window,
                     port=args.port).start()
    print(srv.base_url, flush=True)
    try:
        srv.thread.join()
    except KeyboardInterrupt:
        srv.close()
