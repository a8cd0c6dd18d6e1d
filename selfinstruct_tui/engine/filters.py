"""Quality filters. Every way a candidate can be turned down is a named `RejectionReason`."""

from __future__ import annotations

import enum
import re
import string
from dataclasses import dataclass, field

from selfinstruct_tui.engine.seeds import Instance


class RejectionReason(str, enum.Enum):
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    BLACKLISTED_WORD = "blacklisted_word"
    WRITE_A_PROGRAM = "write_a_program"
    STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
    STARTS_WITH_NON_ASCII = "starts_with_non_ascii"
    NEAR_DUPLICATE = "near_duplicate"
    CONFLICTING_OUTPUTS = "conflicting_outputs"
    NO_VALID_INSTANCES = "no_valid_instances"
    TRUNCATED_RESPONSE = "truncated_response"
    REQUEST_FAILED = "request_failed"
    DROPPED_BY_USER = "dropped_by_user"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


# The paper's list: tasks a text-only model cannot do.
DEFAULT_BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)


@dataclass
class FilterSettings:
    min_words: int = 4
    max_words: int = 150
    blacklist: tuple[str, ...] = DEFAULT_BLACKLIST
    reject_non_ascii_start: bool = True
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @property
    def blacklist_pattern(self) -> re.Pattern[str] | None:
        if self._pattern is None and self.blacklist:
            words = "|".join(re.escape(w) for w in sorted(self.blacklist, key=len, reverse=True))
            self._pattern = re.compile(rf"\b({words})\b", re.IGNORECASE)
        return self._pattern


@dataclass(frozen=True)
class Rejection:
    reason: RejectionReason
    detail: str


def check_instruction(instruction: str, settings: FilterSettings) -> Rejection | None:
    """The heuristic filters, in the paper's order; None when the instruction passes them all."""
    words = len(instruction.split())
    if words < settings.min_words:
        return Rejection(RejectionReason.TOO_SHORT, f"{words} words (minimum {settings.min_words})")
    if words > settings.max_words:
        return Rejection(RejectionReason.TOO_LONG, f"{words} words (maximum {settings.max_words})")
    pattern = settings.blacklist_pattern
    if pattern is not None and (hit := pattern.search(instruction)):
        return Rejection(RejectionReason.BLACKLISTED_WORD, f"contains {hit.group(0)!r}")
    if instruction.startswith("Write a program"):
        return Rejection(RejectionReason.WRITE_A_PROGRAM, "starts with 'Write a program'")
    if instruction[0] in string.punctuation:
        return Rejection(RejectionReason.STARTS_WITH_PUNCTUATION,
                         f"starts with {instruction[0]!r}")
    if settings.reject_non_ascii_start and not instruction[0].isascii():
        return Rejection(RejectionReason.STARTS_WITH_NON_ASCII,
                         f"starts with {instruction[0]!r} (turn off with filter_non_ascii = false)")
    return None


def clean_instances(instances: list[Instance]) -> tuple[list[Instance], Rejection | None]:
    """Instance filters: drop unusable instances, exact duplicates; drop the task on conflicts.

    Returns the kept instances and, when the whole task must go, why.
    """
    kept: list[Instance] = []
    for inst in instances:
        inp, out = inst.input.strip(), inst.output.strip()
        if not out or inp == out or inp.endswith(":") or out.endswith(":"):
            continue
        candidate = Instance(inp, out)
        if candidate not in kept:
            kept.append(candidate)
    outputs_by_input: dict[str, str] = {}
    for inst in kept:
        if not inst.input:
            continue
        first = outputs_by_input.setdefault(inst.input, inst.output)
        if first != inst.output:
            return [], Rejection(
                RejectionReason.CONFLICTING_OUTPUTS,
                f"input {inst.input[:60]!r} has two different outputs")
    if not kept:
        return [], Rejection(RejectionReason.NO_VALID_INSTANCES,
                             f"{len(instances)} generated, none usable")
    return kept, None
