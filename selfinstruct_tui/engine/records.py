"""Reading JSONL and JSON-list files with a line number for every record and every problem."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfinstruct_tui.engine.errors import InputFileError


@dataclass
class RecordFile:
    path: str
    kind: str  # "jsonl" or "json-list"
    records: list[tuple[int, Any]]  # (1-based line, decoded value)
    problems: list[str]


def read_utf8(path: str | Path) -> str:
    """The file's text; a missing, unreadable, non-UTF-8 or empty file raises InputFileError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputFileError([f"{p}: no such file"]) from None
    except IsADirectoryError:
        raise InputFileError([f"{p}: is a directory, expected a file"]) from None
    except OSError as exc:
        raise InputFileError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputFileError(
            [f"{p}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
             "save the file as UTF-8"]
        ) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise InputFileError([f"{p}:1: the file is empty"])
    return text


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse_records(path: str | Path, text: str) -> RecordFile:
    """Detect by content: a JSON list (starts with '[') or JSON Lines (one value per line)."""
    p = str(path)
    if text.lstrip().startswith("["):
        return _parse_json_list(p, text)
    records, problems = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(f"{p}:{lineno}: bad JSON: {exc.msg} (column {exc.colno})")
    return RecordFile(p, "jsonl", records, problems)


def _parse_json_list(p: str, text: str) -> RecordFile:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    records: list[tuple[int, Any]] = []

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    pos = skip_ws(pos)
    if pos < len(text) and text[pos] == "]":
        return RecordFile(p, "json-list", records, [])
    while True:
        pos = skip_ws(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            return RecordFile(
                p, "json-list", records,
                [f"{p}:{exc.lineno}: bad JSON: {exc.msg} (column {exc.colno})"],
            )
        records.append((_line_at(text, pos), value))
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            rest = text[pos + 1 :].strip()
            if rest:
                line = _line_at(text, pos + 1 + text[pos + 1 :].index(rest[0]))
                return RecordFile(p, "json-list", records,
                                  [f"{p}:{line}: unexpected text after the closing ']'"])
            return RecordFile(p, "json-list", records, [])
        return RecordFile(p, "json-list", records,
                          [f"{p}:{_line_at(text, pos)}: bad JSON: expected ',' or ']' in the list"])
