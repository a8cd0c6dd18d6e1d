"""`selfinstruct dedup`: drop near-duplicate instructions from an existing dataset, the
Self-Instruct way.

Items are taken in file order; an item is kept when its max ROUGE-L against the items already kept
is <= the threshold. Input and output share a format: JSONL with an instruction field, a JSON list
(Alpaca), or plain text with one instruction per line.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from selfinstruct_tui.engine.errors import InputFileError, UserError
from selfinstruct_tui.engine.fsutil import atomic_writer, utf8_stdout
from selfinstruct_tui.engine.placeholders import is_no_input
from selfinstruct_tui.engine.records import (
    file_lines,
    in_file_order,
    parse_records,
    read_utf8,
    record_places,
)
from selfinstruct_tui.engine.similarity import make_index
from selfinstruct_tui.engine.tokenize import get_tokenizer


@dataclass
class Item:
    line: int
    text: str
    raw: Any  # the original line (JSONL, text) or object (JSON list)


def read_items(path: str | Path, field: str) -> tuple[str, list[Item]]:
    """(kind, items) of a dataset: "text" (one instruction per line: a .txt file, or a file
    that does not start with "[" or "{"), else "jsonl" or "json-list" records whose `field`
    holds the instruction. Raises InputFileError naming the file, the line and the fix."""
    text = read_utf8(path)
    head = text.lstrip()[:1]
    # A .txt file is text even when its first instruction starts with "[" ("[Draft] Write ...":
    # read as JSON, it failed as "record 1: bad JSON")
    if head not in ("[", "{") or Path(path).suffix.lower() == ".txt":
        items = [Item(n, line.strip(), line) for n, line in enumerate(file_lines(text), 1)
                 if line.strip()]
        return "text", items
    parsed = parse_records(path, text)
    problems = list(parsed.problems)  # (line, message): said in file order
    raw_lines = file_lines(text)
    items = []
    for (line, obj), where in zip(parsed.records, record_places(parsed), strict=True):
        if not isinstance(obj, dict):
            problems.append((line, f"{where}: expected a JSON object with a {field!r} field"))
            continue
        if field not in obj:
            problems.append((line, f"{where}: missing field {field!r} (choose another with "
                                   "--field)"))
            continue
        value = obj[field]
        if not isinstance(value, str):
            problems.append((line, f"{where}: field {field!r} must be a string"))
            continue
        raw = raw_lines[line - 1] if parsed.kind == "jsonl" else obj
        items.append(Item(line, value, raw))
    if not items and parsed.records and isinstance(parsed.records[0][1], dict) and all(
            isinstance(obj, dict) and field not in obj for _, obj in parsed.records):
        # a typo in --field: one message, not one per record
        fields = ", ".join(parsed.records[0][1])
        raise InputFileError([f"{parsed.path}: no record has the field {field!r} (the first "
                              f"record's fields: {fields}); choose one with --field"])
    if problems:
        raise InputFileError(in_file_order(problems))
    return parsed.kind, items


def normalize_inputs(kind: str, items: list[Item]) -> int:
    """Turn "no input" placeholders in records' `input` fields into "" (the rule the run, the
    seeds and the exports use); returns how many were changed."""
    changed = 0
    for item in items:
        obj = item.raw if kind == "json-list" else None
        if kind == "jsonl":
            try:
                obj = json.loads(item.raw)
            except json.JSONDecodeError:
                continue
        if isinstance(obj, dict) and isinstance(obj.get("input"), str) and obj["input"] \
                and is_no_input(obj["input"]):
            obj["input"] = ""
            changed += 1
            item.raw = obj if kind == "json-list" else json.dumps(obj, ensure_ascii=False)
    return changed


def tokenless(items: list[Item], tokenizer: str) -> list[Item]:
    """Items with text but no tokens under `tokenizer` (they score 0 against everything)."""
    tokenize = get_tokenizer(tokenizer)
    return [i for i in items if i.text.strip() and not tokenize(i.text)]


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.dedup{path.suffix}")


@dataclass
class DedupResult:
    """Items kept (file order) and dropped: each drop is a dict with the dropped item's line
    and text, the kept item it collided with, and the ROUGE-L score. `instructions` and
    `kept_instructions` count distinct instructions (rows that repeat one are its instances)."""

    kept: list[Item]
    dropped: list[dict[str, Any]]
    instructions: int = 0
    kept_instructions: int = 0


def dedup(items: list[Item], threshold: float = 0.7, tokenizer: str = "rouge",
          progress: Callable[[int], None] | None = None) -> DedupResult:
    """Keep an item when its max ROUGE-L against the items kept so far is <= `threshold`
    (the Self-Instruct rule, which compares instructions: a task). Rows with the same
    instruction as an earlier row are more instances of that task (an Alpaca-style file has
    one row per instance) and share its fate: kept with it, or dropped with it; compared
    against each other they scored 1.0, and two thirds of an export's rows were dropped as
    near duplicates of themselves. `progress(n)` is called every 256 items."""
    if not 0 < threshold <= 1:
        raise UserError(f"--threshold must be in (0, 1], got {threshold}")
    index = make_index("pruned", threshold, tokenizer)
    kept: list[Item] = []
    dropped: list[dict[str, Any]] = []
    fate: dict[str, dict[str, Any] | None] = {}  # instruction -> its drop (None: kept)
    for n, item in enumerate(items):
        key = item.text.strip()
        if key in fate:
            first = fate[key]
            if first is None:
                kept.append(item)
            else:
                dropped.append({**first, "line": item.line, "instruction": item.text})
        else:
            result = index.query(item.text, k=1)
            if result.is_duplicate:
                match = kept[int(result.top[0].key)]  # type: ignore[call-overload]
                drop = {"line": item.line, "instruction": item.text,
                        "kept_line": match.line, "kept_instruction": match.text,
                        "score": result.max_score}
                dropped.append(drop)
                fate[key] = drop
            else:
                index.add(len(kept), item.text)
                kept.append(item)
                fate[key] = None
        if progress is not None and n % 256 == 0:
            progress(n + 1)
    return DedupResult(kept, dropped, len(fate), sum(f is None for f in fate.values()))


def write_dataset(path: str | Path, kind: str, items: list[Item],
                  stdout: IO[str] | None = None) -> None:
    """The kept items in the input's format, written atomically (to `stdout` for "-")."""
    with _output(path, stdout) as fh:
        if kind == "json-list":
            fh.write("[\n" + ",\n".join(json.dumps(i.raw, ensure_ascii=False) for i in items)
                     + "\n]\n" if items else "[]\n")
        else:
            fh.writelines(f"{i.raw}\n" for i in items)


def write_report(path: str | Path, dropped: list[dict[str, Any]],
                 stdout: IO[str] | None = None) -> None:
    with _output(path, stdout) as fh:
        fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in dropped)


def _output(path: str | Path, stdout: IO[str] | None) -> contextlib.AbstractContextManager[IO[str]]:
    if str(path) == "-":
        return utf8_stdout(stdout)
    return atomic_writer(path)
