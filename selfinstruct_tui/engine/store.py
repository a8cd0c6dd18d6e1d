"""RunStore: one SQLite database (WAL) per run directory. Nothing the run learns is kept elsewhere.

The engine writes from one thread; readers (exports, `runs`, an attached UI) open their own
connections. Each accepted task is committed on its own before the engine counts it, so `kill -9`
loses at most the requests in flight.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.errors import UserError
from selfinstruct_tui.engine.rates import active_seconds_of
from selfinstruct_tui.engine.seeds import SeedTask, pool_instance
from selfinstruct_tui.engine.task import Task, instances_from_json, similar_from_json

PromptKind = Literal["generate", "classify", "instances"]
# Rejections that leave a candidate open: it is taken up again (later in the run or by the next
# session) instead of paying for new prompts.
OPEN_REASONS = ("abandoned", "interrupted", "surplus", "unanswered")

# The engine's work, each with when it was recorded (epoch s; `RunStore.last_activity`): a round
# started or finished, a request sent or answered, a candidate, machine task, rejection (not a
# user's drop), retry or error recorded, a batch job polled. Each reads the latest before ? among
# the table's last ACTIVITY_ROWS rows (rows are added in time order): none of these columns is
# indexed, and reading a whole table to find the latest time cost 0.66 s per column at 200k
# requests (821 MB, page cache warm; 0.010 s for the last rows), ~10x that at a million tasks.
ACTIVITY_ROWS = 5000
ACTIVITY = tuple(f"SELECT MAX({column}) FROM (SELECT {column} FROM {table}{where} ORDER BY "
                 f"rowid DESC LIMIT {ACTIVITY_ROWS}) WHERE {column} < ?" for
                 table, column, where in (
                     ("rounds", "started", ""), ("rounds", "finished", ""),
                     ("prompts", "created", ""), ("prompts", "finished", ""),
                     ("candidates", "created", ""),
                     ("tasks", "created", " WHERE origin = 'machine'"),
                     ("rejections", "created", " WHERE reason != 'dropped_by_user'"),
                     ("retries", "created", ""), ("errors", "created", ""),
                     ("batches", "updated", "")))

DB_NAME = "run.sqlite"
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    seed_id TEXT,
    name TEXT,
    instruction TEXT NOT NULL,
    is_classification INTEGER NOT NULL,
    instances TEXT NOT NULL,
    round INTEGER NOT NULL,
    prompt_id INTEGER,
    max_score REAL NOT NULL DEFAULT 0,
    most_similar TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'active',
    created REAL NOT NULL,
    updated REAL
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks(status, origin);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    prompt_id INTEGER,
    task_id INTEGER,
    candidate TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    similar_id INTEGER,
    similar_text TEXT,
    score REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    task_ref INTEGER,
    prompt TEXT NOT NULL,
    examples TEXT NOT NULL DEFAULT '[]',
    response TEXT,
    finish_reason TEXT,
    latency REAL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    prompts INTEGER NOT NULL DEFAULT 0,
    candidates INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER NOT NULL DEFAULT 0,
    rejected TEXT NOT NULL DEFAULT '{}',
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    wall_time REAL NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'running'
);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY,
    round INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    task_id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    prompt_id INTEGER,
    instruction TEXT NOT NULL,
    raw TEXT,
    state TEXT NOT NULL DEFAULT 'open',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS candidates_open ON candidates(state);
CREATE TABLE IF NOT EXISTS retries (
    id INTEGER PRIMARY KEY,
    round INTEGER,
    prompt_id INTEGER,
    cause TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    delay REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    done REAL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    transport TEXT NOT NULL,
    prompt_ids TEXT NOT NULL DEFAULT '[]',
    input_path TEXT NOT NULL,
    input_file_id TEXT,
    batch_id TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    output_path TEXT,
    error_path TEXT,
    state TEXT NOT NULL DEFAULT 'preparing',
    status TEXT NOT NULL DEFAULT '',
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    task_id INTEGER PRIMARY KEY,
    sample INTEGER NOT NULL,
    position INTEGER NOT NULL,
    instance_index INTEGER NOT NULL,
    answer_instruction INTEGER,
    answer_input INTEGER,
    answer_output INTEGER,
    skipped INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
-- The run's pauses (epoch seconds; ended NULL: still paused, or the process ended paused):
-- the elapsed time leaves them out
CREATE TABLE IF NOT EXISTS pauses (
    started REAL NOT NULL,
    ended REAL
);
"""

# Columns added after schema version 1; a run made before them gains them when opened for writing
# (readers of an old run see the defaults).
MIGRATIONS = (
    ("rejections", "level", "TEXT NOT NULL DEFAULT 'candidate'"),
    ("rejections", "raw", "TEXT"),
    ("rounds", "surplus", "INTEGER NOT NULL DEFAULT 0"),
    ("rounds", "retries", "TEXT NOT NULL DEFAULT '{}'"),
    ("rounds", "instances_dropped", "TEXT NOT NULL DEFAULT '{}'"),
    ("rounds", "requests", "INTEGER NOT NULL DEFAULT 0"),
    ("rounds", "usage_missing", "INTEGER NOT NULL DEFAULT 0"),
    ("prompts", "attempts", "INTEGER NOT NULL DEFAULT 1"),
    ("prompts", "usage_reported", "INTEGER NOT NULL DEFAULT 1"),
    ("prompts", "structured", "INTEGER NOT NULL DEFAULT 0"),
    ("rejections", "max_score", "REAL"),
    ("rounds", "pool_after", "INTEGER"),
    # Seed origin: "file", "added" or "promoted" (NULL: a run made before it, read as "file"),
    # and the machine task a promoted seed came from.
    ("tasks", "seed_origin", "TEXT"),
    ("tasks", "source_task", "INTEGER"),
    # Which endpoint (base URL, never the key) and model answered a request (NULL: older runs)
    ("prompts", "endpoint", "TEXT"),
    ("prompts", "model", "TEXT"),
    # Which endpoint (base URL) a retried attempt or a failed request went to (NULL: unknown)
    ("retries", "endpoint", "TEXT"),
    ("errors", "endpoint", "TEXT"),
    # The base URL a batch was created at (NULL: the offline command, or an older run)
    ("batches", "endpoint", "TEXT"),
    # A batch the endpoint answers 404 for: when the polls in a row that got a 404 began (epoch
    # seconds; NULL: the last answer was not a 404) and how many they are
    ("batches", "not_found_since", "REAL"),
    ("batches", "not_found_polls", "INTEGER NOT NULL DEFAULT 0"),
    # A batch the endpoint refused as a whole for a reason every job of the run would meet
    # (its validation refused the model, the endpoint path, the file): what, and what to change
    ("batches", "refusal", "TEXT NOT NULL DEFAULT ''"),
    # answers whose usage says the endpoint cut the prompt to fit its context (llm.prompt_was_cut)
    ("rounds", "prompts_cut", "INTEGER NOT NULL DEFAULT 0"),
)
# prompts.endpoint of an answer of the offline batch command: this, then the command template
COMMAND_ENDPOINT = "command: "
PENDING_SEEDS = "pending_seeds"  # meta: the seed set the next round uses (seed_to_record each)


@dataclass(frozen=True)
class BatchRecord:
    """One batch job: a stage (`kind`) of round `round` sent as one file.

    `state` is ours: preparing (input written, nothing paid yet), submitted (the endpoint holds a
    batch: `batch_id` set), downloaded (the output and error files are saved at `output_path` /
    `error_path`), settled (every line's answer reached its request record), cancelled,
    abandoned (never submitted), lost (the endpoint answered 404 for its batch id, or a file of
    it, long enough to be believed: its requests were sent again). `status` is the endpoint's
    (validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled) or
    the command's. `total`, `completed`, `failed`: the endpoint's request counts.
    `created`/`updated`: epoch seconds.
    `not_found_polls`: the polls in a row the endpoint answered 404 (0: the last answer was
    another), the first of them at `not_found_since` (epoch seconds; kept across sessions).
    `refusal`: why the endpoint refused the whole batch for a reason every job of the run would
    meet, and what to change ("" for any other end): its requests fail fatally, the run stops.
    """

    id: int
    round: int
    kind: str
    transport: str
    prompt_ids: tuple[int, ...]
    input_path: str
    input_file_id: str | None = None
    batch_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    output_path: str | None = None
    error_path: str | None = None
    state: str = "preparing"
    status: str = ""
    total: int = 0
    completed: int = 0
    failed: int = 0
    message: str = ""
    created: float = 0.0
    updated: float = 0.0
    endpoint: str | None = None  # the base URL that holds the batch (None: the offline command)
    not_found_since: float | None = None
    not_found_polls: int = 0
    refusal: str = ""

    @property
    def pending(self) -> bool:
        """Paid for (or possibly paid for) and its answers not yet read."""
        return self.state in ("preparing", "submitted", "downloaded")


