"""Reading JSONL and JSON-list files with a line number for every record and every problem."""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfinstruct_tui.engine.errors import InputFileError


@dataclass
class RecordFile:
    path: str
    kind: str  # "jsonl" or "json-list"
    records: list[tuple[int, Any]]  # (1-based line, decoded value)
    problems: list[tuple[int, str]]  # (1-based line, "PATH:LINE: what is wrong")


def in_file_order(problems: list[tuple[int, str]]) -> list[str]:
    """(line, message) problems as a user reads the file: by line, a line's own problems in the
    order they were found. Records are checked after the whole file is parsed, so a bad-JSON
    line 2 was reported before a missing field on line 1."""
    return [text for _, text in sorted(problems, key=lambda problem: problem[0])]


def json_type_name(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (object, list, string, number, true/false,
    null) for messages: Python's names (dict, NoneType) mean nothing to a user writing JSON."""
    return {dict: "object", list: "list", str: "string", bool: "true/false", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


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


# A line break as files and editors have them. str.splitlines also breaks at U+2028, U+2029,
# U+0085 and a few control characters, which a JSON string may hold as they are (json.dumps with
# ensure_ascii=False, as the exports write, leaves U+2028 unescaped): a record holding one was
# cut in two, reported as two lines of bad JSON, and the lines after it were misnumbered.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# What json.dumps(ensure_ascii=False) leaves unescaped that str.splitlines breaks at (the
# control characters among them it escapes already).
_RAW_SEPARATORS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_RAW_SEPARATOR = re.compile("[\x85\u2028\u2029]")


def escape_line_separators(json_text: str) -> str:
    """JSON text with U+0085, U+2028 and U+2029 written as escapes (the same JSON value), for a
    text editor: Textual's TextArea breaks lines at them (str.splitlines), which turned each one
    inside a JSON string into a raw line break, JSON that no longer parses."""
    return _RAW_SEPARATOR.sub(lambda m: _RAW_SEPARATORS[m.group()], json_text)


def file_lines(text: str) -> list[str]:
    """The text's lines, split at LF, CRLF or CR only (no last empty line, as str.splitlines)."""
    lines = _LINE_BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def _line_at(text: str, pos: int) -> int:
    return len(_LINE_BREAK.findall(text, 0, pos)) + 1


def excerpt(text: str, pos: int, width: int = 30) -> str:
    """The text around `pos` on one line, for an error message."""
    start = max(0, pos - width)
    piece = text[start:pos + width].replace("\n", " ").replace("\t", " ")
    return ("…" if start else "") + piece.strip() + ("…" if pos + width < len(text) else "")


def describe_json_error(text: str, exc: json.JSONDecodeError) -> str:
    """A JSON error in words: "trailing comma before '}'" when that is the cause."""
    before = text[: exc.pos].rstrip()
    if before.endswith(",") and exc.pos < len(text) and text[exc.pos] in "}]":
        what = f"trailing comma before '{text[exc.pos]}'; remove the comma"
    else:
        what = exc.msg
    return f"bad JSON: {what} (column {exc.colno}) near {excerpt(text, exc.pos)!r}"


def _single_object(p: str, text: str) -> str | None:
    """The one message for a file that is a single JSON object instead of records."""
    try:
        value, end = json.JSONDecoder().raw_decode(text, len(text) - len(text.lstrip()))
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or "\n" not in text[:end].strip():
        return None  # a one-line object is a JSONL record
    rest = text[end:].strip()
    if rest.startswith("{"):
        return (f"{p}:1: the records span several lines; JSON Lines needs one object per line "
                "(or put the records in a JSON list: [{...}, {...}])")
    if rest:
        return None
    hint = ""
    for key, field in value.items():
        if isinstance(field, list) and field and all(isinstance(v, dict) for v in field):
            hint = f"; its {key!r} field holds a list of {len(field)} records: use that list"
            break
    return (f"{p}:1: the file is one JSON object, not a list of records: put the records in a "
            f"JSON list ([{{...}}, {{...}}]) or write one object per line (JSON Lines){hint}")


def record_places(parsed: RecordFile) -> list[str]:
    """Where each record is, for messages, in `parsed.records` order: "PATH:LINE", and for a
    JSON list whose line holds several records (a list written on one line, as json.dump
    writes it) "PATH:LINE: record N" (N counts from 1 in the list): every problem in such a
    file was "PATH:1", which did not say which record."""
    counts = collections.Counter(line for line, _ in parsed.records)
    shared = {line for line, n in counts.items() if n > 1}
    return [f"{parsed.path}:{line}" + (f": record {i}" if line in shared else "")
            for i, (line, _) in enumerate(parsed.records, start=1)]


def parse_records(path: str | Path, text: str) -> RecordFile:
    """Detect by content: a JSON list (starts with '[') or JSON Lines (one value per line).

    Problems name `PATH:LINE`, say "trailing comma" when that is the cause and quote the text
    around the error; a file that is one multi-line JSON object gets one message, not one per
    line.
    """
    p = str(path)
    if text.lstrip().startswith("["):
        return _parse_json_list(p, text)
    records: list[tuple[int, Any]] = []
    problems: list[tuple[int, str]] = []
    for lineno, line in enumerate(file_lines(text), start=1):
        if not line.strip():
            continue
        try:
            records.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            if not records and not problems and text.lstrip().startswith("{"):
                single = _single_object(p, text)
                if single is not None:
                    return RecordFile(p, "jsonl", [], [(1, single)])
            problems.append((lineno, f"{p}:{lineno}: {describe_json_error(line, exc)}"))
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
            if text[exc.pos:exc.pos + 1] == "]" and records:
                return RecordFile(p, "json-list", records, [(exc.lineno,
                    f"{p}:{exc.lineno}: bad JSON: trailing comma after record {len(records)} "
                    f"(the last one) before ']'; remove the comma, near "
                    f"{excerpt(text, exc.pos)!r}")])
            return RecordFile(
                p, "json-list", records,
                [(exc.lineno, f"{p}:{exc.lineno}: record {len(records) + 1}: "
                  f"{describe_json_error(text, exc)}")],
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
                                  [(line, f"{p}:{line}: unexpected text after the closing ']'")])
            return RecordFile(p, "json-list", records, [])
        line = _line_at(text, pos)
        return RecordFile(p, "json-list", records,
                          [(line, f"{p}:{line}: record {len(records)}: bad JSON: "
                            f"expected ',' or ']' after the record, near "
                            f"{excerpt(text, pos)!r}")])
