"""Exports of a run's machine-generated tasks (dropped tasks are never exported).

* self-instruct: JSONL like the original machine_generated_instructions.jsonl, plus instances
* alpaca: a JSON list of {instruction, input, output}, one row per instance
* openai-chat: JSONL of {"messages": [...]} for chat fine-tuning
* sharegpt: JSONL of {"conversations": [{"from": "human"|"gpt", "value"}]}
* rejections: JSONL of every rejected candidate and dropped instance: round, level, reason,
  detail, the candidate, the raw fragment of the model's answer, the task and prompt ids, the
  near duplicate it collided with, and the row's `outcome` (`rejection_outcomes`): a candidate
  kept open (surplus, unanswered, abandoned, interrupted) is taken up later, so its row is not
  its end

With a quality review in the run (engine/review.py), self-instruct rows of sampled tasks carry a
"review" object (the sampled instance, one answer per question, skipped, passed), and
`reviewed_only` keeps only the tasks that passed it: yes on all three questions, every instance
of such a task kept (the review judged one random instance, as the paper did).

An export written to a file gets its run metadata beside it, `<file>.meta.json` (`run_metadata`):
the model, the API and every endpoint that answered (base URL, model, answers; never a key).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from selfinstruct_tui.engine.errors import UserError
from selfinstruct_tui.engine.fsutil import (
    OutputField,
    atomic_writer,
    check_output_path,
    utf8_stdout,
)
from selfinstruct_tui.engine.placeholders import normalize_input
from selfinstruct_tui.engine.review import review_label
from selfinstruct_tui.engine.store import (
    COMMAND_ENDPOINT,
    OPEN_REASONS,
    RejectionRecord,
    ReviewRecord,
    RunStore,
)
from selfinstruct_tui.engine.task import Task

FORMATS = ("self-instruct", "alpaca", "openai-chat", "sharegpt", "rejections")
EXTENSIONS = {"self-instruct": "jsonl", "alpaca": "json", "openai-chat": "jsonl",
              "sharegpt": "jsonl", "rejections": "jsonl"}


def user_turn(instruction: str, inp: str) -> str:
    inp = normalize_input(inp)
    return f"{instruction}\n\n{inp}" if inp else instruction


def _self_instruct(task: Task, tokenizer: str) -> dict:
    return {
        "id": task.id,
        "instruction": task.instruction,
        "is_classification": task.is_classification,
        "instances": [{"input": normalize_input(i.input), "output": i.output}
                      for i in task.instances],
        "most_similar": {s.instruction: s.score for s in task.most_similar},
        "avg_similarity_score": (sum(s.score for s in task.most_similar) / len(task.most_similar)
                                 if task.most_similar else 0.0),
        "max_similarity_score": task.max_score,
        "similarity_tokenizer": tokenizer,
        "round": task.round,
    }


def iter_rows(tasks: Iterable[Task], fmt: str, tokenizer: str = "rouge",
              reviews: dict[int, ReviewRecord] | None = None) -> Iterator[dict]:
    """Export rows of `tasks`; `reviews` (task id -> its review record) labels the
    self-instruct rows of reviewed tasks."""
    for task in tasks:
        if fmt == "self-instruct":
            row = _self_instruct(task, tokenizer)
            if reviews and task.id in reviews:
                row["review"] = review_label(reviews[task.id])
            yield row
            continue
        for inst in task.instances:
            if fmt == "alpaca":
                yield {"instruction": task.instruction, "input": normalize_input(inst.input),
                       "output": inst.output}
            elif fmt == "openai-chat":
                yield {"messages": [
                    {"role": "user", "content": user_turn(task.instruction, inst.input)},
                    {"role": "assistant", "content": inst.output}]}
            elif fmt == "sharegpt":
                yield {"conversations": [
                    {"from": "human", "value": user_turn(task.instruction, inst.input)},
                    {"from": "gpt", "value": inst.output}]}
            else:
                raise ValueError(f"unknown export format {fmt!r}")


def write_rows(rows: Iterable[dict], fmt: str, fh: IO[str]) -> int:
    count = 0
    if fmt == "alpaca":
        fh.write("[")
        for count, row in enumerate(rows, start=1):
            fh.write(("\n  " if count == 1 else ",\n  ") + json.dumps(row, ensure_ascii=False))
        fh.write("\n]\n" if count else "]\n")
        return count
    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


# Files of a run directory that an export must never replace.
RUN_FILES = ("run.sqlite", "run.sqlite-wal", "run.sqlite-shm", "run.log", "engine.pid",
             "engine.lock", "seeds.jsonl",
             *(f"llama-server{suffix}.{ext}" for suffix in ("", "-classify", "-instances")
               for ext in ("log", "pid")))


class ExportWording(NamedTuple):
    """How the user gave an export's settings, as the messages that say what to change name
    them: the command line's flags (`CLI_WORDING`) or the TUI export dialog's fields
    (`DIALOG_WORDING`: its user never typed `-o` or `--reviewed-only`)."""

    output: OutputField  # the output path
    reviewed_only: str  # the "only reviewed tasks" option
    leave_it_out: str  # how to turn it off ("leave it out")
    leave_out_reviewed: str  # the same, naming it
    review_first: str  # how to review a sample
    more_tasks: str  # how to get more tasks into the run


CLI_WORDING = ExportWording(OutputField("-o"), "--reviewed-only", "leave it out",
                            "leave out --reviewed-only",
                            "key r in the TUI", "resume with a higher --target")
REVIEWED_ONLY_LABEL = "only tasks that passed the quality review"  # the dialog's check box
DIALOG_WORDING = ExportWording(
    OutputField("path", flag=False), f"'{REVIEWED_ONLY_LABEL}'", "untick it",
    f"untick '{REVIEWED_ONLY_LABEL}'", "key r on the main screen",  # (r does nothing in the dialog)
    "quit, then resume the run with a higher target")


class ExportRefused(UserError):
    """An export setting that cannot be used; `setting` says which: "path" (the output path,
    `check_target`) or "reviewed_only" (only reviewed tasks, `check_reviewed_only`), so that a
    dialog can show the message beside that field."""

    def __init__(self, message: str, setting: Literal["path", "reviewed_only"]) -> None:
        super().__init__(message)
        self.setting = setting


def check_target(run_dir: str | Path, path: Path, field: OutputField = CLI_WORDING.output) -> None:
    """Refuse an export path that would destroy something: one of the run's own files, or an
    existing path that is not a regular file (`check_output_path`). ExportRefused (setting
    "path") naming `field`, where the path was given."""
    target = path.resolve()
    if target.parent == Path(run_dir).resolve() and target.name in RUN_FILES:
        raise ExportRefused(f"{path}: is one of the run's own files; {field.another()}", "path")
    try:
        check_output_path(path, field)
    except UserError as exc:
        raise ExportRefused(str(exc), "path") from None


class Exported(NamedTuple):
    """What an export wrote: its path ("-": stdout), its rows (a row per instance in the
    alpaca, openai-chat and sharegpt formats; per task in self-instruct; per rejection) and the
    tasks in them (None for the rejections format); `replaced`: the files that were there and
    were replaced, the data file and/or its `.meta.json` (said: an earlier export is derived
    from the store and loses nothing, but the file may have been something else)."""

    path: Path
    rows: int
    tasks: int | None
    notes: tuple[str, ...] = ()  # what the file's consumer will refuse (`consumer_notes`)
    replaced: tuple[Path, ...] = ()

    @property
    def counted(self) -> str:
        """e.g. "300 tasks in 808 rows", or "808 rows" where rows are tasks (or rejections)."""
        if self.tasks is not None and self.tasks != self.rows:
            return f"{self.tasks} tasks in {self.rows} rows"
        return f"{self.rows} rows"


def export_run(run_dir: str | Path, fmt: str, output: str | Path | None,
               stdout: IO[str] | None = None, reviewed_only: bool = False,
               wording: ExportWording = CLI_WORDING) -> Exported:
    """Write the export atomically (or to `stdout` when `output` is "-"), with its metadata
    beside it (`.meta.json`: the run's, the format, rows, tasks, the similarity tokenizer).
    `reviewed_only`: only tasks that passed the quality review. ExportRefused (a UserError
    naming the setting at fault) for a target that must not be written, or `reviewed_only`
    where it cannot apply (the rejections format, a run without a review); its message, and
    the export's notes, name the settings as `wording` does (the CLI's flags, or the TUI
    dialog's fields)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    store = RunStore(run_dir, readonly=True)
    try:
        cfg = store.config()
        tokenizer = cfg.tokenizer if cfg else "rouge"
        reviews = {r.task_id: r for r in store.reviews()}
        if reviewed_only:
            check_reviewed_only(run_dir, fmt, reviews, wording)

        exported = [0]  # tasks

        def counted(tasks: Iterable[Task]) -> Iterator[Task]:
            for task in tasks:
                exported[0] += 1
                yield task

        def rows() -> Iterable[dict]:
            if fmt == "rejections":
                outcome = rejection_outcomes(store)
                return ({**asdict(r), "outcome": outcome(r)} for r in store.iter_rejections())
            tasks = store.iter_tasks("machine")
            if reviewed_only:
                tasks = (t for t in tasks if t.id in reviews and reviews[t.id].passed)
            return iter_rows(counted(tasks), fmt, tokenizer, reviews)

        tasks = None if fmt == "rejections" else exported
        if str(output) == "-":
            with utf8_stdout(stdout) as fh:
                count = write_rows(rows(), fmt, fh)
            return Exported(Path("-"), count, tasks[0] if tasks else None,
                            consumer_notes(fmt, count, wording))
        path = Path(output) if output else Path(run_dir) / f"export-{fmt}.{EXTENSIONS[fmt]}"
        check_target(run_dir, path, wording.output)
        replaced = tuple(p for p in (path, metadata_path(path)) if p.exists())
        with atomic_writer(path) as fh:
            count = write_rows(rows(), fmt, fh)
        with atomic_writer(metadata_path(path)) as fh:
            json.dump({**run_metadata(store), "format": fmt, "rows": count,
                       "tasks": tasks[0] if tasks else None, "similarity_tokenizer": tokenizer,
                       "reviewed_only": reviewed_only}, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
    finally:
        store.close()
    return Exported(path, count, tasks[0] if tasks else None,
                    consumer_notes(fmt, count, wording), replaced)


# OpenAI's fine-tuning guide: "The minimum number of examples you can provide for fine-tuning is
# 10"; a smaller training file is refused when the job is created, after the upload.
OPENAI_MIN_EXAMPLES = 10


def consumer_notes(fmt: str, rows: int, wording: ExportWording = CLI_WORDING) -> tuple[str, ...]:
    """What the tool an export is made for will refuse in it, in sentences a user can act on
    (`wording`: the CLI's or the TUI's): an openai-chat file of fewer than 10 examples
    (OpenAI's minimum per training file)."""
    if fmt == "openai-chat" and rows < OPENAI_MIN_EXAMPLES:
        return (f"OpenAI fine-tuning needs at least {OPENAI_MIN_EXAMPLES} examples in a training "
                f"file and this one has {rows}: generate more ({wording.more_tasks}) "
                "before uploading it",)
    return ()


def rejection_outcomes(store: RunStore) -> Callable[[RejectionRecord], str]:
    """What became of each rejections row's candidate, for the export (a row per rejection is a
    log, and a candidate kept open appears again): "rejected" (this row ends it), "accepted"
    (kept open here, taken up and accepted later: it is in the task exports unless dropped by
    hand), "rejected later" (taken up and rejected: its own row says why), "open" (taken up
    when the run resumes), "instance dropped" (one instance of a task that may be accepted).
    A candidate taken up under a new id (its id was held by a seed: data of an older version)
    is followed to it. Counting final rejections by reason = rows whose outcome is "rejected"."""
    fates = store.candidate_fates()

    def outcome(r: RejectionRecord) -> str:
        if r.level != "candidate":
            return "instance dropped"
        if r.reason not in OPEN_REASONS:
            return "rejected"
        tid = r.task_id
        while tid is not None:
            if tid in fates.accepted:
                return "accepted"
            if tid in fates.ended:
                return "rejected later"
            if tid in fates.open:
                return "open"
            tid = fates.moved.get(tid)
        return "open"  # an id without a candidate row: nothing has ended it

    return outcome


def metadata_path(export: Path) -> Path:
    """Where an export's run metadata goes: beside it, `<name>.meta.json`."""
    return export.with_name(export.name + ".meta.json")


def run_metadata(store: RunStore) -> dict:
    """What produced a run's data: {"run_dir", "model", "api", "endpoints": [{"base_url",
    "model", "answers"}]} (endpoints that answered, most answers first; the configured ones
    when no answer recorded its endpoint; {"command", ...} for answers of the offline batch
    command). Base URLs only: keys are never part of it."""
    cfg = store.config()
    used = store.endpoints_used()
    if used:
        endpoints: list[dict[str, Any]] = [
            {"command": url.removeprefix(COMMAND_ENDPOINT)} if url.startswith(COMMAND_ENDPOINT)
            else {"base_url": url} for url, _, _ in used]
        for entry, (_, model, n) in zip(endpoints, used, strict=True):
            entry.update(model=model, answers=n)
    elif cfg is not None and cfg.batch_command:
        endpoints = [{"command": cfg.batch_command, "model": cfg.model, "answers": None}]
    elif cfg is not None:
        endpoints = [{"base_url": e["base_url"], "model": e["model"], "answers": None}
                     for e in cfg.endpoint_list()]
    else:
        endpoints = []
    return {"run_dir": str(Path(store.run_dir).resolve()),
            "model": cfg.model if cfg else None, "api": cfg.api if cfg else None,
            "endpoints": endpoints}


def check_reviewed_only(run_dir: str | Path, fmt: str, reviews: dict[int, ReviewRecord],
                        wording: ExportWording = CLI_WORDING) -> None:
    """UserError when "only reviewed tasks" cannot mean anything: for the rejections format, or
    a run with no quality review yet (the export would be empty without saying why), as
    ExportRefused (setting "reviewed_only"); the message names the option as `wording` does."""
    if fmt == "rejections":
        raise ExportRefused(f"{wording.reviewed_only} keeps machine tasks that passed the quality "
                            f"review; the rejections export has none: {wording.leave_it_out}",
                            "reviewed_only")
    if not reviews:
        raise ExportRefused(f"{run_dir}: no quality review yet, so no task has passed one; review "
                            f"a sample first ({wording.review_first}), or "
                            f"{wording.leave_out_reviewed}", "reviewed_only")


# -- the seed set ---------------------------------------------------------------------------------

def export_seeds(run_dir: str | Path, output: str | Path | None,
                 stdout: IO[str] | None = None) -> tuple[Path, int, bool]:
    """Write the run's current seed set (the pending set if one waits for the next round, else
    the active seeds) as self-instruct JSONL, the format `load_seeds` reads: to `output`
    atomically (temp file + rename), or to `stdout` when `output` is "-" or None. Returns (path,
    seeds written, whether the pending set was written). UserError for a directory that is not a
    run or a target that must not be written."""
    from selfinstruct_tui.engine.control import current_seeds
    from selfinstruct_tui.engine.seeds import seeds_to_jsonl
    from selfinstruct_tui.engine.store import is_run_dir

    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir}: not a run directory (no run.sqlite in it)")
    store = RunStore(run_dir, readonly=True)
    try:
        seeds, pending = current_seeds(store)
    finally:
        store.close()
    text = seeds_to_jsonl(seeds)
    if output is None or str(output) == "-":
        with utf8_stdout(stdout) as fh:
            fh.write(text)
        return Path("-"), len(seeds), pending
    path = Path(output)
    check_target(run_dir, path)
    with atomic_writer(path) as fh:
        fh.write(text)
    return path, len(seeds), pending