BATCH_FIELDS = ("input_file_id", "batch_id", "output_file_id", "error_file_id", "output_path",
                "error_path", "state", "status", "total", "completed", "failed", "message",
                "endpoint", "not_found_since", "not_found_polls", "refusal")


@dataclass
class RoundStats:
    """One round's accounting. Times: `started`/`finished` epoch seconds, `wall_time` seconds.

    candidates = accepted + rejected (by reason) + surplus, once the round is done. `retries`
    counts retries by cause, `instances_dropped` single instances dropped by reason (their task
    may still be accepted), `requests` the requests the round sent, `usage_missing` how many
    answers carried no token usage (their tokens are estimates), `prompts_cut` how many answers'
    usage says the endpoint cut their prompt to fit its context window (kept all the same).
    """

    round: int
    started: float
    finished: float | None = None
    prompts: int = 0
    candidates: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    wall_time: float = 0.0
    status: str = "running"
    surplus: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    instances_dropped: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    usage_missing: int = 0
    prompts_cut: int = 0
    pool_after: int | None = None  # machine tasks in the pool when the round finished
    # requests recorded that never left (a stop came while they waited for a slot): not paid
    # for. This session's count, not stored (the prompts' errors say it: "abandoned before
    # sending")
    unsent: int = 0

    @property
    def rejected_total(self) -> int:
        return sum((self.rejected or {}).values())

    @property
    def settled(self) -> dict[str, int]:
        """`rejected` by the reasons that end a candidate (OPEN_REASONS left out)."""
        return {k: v for k, v in (self.rejected or {}).items() if k not in OPEN_REASONS}

    @property
    def kept_open(self) -> dict[str, int]:
        """`rejected` by the reasons that leave a candidate open, taken up again (abandoned,
        unanswered, interrupted; surplus has its own count)."""
        return {k: v for k, v in (self.rejected or {}).items() if k in OPEN_REASONS}

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.candidates if self.candidates else 0.0

    @property
    def unaccounted(self) -> int:
        """Candidates not (yet) accepted, rejected or surplus: 0 for a finished round."""
        return self.candidates - self.accepted - self.rejected_total - self.surplus


# SQLite's result codes (and extended codes under them) for a database that cannot be written:
# the disk is full, an I/O error, a read-only file or file system. No later write can succeed
# until the user acts (https://www.sqlite.org/rescode.html).
_UNWRITABLE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")


class _WatchedConnection(sqlite3.Connection):
    """A connection that reports a write failing for a storage reason (`_UNWRITABLE`) to
    `watch` before raising it, wherever the write was: an INSERT that needed a new page, a
    commit (the deferred one runs as an event-loop callback, where nobody catches it), or a
    `with db:` block's."""

    watch: Callable[[sqlite3.Error], None] | None = None

    def _seen(self, exc: sqlite3.Error) -> None:
        name = getattr(exc, "sqlite_errorname", "") or ""
        if self.watch is not None and name.startswith(_UNWRITABLE):
            self.watch(exc)

    def execute(self, *args: Any) -> sqlite3.Cursor:
        try:
            return super().execute(*args)
        except sqlite3.Error as exc:
            self._seen(exc)
            raise

    def executemany(self, *args: Any) -> sqlite3.Cursor:
        try:
            return super().executemany(*args)
        except sqlite3.Error as exc:
            self._seen(exc)
            raise

    def commit(self) -> None:
        try:
            super().commit()
        except sqlite3.Error as exc:
            self._seen(exc)
            raise

    def __exit__(self, *exc_info: Any) -> Literal[False]:
        try:
            return super().__exit__(*exc_info)
        except sqlite3.Error as exc:
            self._seen(exc)
            raise


class _Deferrable:
    """`RunStore._deferrable`'s context manager: a class rather than a generator because it
    wraps ~3 writes per request (a generator-based one cost ~1.5 us more each)."""

    __slots__ = ("store",)

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        self.store._after_write(kind is not None)


@dataclass(frozen=True)
class PromptRecord:
    """One request as recorded: what was asked and, once `finished` (epoch seconds), the answer
    or the `error` that ended it. `latency` in seconds; tokens as reported or, when
    `usage_reported` is False, estimated. `examples`: (task id, origin, instruction) shown."""

    id: int
    round: int
    kind: PromptKind
    prompt: str
    examples: tuple[tuple[int, str, str], ...]
    task_ref: int | None
    created: float
    response: str | None = None
    finish_reason: str | None = None
    latency: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    finished: float | None = None
    attempts: int = 1
    usage_reported: bool = True
    structured: bool = False
    endpoint: str | None = None  # the base URL that answered (never the key); None: unknown
    model: str | None = None  # the model asked for there


@dataclass(frozen=True)
class RejectionRecord:
    """A rejected candidate (`level` "candidate") or a dropped instance ("instance", with the
    task's id): its `RejectionReason` value, detail, the raw fragment of the answer, and for near
    duplicates the task it collided with."""

    id: int
    round: int
    candidate: str
    reason: str
    detail: str
    prompt_id: int | None = None
    task_id: int | None = None
    similar_id: int | None = None
    similar_text: str | None = None
    score: float | None = None
    max_score: float | None = None
    level: str = "candidate"
    raw: str | None = None
    created: float = 0.0


@dataclass(frozen=True)
class CandidateFates:
    """Where the candidates of a run ended, by task id: `accepted` (machine tasks), `ended`
    (a final rejection), `open` (to be taken up), `moved` (settled without an end of its own:
    taken up under a later id, the id here)."""

    accepted: set[int]
    ended: set[int]
    open: set[int]
    moved: dict[int, int]


@dataclass(frozen=True)
class CandidateRecord:
    """A candidate that passed the filters (or would have, had the run not stopped), under the
    task id it was given. `open` until it is accepted or rejected: a stop or a crash leaves it
    open, and the next session takes it up again instead of paying for it twice."""

    task_id: int
    round: int
    prompt_id: int | None
    instruction: str
    raw: str | None
    created: float = 0.0


@dataclass(frozen=True)
class RetryRecord:
    """A failed attempt that was retried: its cause, the attempt number, the wait (s) after it,
    the endpoint (base URL, never the key) the attempt went to (None: unknown), `created` epoch
    seconds."""

    id: int
    round: int | None
    prompt_id: int | None
    cause: str
    attempt: int
    delay: float
    message: str
    created: float
    endpoint: str | None = None


@dataclass(frozen=True)
class ErrorRecord:
    """A request that failed for good, with the cause (`kind`), the message and the endpoint
    (base URL) its last attempt went to (None: unknown or not a request); `created` epoch s."""

    id: int
    round: int | None
    kind: str
    message: str
    created: float
    endpoint: str | None = None


# The three questions of the paper's quality review (Wang et al. 2022, Table 2), by the field
# of a task each one judges: is the instruction a valid task, is the input appropriate for it,
# is the output a correct and acceptable response.
ReviewQuestion = Literal["instruction", "input", "output"]
REVIEW_QUESTIONS: tuple[ReviewQuestion, ...] = ("instruction", "input", "output")


@dataclass(frozen=True)
class ReviewRecord:
    """One sampled task of a quality review: the instance shown (`instance_index`, 0-based, into
    the task's instances), the answers (`answers[q]`: True yes, False no, None not yet asked) in
    the order of `REVIEW_QUESTIONS`, and whether the reviewer skipped it. `sample` numbers the
    draw it came from (1, 2, ... as samples are added), `position` its place in the review
    order; `seq` grows with every write to the reviews table (a follower picks up after it);
    `updated` epoch seconds."""

    task_id: int
    sample: int
    position: int
    instance_index: int
    answers: tuple[bool | None, bool | None, bool | None] = (None, None, None)
    skipped: bool = False
    seq: int = 0
    updated: float = 0.0

    def answer(self, question: ReviewQuestion) -> bool | None:
        return self.answers[REVIEW_QUESTIONS.index(question)]

    @property
    def next_question(self) -> ReviewQuestion | None:
        """The first question not answered yet; None once all are (or the task was skipped)."""
        if self.skipped:
            return None
        for question, answer in zip(REVIEW_QUESTIONS, self.answers, strict=True):
            if answer is None:
                return question
        return None

    @property
    def done(self) -> bool:
        """Answered on all three questions, or skipped."""
        return self.next_question is None

    @property
    def passed(self) -> bool:
        """Reviewed (not skipped) with "yes" on all three questions."""
        return not self.skipped and all(a is True for a in self.answers)


def db_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DB_NAME


RUN_TABLES = frozenset({"meta", "tasks"})  # what a readable run database holds at least


def is_run_dir(run_dir: str | Path) -> bool:
    return db_path(run_dir).exists()


class RunStore:
    def __init__(self, run_dir: str | Path, *, readonly: bool = False) -> None:
        self.run_dir = Path(run_dir)
        path = db_path(self.run_dir)
        if readonly and not path.exists():
            raise UserError(f"{self.run_dir}: not a run directory (no {DB_NAME} in it)")
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                          check_same_thread=False)
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.db = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                          factory=_WatchedConnection)
                os.chmod(path, 0o600)
        except sqlite3.Error as exc:
            raise UserError(f"{path}: cannot open the run database: {exc}") from None
        self.db.row_factory = sqlite3.Row
        # The first storage failure of a write, said (see `unwritable`), and who is told
        self.unwritable: str | None = None
        self.on_unwritable: Callable[[str], None] | None = None
        if isinstance(self.db, _WatchedConnection):
            self.db.watch = self._cannot_write
        self._defer: Callable[[Callable[[], None]], object] | None = None
        self._defer_thread: int | None = None
        self._flush_due = False
        self._write = _Deferrable(self)
        self._flushes = 0
        try:
            tables = {r[0] for r in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise UserError(f"{path}: not a readable run database ({exc}); restore it from a "
                            "backup or start a new run in another directory") from None
        if readonly and not tables >= RUN_TABLES:
            # an empty file (a run killed while creating it) or another program's database:
            # every read failed with "no such table" (`runs` with a traceback for every run)
            self.db.close()
            raise UserError(f"{path}: not a run database (no run tables in it: "
                            f"{'an empty file' if not tables else 'another SQLite database'}); "
                            "restore it from a backup or start a new run in another directory")
        if not readonly and tables and not tables & RUN_TABLES:
            # another program's database at the run's path: the run's tables were added to it
            self.db.close()
            raise UserError(f"{path}: another SQLite database, not a run's (no run tables in "
                            "it); it is left as it is. Choose another --run-dir")
        if not readonly:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._migrate()
            self._set_meta_default("schema_version", str(SCHEMA_VERSION))
            self.db.commit()

    def close(self) -> None:
        self.flush()
        self.db.close()

    # -- commits ----------------------------------------------------------------------------------
    def defer_commits(self, schedule: Callable[[Callable[[], None]], object] | None) -> None:
        """Group commits: a deferrable write made on this thread joins the open transaction,
        and `schedule(self.flush)` (an event loop's `call_soon`) commits it once the loop has
        run what is ready, with every other write of that iteration; a write that cannot wait
        commits at once, with whatever is pending. Commits stay in order: whatever is committed
        has everything written before it.

        Deferrable: a request's record (its sender waits until `pending` clears, so a request
        never leaves unrecorded), its answer or failure, candidates, rejections, accepted tasks.
        A crash before the commit is a crash a moment earlier: the answer's request is
        recovered as interrupted and its candidates stay open for the next session. Not
        deferred: batches, meta, seeds, commands, reviews, errors, retries.

        Why: a transaction cost ~70 us to begin and ~80 us to commit in the engine (cold caches
        between requests), ~1.7 of them per request. `None` ends grouping and commits what is
        pending."""
        self.flush()
        self._defer = schedule
        self._defer_thread = threading.get_ident() if schedule is not None else None

    @property
    def pending(self) -> bool:
        """Deferred writes wait for a commit (see `defer_commits`)."""
        return self._flush_due

    @property
    def flushes(self) -> int:
        """How many times `flush` ran: a write made before a change of this number is
        committed."""
        return self._flushes

    def flush(self) -> None:
        """Commit what deferred writes left pending (see `defer_commits`). Once the store is
        `unwritable` a failed commit is rolled back quietly: it was said, and the deferred
        commit runs as an event-loop callback, where an exception is only a logged traceback."""
        self._flush_due = False
        if self.db.in_transaction:
            try:
                self.db.commit()
            except sqlite3.Error:
                if self.unwritable is None:
                    raise
                with contextlib.suppress(sqlite3.Error):
                    self.db.rollback()
        self._flushes += 1

    def _cannot_write(self, exc: sqlite3.Error) -> None:
        """A write failed for a storage reason: `unwritable` says so once, naming the run's
        file, the free space left and the fix, and `on_unwritable` is told (the engine stops
        at once: every later answer could not be recorded, and would be paid for again)."""
        if self.unwritable is not None:
            return
        path = db_path(self.run_dir)
        try:
            disk = os.statvfs(self.run_dir)
            free = f"{disk.f_bavail * disk.f_frsize / 1e6:.1f} MB free there"
        except OSError:
            free = "its free space unknown"
        self.unwritable = (
            f"the run store {path} cannot be written ({exc}; {free}): the run stopped at "
            "once (no answer could be recorded, so no request is sent). What was recorded "
            "before is kept; free space (or fix the disk or its permissions), then resume")
        if self.on_unwritable is not None:
            self.on_unwritable(self.unwritable)

    def _deferrable(self) -> _Deferrable:
        """A write that may wait for `flush` when commits are deferred on this thread (a
        context manager); on an error the open transaction is rolled back (with what was
        pending) and the error raised."""
        return self._write

    def _after_write(self, failed: bool) -> None:
        if failed:
            self._flush_due = False
            self.db.rollback()
        elif self._defer is None or threading.get_ident() != self._defer_thread:
            self.db.commit()
        elif not self._flush_due:
            self._flush_due = True
            self._defer(self.flush)

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[None]:
        """Reads inside see one consistent state of the database (WAL snapshot)."""
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def _migrate(self) -> None:
        for table, column, decl in MIGRATIONS:
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                        (str(SCHEMA_VERSION),))

    # -- meta -----------------------------------------------------------------------------------
    def _set_meta_default(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                        (key, json.dumps(value)))
        self.db.commit()

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def config(self) -> RunConfig | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        return RunConfig.from_json(row[0]) if row else None

    def save_config(self, cfg: RunConfig) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('config', ?)",
                        (cfg.to_json(),))
        self.db.commit()

    # -- tasks ----------------------------------------------------------------------------------
    def insert_task(self, task: Task) -> None:
        """Commit an accepted task (its candidate, if any, is settled in the same transaction;
        deferrable, see `defer_commits`)."""
        with self._deferrable():
            self._insert_task(task)
            self._settle(task.id)

    # -- candidates ---------------------------------------------------------------------------
    def add_candidate(self, c: CandidateRecord) -> None:
        with self._deferrable():
            self.db.execute(
                "INSERT OR REPLACE INTO candidates(task_id, round, prompt_id, instruction, raw, "
                "state, created) VALUES (?,?,?,?,?, 'open', ?)",
                (c.task_id, c.round, c.prompt_id, c.instruction, c.raw, c.created or time.time()))

    def settle_candidate(self, task_id: int) -> None:
        with self._deferrable():
            self._settle(task_id)

    def _settle(self, task_id: int | None) -> None:
        if task_id is not None:
            self.db.execute("UPDATE candidates SET state = 'done' WHERE task_id = ?", (task_id,))

    def open_candidates(self) -> list[CandidateRecord]:
        """Candidates left open by a stop or a crash, oldest first."""
        try:
            rows = self.db.execute("SELECT * FROM candidates WHERE state = 'open' "
                                   "ORDER BY task_id").fetchall()
        except sqlite3.OperationalError:  # a run made before candidates were recorded
            return []
        return [CandidateRecord(r["task_id"], r["round"], r["prompt_id"], r["instruction"],
                                r["raw"], r["created"]) for r in rows]

    def classification_answer(self, task_id: int) -> str | None:
        """The latest classification answer already received for a candidate, if any."""
        row = self.db.execute(
            "SELECT response FROM prompts WHERE task_ref = ? AND kind = 'classify' AND "
            "response IS NOT NULL ORDER BY id DESC LIMIT 1", (task_id,)).fetchone()
        return row[0] if row else None

    def instances_answer(self, task_id: int) -> str | None:
        """The latest instance answer already received for a candidate, if any."""
        row = self.db.execute(
            "SELECT response FROM prompts WHERE task_ref = ? AND kind = 'instances' AND "
            "response IS NOT NULL ORDER BY id DESC LIMIT 1", (task_id,)).fetchone()
        return row[0] if row else None

    # -- batch jobs -----------------------------------------------------------------------------
    def add_batch(self, *, round: int, kind: str, transport: str, prompt_ids: list[int],
                  input_path: str) -> BatchRecord:
        """Record a batch job before anything is uploaded or run (state "preparing")."""
        now = time.time()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO batches(round, kind, transport, prompt_ids, input_path, created, "
                "updated) VALUES (?,?,?,?,?,?,?)",
                (round, kind, transport, json.dumps(prompt_ids), input_path, now, now))
        return BatchRecord(int(cur.lastrowid or 0), round, kind, transport, tuple(prompt_ids),
                           input_path, created=now, updated=now)

    def update_batch(self, record: BatchRecord, **changes: Any) -> BatchRecord:
        """Change fields of BATCH_FIELDS, committed at once (a batch id is on disk before the
        first poll). Raises ValueError for another field."""
        unknown = set(changes) - set(BATCH_FIELDS)
        if unknown:
            raise ValueError(f"not batch fields: {sorted(unknown)}")
        done = replace(record, updated=time.time(), **changes)
        cols = ", ".join(f"{k} = ?" for k in changes)
        with self.db:
            self.db.execute(f"UPDATE batches SET {cols}, updated = ? WHERE id = ?",
                            (*changes.values(), done.updated, record.id))
        return done

    def batches(self, *, pending_only: bool = False) -> list[BatchRecord]:
        """Batch jobs in creation order; `pending_only`: those whose answers are not read yet."""
        try:
            rows = self.db.execute("SELECT * FROM batches ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # a run made before batch mode
            return []
        out = [BatchRecord(
            r["id"], r["round"], r["kind"], r["transport"], tuple(json.loads(r["prompt_ids"])),
            r["input_path"], r["input_file_id"], r["batch_id"], r["output_file_id"],
            r["error_file_id"], r["output_path"], r["error_path"], r["state"], r["status"],
            r["total"], r["completed"], r["failed"], r["message"], r["created"], r["updated"],
            _get(r, "endpoint", None), _get(r, "not_found_since", None),
            _get(r, "not_found_polls", 0), _get(r, "refusal", "")) for r in rows]
        return [b for b in out if b.pending] if pending_only else out

    def round_status(self, number: int) -> str | None:
        """A round's status (running, done, stopped, interrupted); None: no such round."""
        row = self.db.execute("SELECT status FROM rounds WHERE round = ?", (number,)).fetchone()
        return row[0] if row else None

    def max_used_id(self) -> int:
        """The largest task id given to anything: tasks, candidates, requests' task refs."""
        ids = [self.max_task_id()]
        for sql in ("SELECT COALESCE(MAX(task_id), 0) FROM candidates",
                    "SELECT COALESCE(MAX(task_ref), 0) FROM prompts"):
            try:
                ids.append(self.db.execute(sql).fetchone()[0])
            except sqlite3.OperationalError:
                pass
        return max(ids)

    def last_activity(self, before: float | None = None) -> float | None:
        """When (epoch seconds) the run's engine last recorded work: a round started or
        finished, a request sent or answered, a candidate, task, rejection, retry or error
        recorded, a batch job polled; only times before `before` (epoch seconds; None: all).
        None: nothing recorded. What users do to a run (seed sets, drops, edits, review
        answers) is not the engine's work and does not count. Where the time of a session
        that crashed, and so recorded no end, ends (`recover_interrupted`, and the elapsed
        time of a crashed run)."""
        bound = math.inf if before is None else before
        times = []
        for sql in ACTIVITY:
            try:
                times.append(self.db.execute(sql, (bound,)).fetchone()[0])
            except sqlite3.OperationalError:  # (a table an older run, opened read-only, lacks)
                pass
        return max((t for t in times if t is not None), default=None)

    def recover_interrupted(self, before: float | None = None) -> list[int]:
        """After a crash: requests recorded and never finished get their reason, and rounds
        left `running` are closed with what the store shows of them (their open candidates
        that the round has not already recorded, as surplus or unanswered, are recorded as
        `interrupted`), so every round adds up. Returns the rounds closed.

        The rule for the time of the session that crashed: it ran up to its last recorded
        activity (`last_activity(before)`, `before`: when the recovering session started,
        epoch seconds; None: now), no more and no less. Its open rounds and requests end
        then (never before a round's start or a request's sending), and a round's
        `wall_time` is its span less the pauses in it. They ended when the next session
        recovered them: the time between the crash and the resume counted as run time (a
        run resumed 7 s after a kill -9 showed 7 s more than it ran)."""
        now = time.time()
        end = self.last_activity(now if before is None else before)
        end = now if end is None else end
        pauses = self.pauses()
        closed = []
        with self.db:
            # its attempts: the one in flight and each one retried before it
            self.db.execute("UPDATE prompts SET error = 'interrupted: the process ended before "
                            "the answer', finished = MAX(created, ?), attempts = 1 + (SELECT "
                            "COUNT(*) FROM retries r WHERE r.prompt_id = prompts.id) WHERE "
                            "finished IS NULL", (end,))
            for number, started in self.db.execute(
                    "SELECT round, started FROM rounds WHERE status = 'running'").fetchall():
                for c in self.db.execute(
                        "SELECT * FROM candidates c WHERE round = ? AND state = 'open' AND NOT "
                        "EXISTS (SELECT 1 FROM rejections r WHERE r.round = c.round AND "
                        "r.task_id = c.task_id AND r.level = 'candidate')",
                        (number,)).fetchall():
                    self._insert_rejection(RejectionRecord(
                        0, number, c["instruction"], "interrupted",
                        "the process ended before this candidate was done; taken up again "
                        "by the next session", prompt_id=c["prompt_id"], task_id=c["task_id"],
                        raw=c["raw"], created=now))
                finished = max(started, end)
                self._recount_round(number, "interrupted", finished)
                self.db.execute("UPDATE rounds SET wall_time = ? WHERE round = ?",
                                (active_seconds_of([(started, finished)], pauses, finished),
                                 number))
                closed.append(number)
        return closed

    def recount_round(self, number: int, status: str) -> None:
        """Recompute a round's accounting from its records (answers that arrived after it
        finished, e.g. a batch read by a later session) and set its status. Its finish time
        stays: a later session's reading is not the round's run time (it moved the round's
        end to that session, and the elapsed time counted the time between)."""
        with self.db:
            self._recount_round(number, status, None)

    def _recount_round(self, number: int, status: str, finished: float | None) -> None:
        """`finished`: the round's end (epoch s); None: the one recorded (now if none)."""
        accepted = self.db.execute(
            "SELECT COUNT(*) FROM tasks WHERE round = ? AND origin = 'machine'",
            (number,)).fetchone()[0]
        rejected = {r[0]: r[1] for r in self.db.execute(
            "SELECT reason, COUNT(*) FROM rejections WHERE round = ? AND level = "
            "'candidate' AND reason NOT IN ('surplus', 'dropped_by_user') "
            "GROUP BY reason", (number,))}
        surplus = self.db.execute(
            "SELECT COUNT(*) FROM rejections WHERE round = ? AND reason = 'surplus'",
            (number,)).fetchone()[0]
        tokens = self.db.execute(
            "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
            " COUNT(*) FROM prompts WHERE round = ?", (number,)).fetchone()
        retries = {r[0]: r[1] for r in self.db.execute(
            "SELECT cause, COUNT(*) FROM retries WHERE round = ? GROUP BY cause", (number,))}
        self.db.execute(
            "UPDATE rounds SET status = ?, finished = COALESCE(?, finished, ?), accepted = ?, "
            "rejected = ?, surplus = ?, candidates = ?, prompt_tokens = ?, "
            "completion_tokens = ?, requests = ?, retries = ? WHERE round = ?",
            (status, finished, time.time(), accepted, json.dumps(rejected), surplus,
             accepted + sum(rejected.values()) + surplus, tokens[0], tokens[1],
             tokens[2], json.dumps(retries), number))

    def _insert_task(self, task: Task) -> None:
        self.db.execute(
            "INSERT INTO tasks(id, origin, seed_id, name, instruction, is_classification, "
            "instances, round, prompt_id, max_score, most_similar, status, created, "
            "seed_origin, source_task) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (task.id, task.origin, task.seed_id, task.name, task.instruction,
             int(task.is_classification), task.instances_json(), task.round, task.prompt_id,
             task.max_score, task.most_similar_json(), task.status, task.created or time.time(),
             task.seed_origin, task.source_task),
        )

    def replace_seeds(self, new: list[Task]) -> None:
        """Seeds that are not in `new` are marked removed; `new` ones are inserted."""
        with self.db:
            self.db.execute("UPDATE tasks SET status = 'removed', updated = ? "
                            "WHERE origin = 'seed' AND status = 'active'", (time.time(),))
            for task in new:
                self._insert_task(task)

    # -- the seed set: pending, applied, promoted and demoted -------------------------------------
    def pending_seeds(self) -> list[dict[str, Any]] | None:
        """The seed set waiting for the next round (`seed_to_record` dicts), or None."""
        return self.get_meta(PENDING_SEEDS)

    def set_pending_seeds(self, records: list[dict[str, Any]]) -> None:
        """Record the seed set the next round uses (committed at once: a crash keeps it)."""
        self.set_meta(PENDING_SEEDS, records)

    def apply_seed_set(self, new: list[Task], applied: list[dict[str, Any]] | None = None
                       ) -> tuple[list[Task], list[Task]]:
        """Make `new` (seed tasks with fresh ids) the seed set, in one transaction: the active
        seeds are marked removed and `new` inserted; an active machine task named by a new
        seed's `source_task` leaves the pool (status "promoted"); a promoted machine task that
        no new seed names comes back as an active machine task, with the content its seed had
        (demoted). The pending-seeds meta is cleared when it still holds `applied` (the records
        `new` was made from; a newer pending set stays). Returns (promoted, demoted) tasks as
        they are now.

        The seeds before the first one the edit changed keep their task rows and ids (`new` is
        updated in place with them): adding a seed at the end, or promoting a task, no longer
        gives every seed a new id, so provenance ("seed #12" in a prompt) stays true and an edit
        adds rows only from its first change on. (Ids past that point are new: the seed set's
        order is the order of its ids.) The rows inserted take the ids from `new`'s first one on
        (renumbered in place): the ids `new` held for the seeds that kept theirs are not left
        unused (an edit at the end of 139 seeds made the next machine task's id jump by 139)."""
        now = time.time()
        wanted = {t.source_task for t in new if t.source_task is not None}
        promoted: list[Task] = []
        demoted: list[Task] = []
        with self.db:
            active = list(map(_task, self.db.execute(
                "SELECT * FROM tasks WHERE origin = 'seed' AND status = 'active' ORDER BY id")))
            old_seeds = {t.source_task: t for t in active if t.source_task is not None}
            first_id = new[0].id if new else 0
            same = 0
            while same < min(len(active), len(new)) and \
                    _seed_content(active[same]) == _seed_content(new[same]):
                new[same] = active[same]
                same += 1
            for n, task in enumerate(new[same:]):
                task.id = first_id + n
            for task in active[same:]:
                self.db.execute("UPDATE tasks SET status = 'removed', updated = ? WHERE id = ?",
                                (now, task.id))
            for task in new[same:]:
                self._insert_task(task)
            for row in self.db.execute(
                    "SELECT * FROM tasks WHERE origin = 'machine' AND status IN "
                    "('active', 'promoted') AND id IN (SELECT source_task FROM tasks WHERE "
                    "source_task IS NOT NULL) ORDER BY id").fetchall():
                task = _task(row)
                if task.status == "active" and task.id in wanted:
                    task.status = "promoted"
                    self.db.execute("UPDATE tasks SET status = 'promoted', updated = ? "
                                    "WHERE id = ?", (now, task.id))
                    promoted.append(task)
                elif task.status == "promoted" and task.id not in wanted:
                    seed = old_seeds.get(task.id)
                    if seed is not None:  # the seed's content, as the user last edited it
                        task.instruction = seed.instruction
                        task.instances = list(seed.instances)
                        task.is_classification = seed.is_classification
                    task.status = "active"
                    self.db.execute(
                        "UPDATE tasks SET status = 'active', instruction = ?, "
                        "is_classification = ?, instances = ?, updated = ? WHERE id = ?",
                        (task.instruction, int(task.is_classification), task.instances_json(),
                         now, task.id))
                    demoted.append(task)
            row = self.db.execute("SELECT value FROM meta WHERE key = ?",
                                  (PENDING_SEEDS,)).fetchone()
            if row is not None and (applied is None or json.loads(row[0]) == applied):
                self.db.execute("DELETE FROM meta WHERE key = ?", (PENDING_SEEDS,))
        return promoted, demoted

    def update_task(self, task: Task) -> None:
        with self.db:
            self.db.execute(
                "UPDATE tasks SET instruction = ?, is_classification = ?, instances = ?, "
                "status = ?, updated = ? WHERE id = ?",
                (task.instruction, int(task.is_classification), task.instances_json(),
                 task.status, time.time(), task.id))

    def tasks(self, *, status: str | None = "active", origin: str | None = None,
              after_id: int = 0) -> list[Task]:
        sql = "SELECT * FROM tasks WHERE id > ?"
        args: list[Any] = [after_id]
        if status:
            sql += " AND status = ?"
            args.append(status)
        if origin:
            sql += " AND origin = ?"
            args.append(origin)
        return [_task(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def task_rows(self) -> list[tuple[int, int, str, int, int, float, str]]:
        """Active tasks as (id, round, origin, is_classification, instances, max_score,
        instruction), without decoding JSON: what a list view needs, fast at 100k tasks."""
        return self.db.execute(
            "SELECT id, round, origin, is_classification, json_array_length(instances), "
            "max_score, instruction FROM tasks WHERE status = 'active' ORDER BY id").fetchall()

    def iter_tasks(self, origin: str | None = None) -> Iterator[Task]:
        sql = "SELECT * FROM tasks WHERE status = 'active'"
        args: list[Any] = []
        if origin:
            sql += " AND origin = ?"
            args.append(origin)
        for row in self.db.execute(sql + " ORDER BY id", args):
            yield _task(row)

    def task(self, task_id: int) -> Task | None:
        row = self.db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _task(row) if row else None

    def count_tasks(self, origin: str = "machine") -> int:
        return self.db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'active' AND origin = ?",
                               (origin,)).fetchone()[0]

    def max_task_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM tasks").fetchone()[0]

    def accepted_since(self, since: float) -> list[float]:
        """When (epoch s) each machine task accepted at or after `since` (epoch s) was."""
        return [r[0] for r in self.db.execute(
            "SELECT created FROM tasks WHERE origin = 'machine' AND created >= ?", (since,))]

    def answered_since(self, since: float) -> list[tuple[float, int, int]]:
        """(epoch s, prompt tokens, completion tokens) of each answer received at or after
        `since` (epoch s)."""
        return [(r[0], r[1], r[2]) for r in self.db.execute(
            "SELECT finished, prompt_tokens, completion_tokens FROM prompts WHERE finished >= ? "
            "AND response IS NOT NULL", (since,))]

    def open_candidate_ids(self, up_to: int) -> set[int]:
        """Ids (<= `up_to`) of candidates still open. A candidate accepted later (taken up
        again in a later round or session) becomes a task under its own id, below tasks
        accepted since: a reader that follows tasks by id must look these up too."""
        try:
            return {r[0] for r in self.db.execute(
                "SELECT task_id FROM candidates WHERE state = 'open' AND task_id <= ?", (up_to,))}
        except sqlite3.OperationalError:  # a run made before candidates were recorded
            return set()

    def tasks_by_id(self, ids: Iterable[int], status: str = "active") -> list[Task]:
        """The tasks of `ids` with `status`, by id."""
        return [_task(r) for r in self.db.execute(
            "SELECT * FROM tasks WHERE id IN (SELECT value FROM json_each(?)) AND status = ? "
            "ORDER BY id", (json.dumps(sorted(ids)), status))]

    def task_changes(self, since: float, origin: str = "machine") -> list[tuple[int, str, float]]:
        """(id, status, updated epoch s) of tasks of `origin` changed at or after `since`."""
        return [tuple(r) for r in self.db.execute(
            "SELECT id, status, updated FROM tasks WHERE updated >= ? AND origin = ?",
            (since, origin))]

    def drop_task(self, task_id: int, detail: str = "dropped in the inspector"
                  ) -> tuple[Task, RejectionRecord] | None:
        """Mark an active task dropped and record why, in one transaction; None if it is not
        active. Used by the engine, and by an offline control when no engine runs."""
        task = self.task(task_id)
        if task is None or task.status != "active":
            return None
        task.status = "dropped"
        now = time.time()
        with self.db:
            self.db.execute("UPDATE tasks SET status = 'dropped', updated = ? WHERE id = ?",
                            (now, task_id))
            record = self._insert_rejection(RejectionRecord(
                0, task.round, task.instruction, "dropped_by_user", detail,
                prompt_id=task.prompt_id, task_id=task_id, created=now))
        return task, record

    def edit_task(self, task_id: int, instruction: str, instances: list[Any],
                  is_classification: bool) -> Task | None:
        """Change an active task's instruction, instances and flag in one transaction."""
        task = self.task(task_id)
        if task is None or task.status != "active":
            return None
        task.apply_edit(instruction, instances, is_classification)
        self.update_task(task)
        return task

    # -- rejections -------------------------------------------------------------------------------
    def add_rejection(self, record: RejectionRecord) -> RejectionRecord:
        """Record a rejection; returns it with its id and time. A candidate rejected for good
        is settled in the same transaction (abandoned ones stay open for the next session)."""
        with self._deferrable():
            if record.level == "candidate" and record.reason not in OPEN_REASONS:
                self._settle(record.task_id)
            return self._insert_rejection(record)

    def _insert_rejection(self, r: RejectionRecord) -> RejectionRecord:
        created = r.created or time.time()
        cur = self.db.execute(
            "INSERT INTO rejections(round, prompt_id, task_id, candidate, reason, detail, "
            "similar_id, similar_text, score, created, level, raw, max_score) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (r.round, r.prompt_id, r.task_id, r.candidate, r.reason, r.detail, r.similar_id,
             r.similar_text, r.score, created, r.level, r.raw, r.max_score))
        return replace(r, id=int(cur.lastrowid or 0), created=created)

    def rejections_after(self, after_id: int = 0, limit: int | None = None
                         ) -> list[RejectionRecord]:
        sql = "SELECT * FROM rejections WHERE id > ? ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_rejection(r) for r in self.db.execute(sql, (after_id,))]

    def recent_rejections(self, n: int) -> list[RejectionRecord]:
        """The last `n` rejections, oldest first."""
        rows = self.db.execute("SELECT * FROM (SELECT * FROM rejections ORDER BY id DESC "
                               "LIMIT ?) ORDER BY id", (n,))
        return [_rejection(r) for r in rows]

    def iter_rejections(self) -> Iterator[RejectionRecord]:
        for row in self.db.execute("SELECT * FROM rejections ORDER BY id"):
            yield _rejection(row)

    def candidate_fates(self) -> CandidateFates:
        """Where each candidate ended (`CandidateFates`), for the rejections export."""
        placeholders = ",".join("?" * len(OPEN_REASONS))
        return CandidateFates(
            accepted={tid for (tid,) in self.db.execute(
                "SELECT id FROM tasks WHERE origin = 'machine'")},
            ended={tid for (tid,) in self.db.execute(
                f"SELECT task_id FROM rejections WHERE level = 'candidate' AND task_id IS NOT "
                f"NULL AND reason NOT IN ({placeholders})", OPEN_REASONS)},
            open={tid for (tid,) in self.db.execute(
                "SELECT task_id FROM candidates WHERE state = 'open'")},
            # same answer, same text, a later id: where a candidate whose id was taken went on
            moved=dict(self.db.execute(
                "SELECT a.task_id, MIN(b.task_id) FROM candidates a JOIN candidates b ON "
                "b.prompt_id IS a.prompt_id AND b.instruction = a.instruction AND "
                "b.task_id > a.task_id WHERE a.state != 'open' GROUP BY a.task_id")))

    def rejection_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT reason, COUNT(*) FROM rejections GROUP BY reason")}

    def max_ids(self) -> dict[str, int]:
        """The largest id of each append-only table (0 when empty, absent when missing)."""
        out = {}
        for table in ("tasks", "rejections", "prompts", "retries", "errors"):
            try:
                out[table] = self.db.execute(
                    f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
            except sqlite3.OperationalError:  # a run made before that table existed
                pass
        return out

    # -- prompts --------------------------------------------------------------------------------
    def add_prompt(self, *, round: int, kind: PromptKind, prompt: str,
                   examples: tuple[tuple[int, str, str], ...] = (),
                   task_ref: int | None = None) -> PromptRecord:
        """Record a request before it is sent (so it is visible while in flight). Deferrable
        (see `defer_commits`): the sender waits for `pending` to clear before sending."""
        created = time.time()
        shown = json.dumps([{"id": i, "origin": o, "instruction": t} for i, o, t in examples],
                           ensure_ascii=False) if examples else "[]"
        with self._deferrable():
            cur = self.db.execute(
                "INSERT INTO prompts(round, kind, task_ref, prompt, examples, created) "
                "VALUES (?,?,?,?,?,?)", (round, kind, task_ref, prompt, shown, created))
        return PromptRecord(int(cur.lastrowid or 0), round, kind, prompt, tuple(examples),
                            task_ref, created)

    def finish_prompt(self, record: PromptRecord, *, response: str | None,
                      finish_reason: str | None = None, latency: float = 0.0,
                      prompt_tokens: int = 0, completion_tokens: int = 0,
                      error: str | None = None, attempts: int = 1, usage_reported: bool = True,
                      structured: bool = False, endpoint: str | None = None,
                      model: str | None = None) -> PromptRecord:
        """Record a request's outcome; returns the finished record. `latency` in seconds;
        tokens as reported, or estimates when `usage_reported` is False; `error` names why
        there is no response; `endpoint` (base URL) and `model`: who answered."""
        # Every field by keyword (dataclasses.replace cost ~6 us more per request)
        done = PromptRecord(id=record.id, round=record.round, kind=record.kind,
                            prompt=record.prompt, examples=record.examples,
                            task_ref=record.task_ref, created=record.created, response=response,
                            finish_reason=finish_reason, latency=latency,
                            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                            error=error, finished=time.time(), attempts=attempts,
                            usage_reported=usage_reported, structured=structured,
                            endpoint=endpoint, model=model)
        with self._deferrable():
            self.db.execute(
                "UPDATE prompts SET response = ?, finish_reason = ?, latency = ?, "
                "prompt_tokens = ?, completion_tokens = ?, error = ?, finished = ?, "
                "attempts = ?, usage_reported = ?, structured = ?, endpoint = ?, model = ? "
                "WHERE id = ?",
                (response, finish_reason, latency, prompt_tokens, completion_tokens, error,
                 done.finished, attempts, int(usage_reported), int(structured), endpoint, model,
                 record.id))
        return done

    def unanswered_prompts(self, kind: str) -> dict[int, int]:
        """Requests of `kind` recorded without an answer (failed, abandoned, interrupted), per
        round."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT round, COUNT(*) FROM prompts WHERE kind = ? AND response IS NULL "
            "GROUP BY round", (kind,))}

    def answered_by(self, task_id: int, prompt_id: int | None) -> list[tuple[str, str | None,
                                                                             str | None]]:
        """Who answered the requests that made a task: (kind, endpoint base URL, model) for its
        generation prompt and its classification and instance requests, in order sent (None:
        not recorded, a run made before the columns)."""
        try:
            rows = self.db.execute(
                "SELECT kind, endpoint, model FROM prompts WHERE (id = ? OR task_ref = ?) AND "
                "response IS NOT NULL ORDER BY id", (prompt_id or -1, task_id)).fetchall()
        except sqlite3.OperationalError:
            return []
        return [(r[0], r[1], r[2]) for r in rows]

    def endpoints_used(self) -> list[tuple[str, str | None, int]]:
        """(endpoint base URL, model, answers) for every endpoint that answered, most first; one
        endpoint however its URL was spelled (a trailing slash, `config.endpoint_key`)."""
        try:
            rows = self.db.execute(
                "SELECT CASE WHEN substr(endpoint, 1, ?) = ? THEN endpoint ELSE "
                "RTRIM(endpoint, '/') END AS url, model, COUNT(*) FROM prompts WHERE endpoint "
                "IS NOT NULL AND response IS NOT NULL GROUP BY url, model ORDER BY COUNT(*) DESC, "
                "url", (len(COMMAND_ENDPOINT), COMMAND_ENDPOINT)).fetchall()
        except sqlite3.OperationalError:  # a run made before the column, opened read-only
            return []
        return [(r[0], r[1], r[2]) for r in rows]

    def prompt(self, prompt_id: int) -> PromptRecord | None:
        row = self.db.execute("SELECT * FROM prompts WHERE id = ?", (prompt_id,)).fetchone()
        return _prompt(row) if row else None

    def prompts_after(self, after_id: int) -> list[PromptRecord]:
        return [_prompt(r) for r in self.db.execute(
            "SELECT * FROM prompts WHERE id > ? ORDER BY id", (after_id,))]

    def prompts_by_id(self, ids: list[int]) -> list[PromptRecord]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return [_prompt(r) for r in self.db.execute(
            f"SELECT * FROM prompts WHERE id IN ({marks}) ORDER BY id", ids)]

    def unfinished_prompts(self) -> list[PromptRecord]:
        """Requests recorded and not finished: in flight, or lost with a crashed process."""
        return [_prompt(r) for r in self.db.execute(
            "SELECT * FROM prompts WHERE finished IS NULL ORDER BY id")]

    def latest_answered(self, kind: str = "generate") -> PromptRecord | None:
        # The last to finish, as a live screen saw it (requests finish out of order).
        row = self.db.execute("SELECT * FROM prompts WHERE kind = ? AND response IS NOT NULL "
                              "ORDER BY finished DESC, id DESC LIMIT 1", (kind,)).fetchone()
        return _prompt(row) if row else None

    def usage_missing(self) -> int:
        """How many answers carried no token usage (their token counts are estimates)."""
        try:
            return self.db.execute("SELECT COUNT(*) FROM prompts WHERE usage_reported = 0 "
                                   "AND response IS NOT NULL").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    def token_totals(self) -> tuple[int, int]:
        row = self.db.execute(
            "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
            "FROM prompts").fetchone()
        return int(row[0]), int(row[1])

    # -- retries and errors ---------------------------------------------------------------------
    def add_retry(self, *, round: int | None, prompt_id: int | None, cause: str, attempt: int,
                  delay: float, message: str, endpoint: str | None = None) -> RetryRecord:
        """Record one retry: its cause, the attempt that failed, the wait before the next (s),
        the endpoint (base URL) the failed attempt went to."""
        created = time.time()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO retries(round, prompt_id, cause, attempt, delay, message, created, "
                "endpoint) VALUES (?,?,?,?,?,?,?,?)",
                (round, prompt_id, cause, attempt, delay, message, created, endpoint))
        return RetryRecord(int(cur.lastrowid or 0), round, prompt_id, cause, attempt, delay,
                           message, created, endpoint)

    def retries_after(self, after_id: int) -> list[RetryRecord]:
        try:
            rows = self.db.execute("SELECT * FROM retries WHERE id > ? ORDER BY id", (after_id,))
            return [RetryRecord(r["id"], r["round"], r["prompt_id"], r["cause"], r["attempt"],
                                r["delay"], r["message"], r["created"],
                                _get(r, "endpoint", None)) for r in rows]
        except sqlite3.OperationalError:  # a run made before retries were recorded
            return []

    def retry_counts(self) -> dict[str, int]:
        try:
            return {r[0]: r[1] for r in self.db.execute(
                "SELECT cause, COUNT(*) FROM retries GROUP BY cause")}
        except sqlite3.OperationalError:
            return {}

    def add_error(self, round: int | None, kind: str, message: str,
                  endpoint: str | None = None) -> ErrorRecord:
        """Record a request that failed for good (or another error of the run: `kind` names
        it); `endpoint`: the base URL its last attempt went to."""
        created = time.time()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO errors(round, kind, message, created, endpoint) VALUES (?,?,?,?,?)",
                (round, kind, message, created, endpoint))
        return ErrorRecord(int(cur.lastrowid or 0), round, kind, message, created, endpoint)

    def errors_after(self, after_id: int = 0) -> list[ErrorRecord]:
        return [ErrorRecord(r["id"], r["round"], r["kind"], r["message"], r["created"],
                            _get(r, "endpoint", None))
                for r in self.db.execute("SELECT * FROM errors WHERE id > ? ORDER BY id",
                                         (after_id,))]

    # -- control channel (attached UIs -> engine) ----------------------------------------------
    def add_command(self, command: str, args: dict | None = None) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO commands(command, args, created) VALUES (?,?,?)",
                                  (command, json.dumps(args or {}, ensure_ascii=False),
                                   time.time()))
        return int(cur.lastrowid or 0)

    def pending_commands(self) -> list[tuple[int, str, dict]]:
        rows = self.db.execute(
            "SELECT id, command, args FROM commands WHERE done IS NULL ORDER BY id").fetchall()
        return [(r[0], r[1], json.loads(r[2] or "{}")) for r in rows]

    def mark_command_done(self, command_id: int) -> None:
        with self.db:
            self.db.execute("UPDATE commands SET done = ? WHERE id = ?", (time.time(), command_id))

    # -- rounds ---------------------------------------------------------------------------------
    def start_round(self, stats: RoundStats) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO rounds(round, started, prompts, status) "
                            "VALUES (?,?,?, 'running')", (stats.round, stats.started,
                                                          stats.prompts))

    def finish_round(self, s: RoundStats) -> None:
        with self.db:
            self.db.execute(
                "UPDATE rounds SET finished = ?, prompts = ?, candidates = ?, accepted = ?, "
                "rejected = ?, prompt_tokens = ?, completion_tokens = ?, cost = ?, wall_time = ?, "
                "status = ?, surplus = ?, retries = ?, instances_dropped = ?, requests = ?, "
                "usage_missing = ?, prompts_cut = ?, pool_after = ? WHERE round = ?",
                (s.finished, s.prompts, s.candidates, s.accepted, json.dumps(s.rejected or {}),
                 s.prompt_tokens, s.completion_tokens, s.cost, s.wall_time, s.status, s.surplus,
                 json.dumps(s.retries), json.dumps(s.instances_dropped), s.requests,
                 s.usage_missing, s.prompts_cut, s.pool_after, s.round))

    def rounds(self, since: int = 0) -> list[RoundStats]:
        return [_round(r) for r in self.db.execute(
            "SELECT * FROM rounds WHERE round > ? ORDER BY round", (since,))]

    def start_pause(self, at: float) -> None:
        """The run paused at `at` (epoch seconds); a pause already open is left as it is."""
        with self.db:
            if self.db.execute("SELECT 1 FROM pauses WHERE ended IS NULL").fetchone() is None:
                self.db.execute("INSERT INTO pauses(started) VALUES (?)", (at,))

    def end_pause(self, at: float) -> None:
        """The pause open (if any) ended at `at` (epoch seconds)."""
        with self.db:
            self.db.execute("UPDATE pauses SET ended = MAX(started, ?) WHERE ended IS NULL",
                            (at,))

    def pauses(self) -> list[tuple[float, float | None]]:
        """(started, ended) of every pause, in order (epoch seconds; ended None: open). A run
        made before pauses were recorded, read-only, has none."""
        try:
            return [(r[0], r[1]) for r in self.db.execute(
                "SELECT started, ended FROM pauses ORDER BY started")]
        except sqlite3.OperationalError:  # (no such table: an older run, opened read-only)
            return []

    def max_round(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()[0]

    # -- quality review (sampled tasks and their answers) ---------------------------------------
    def add_review_sample(self, items: list[tuple[int, int]]) -> list[ReviewRecord]:
        """Append (task id, instance index) pairs to the review, in order, as the next sample,
        in one transaction. Tasks already in the review keep their place and answers (they are
        left out). Returns the records added."""
        now = time.time()
        with self.db:
            sample, position, seq = self.db.execute(
                "SELECT COALESCE(MAX(sample), 0) + 1, COALESCE(MAX(position), 0), "
                "COALESCE(MAX(seq), 0) FROM reviews").fetchone()
            added = []
            for task_id, instance_index in items:
                seq += 1
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO reviews(task_id, sample, position, instance_index, "
                    "seq, created, updated) VALUES (?,?,?,?,?,?,?)",
                    (task_id, sample, position + 1, instance_index, seq, now, now))
                if cur.rowcount:
                    position += 1
                    added.append(ReviewRecord(task_id, sample, position, instance_index,
                                              seq=seq, updated=now))
        return added

    def answer_review(self, task_id: int, question: ReviewQuestion, answer: bool
                      ) -> ReviewRecord | None:
        """Record a yes (True) or no (False) to one question about a sampled task (an answer
        un-skips it); None if the task is not in the review. ValueError for an unknown
        question."""
        if question not in REVIEW_QUESTIONS:
            raise ValueError(f"unknown review question {question!r}: one of "
                             f"{', '.join(REVIEW_QUESTIONS)}")
        with self.db:
            cur = self.db.execute(
                f"UPDATE reviews SET answer_{question} = ?, skipped = 0, updated = ?, "
                "seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM reviews) WHERE task_id = ?",
                (int(answer), time.time(), task_id))
        return self.review(task_id) if cur.rowcount else None

    def skip_review(self, task_id: int) -> ReviewRecord | None:
        """Mark a sampled task skipped (answers given so far are kept); None if it is not in
        the review."""
        with self.db:
            cur = self.db.execute(
                "UPDATE reviews SET skipped = 1, updated = ?, "
                "seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM reviews) WHERE task_id = ?",
                (time.time(), task_id))
        return self.review(task_id) if cur.rowcount else None

    def review(self, task_id: int) -> ReviewRecord | None:
        row = self.db.execute("SELECT * FROM reviews WHERE task_id = ?", (task_id,)).fetchone()
        return _review(row) if row else None

    def reviews(self, after_seq: int = 0) -> list[ReviewRecord]:
        """The review's sampled tasks in review order; with `after_seq`, only those written
        after it. Empty for a run made before reviews existed."""
        try:
            rows = self.db.execute("SELECT * FROM reviews WHERE seq > ? ORDER BY position",
                                   (after_seq,)).fetchall()
        except sqlite3.OperationalError:  # a run made before reviews were recorded
            return []
        return [_review(r) for r in rows]

    def max_review_seq(self) -> int:
        try:
            return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM reviews").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def _review(row: sqlite3.Row) -> ReviewRecord:
    def answer(value: int | None) -> bool | None:
        return None if value is None else bool(value)

    return ReviewRecord(
        task_id=row["task_id"], sample=row["sample"], position=row["position"],
        instance_index=row["instance_index"],
        answers=(answer(row["answer_instruction"]), answer(row["answer_input"]),
                 answer(row["answer_output"])),
        skipped=bool(row["skipped"]), seq=row["seq"], updated=row["updated"])


def _task(row: sqlite3.Row) -> Task:
    return Task(
        id=row["id"], origin=row["origin"], instruction=row["instruction"],
        is_classification=bool(row["is_classification"]),
        instances=instances_from_json(row["instances"]), round=row["round"],
        prompt_id=row["prompt_id"], max_score=row["max_score"],
        most_similar=similar_from_json(row["most_similar"]), status=row["status"],
        seed_id=row["seed_id"], name=row["name"], created=row["created"],
        seed_origin=_get(row, "seed_origin", None), source_task=_get(row, "source_task", None),
    )


def _get(row: sqlite3.Row, key: str, default: Any) -> Any:
    return row[key] if key in row.keys() else default  # noqa: SIM118 - a Row's `in` is values


def _round(row: sqlite3.Row) -> RoundStats:
    return RoundStats(
        round=row["round"], started=row["started"], finished=row["finished"],
        prompts=row["prompts"], candidates=row["candidates"], accepted=row["accepted"],
        rejected=json.loads(row["rejected"] or "{}"), prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], cost=row["cost"],
        wall_time=row["wall_time"], status=row["status"],
        surplus=_get(row, "surplus", 0), retries=json.loads(_get(row, "retries", "{}") or "{}"),
        instances_dropped=json.loads(_get(row, "instances_dropped", "{}") or "{}"),
        requests=_get(row, "requests", 0), usage_missing=_get(row, "usage_missing", 0),
        pool_after=_get(row, "pool_after", None), prompts_cut=_get(row, "prompts_cut", 0),
    )


def _rejection(row: sqlite3.Row) -> RejectionRecord:
    return RejectionRecord(
        id=row["id"], round=row["round"], candidate=row["candidate"], reason=row["reason"],
        detail=row["detail"], prompt_id=row["prompt_id"], task_id=row["task_id"],
        similar_id=row["similar_id"], similar_text=row["similar_text"], score=row["score"],
        max_score=_get(row, "max_score", None), level=_get(row, "level", "candidate"),
        raw=_get(row, "raw", None), created=row["created"])


def _prompt(row: sqlite3.Row) -> PromptRecord:
    examples = tuple((e["id"], e["origin"], e["instruction"])
                     for e in json.loads(row["examples"] or "[]"))
    return PromptRecord(
        id=row["id"], round=row["round"], kind=row["kind"], prompt=row["prompt"],
        examples=examples, task_ref=row["task_ref"], created=row["created"],
        response=row["response"], finish_reason=row["finish_reason"],
        latency=row["latency"] or 0.0, prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], error=row["error"],
        finished=row["finished"], attempts=_get(row, "attempts", 1),
        usage_reported=bool(_get(row, "usage_reported", 1)),
        structured=bool(_get(row, "structured", 0)), endpoint=_get(row, "endpoint", None),
        model=_get(row, "model", None))


def _seed_content(task: Task) -> tuple[Any, ...]:
    """What makes two seed tasks the same seed (everything but the id and the times)."""
    return (task.instruction, task.is_classification, task.instances_json(), task.seed_id,
            task.name, task.seed_origin, task.source_task)


def seed_tasks_to_pool(seeds: list[SeedTask], first_id: int) -> list[Task]:
    now = time.time()
    return [
        Task(id=first_id + i, origin="seed", instruction=s.instruction.strip(),
             is_classification=s.is_classification,
             instances=[pool_instance(x.input, x.output) for x in s.instances], round=0,
             seed_id=s.id, name=s.name, created=now, seed_origin=s.origin,
             source_task=s.source_task)
        for i, s in enumerate(seeds)
    ]
