"""Quality filters. Every way a candidate can be turned down is a named `RejectionReason`."""

from __future__ import annotations

import enum
import re
import string
from dataclasses import dataclass, field

from selfinstruct_tui.engine.placeholders import (
    is_refusal,
    placeholder_output,
    unusable_input,
)
from selfinstruct_tui.engine.seeds import Instance, pool_instance, short_text
from selfinstruct_tui.engine.tokenize import unicode_tokens


class RejectionReason(str, enum.Enum):
    """Every way a candidate instruction, or one of its instances, is turned down.

    Candidate reasons count in a round's "rejected"; `SURPLUS` is counted apart (work not started
    because the target was already in reach); instance reasons (`INSTANCE_REASONS`) drop one
    example of a task that may still be accepted with its other examples.
    """

    # heuristic filters (the paper's, in its order)
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    BLACKLISTED_WORD = "blacklisted_word"
    WRITE_A_PROGRAM = "write_a_program"
    STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
    STARTS_WITH_NON_ASCII = "starts_with_non_ascii"
    NEAR_DUPLICATE = "near_duplicate"
    # what the parser set aside
    REFUSAL = "refusal"
    REPEATED_EXAMPLE = "repeated_example"
    NOT_AN_INSTRUCTION = "not_an_instruction"
    UNPARSEABLE = "unparseable"
    # the endpoint's content filter stopped the answer (finish_reason "content_filter")
    CONTENT_FILTER = "content_filter"
    TRUNCATED = "truncated"
    TRUNCATED_RESPONSE = "truncated_response"  # runs made before "truncated" kept items
    # later stages
    UNKNOWN_CLASSIFICATION = "unknown_classification"
    CONFLICTING_OUTPUTS = "conflicting_outputs"
    NO_VALID_INSTANCES = "no_valid_instances"
    REQUEST_FAILED = "request_failed"  # the request itself was refused (bad request, too long)
    # the endpoint gave no answer (down, timing out, 5xx, rate limit, quota, key): the candidate
    # stays open and is taken up again, later in the session or when the run resumes
    UNANSWERED = "unanswered"
    ABANDONED = "abandoned"  # a stop came first; the next session takes it up again
    INTERRUPTED = "interrupted"  # the process ended (crash, kill -9); taken up again too
    DROPPED_BY_USER = "dropped_by_user"
    SURPLUS = "surplus"
    # one instance of a task
    MISSING_OUTPUT = "missing_output"
    MISSING_INPUT = "missing_input"
    UNLABELED_INPUT = "unlabeled_input"
    EMPTY_OUTPUT = "empty_output"
    PLACEHOLDER_OUTPUT = "placeholder_output"
    UNUSABLE_INPUT = "unusable_input"
    INPUT_EQUALS_OUTPUT = "input_equals_output"
    ENDS_WITH_COLON = "ends_with_colon"
    DUPLICATE_INSTANCE = "duplicate_instance"
    EXTRA_INSTANCE = "extra_instance"
    LABEL_NOT_IN_TASK = "label_not_in_task"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


INSTANCE_REASONS = frozenset({
    RejectionReason.MISSING_OUTPUT, RejectionReason.MISSING_INPUT,
    RejectionReason.UNLABELED_INPUT, RejectionReason.EMPTY_OUTPUT,
    RejectionReason.PLACEHOLDER_OUTPUT, RejectionReason.UNUSABLE_INPUT,
    RejectionReason.INPUT_EQUALS_OUTPUT, RejectionReason.ENDS_WITH_COLON,
    RejectionReason.DUPLICATE_INSTANCE, RejectionReason.EXTRA_INSTANCE,
    RejectionReason.LABEL_NOT_IN_TASK,
})  # refusal, truncated and unparseable happen at both levels


# The paper's list: tasks a text-only model cannot do.
DEFAULT_BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)


@dataclass
class FilterSettings:
    """The heuristic filters' settings.

    `min_words` / `max_words` bound an instruction's length (the paper: more than 3 and at most
    150 words). With the `rouge` tokenizer a word is a whitespace-separated run, as in the paper;
    with `unicode` it is a token of that tokenizer, so a Chinese or Japanese instruction counts one
    per character instead of being one "word".
    """

    min_words: int = 4
    max_words: int = 150
    blacklist: tuple[str, ...] = DEFAULT_BLACKLIST
    reject_non_ascii_start: bool = True
    tokenizer: str = "rouge"
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @property
    def blacklist_pattern(self) -> re.Pattern[str] | None:
        if self._pattern is None and self.blacklist:
            words = "|".join(re.escape(w) for w in sorted(self.blacklist, key=len, reverse=True))
            self._pattern = re.compile(rf"\b({words})\b", re.IGNORECASE)
        return self._pattern

    def length(self, instruction: str) -> tuple[int, str]:
        """(length, unit) of an instruction for the length filters."""
        if self.tokenizer == "unicode":
            return len(unicode_tokens(instruction)), "tokens"
        return len(instruction.split()), "words"


@dataclass(frozen=True)
class Rejection:
    reason: RejectionReason
    detail: str


def check_instruction(instruction: str, settings: FilterSettings) -> Rejection | None:
    """The heuristic filters, in the paper's order; None when the instruction passes them all."""
    n, unit = settings.length(instruction)
    if n < settings.min_words:
        return Rejection(RejectionReason.TOO_SHORT, f"{n} {unit} (minimum {settings.min_words})")
    if n > settings.max_words:
        return Rejection(RejectionReason.TOO_LONG, f"{n} {unit} (maximum {settings.max_words})")
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
                         f"starts with {instruction[0]!r} (keep such instructions with "
                         "--allow-non-ascii or filter_non_ascii = false)")
    return None


@dataclass(frozen=True)
class InstanceDrop:
    """One instance set aside: the instance as read, why, and a detail."""

    instance: Instance
    reason: RejectionReason
    detail: str


# "... as positive, negative or neutral", "either formal or informal", "is true or false".
_ENUMERATION = re.compile(
    r"\b(?:as|into|either|is|are|was|be|between|among|from|:)\s+"
    r"((?:(?:an?|the)\s+)?[\w-]+(?:\s*,\s*(?:(?:an?|the)\s+)?[\w-]+)*\s*,?\s+(?:or|and)\s+"
    r"(?:(?:an?|the)\s+)?[\w-]+)", re.IGNORECASE)
_QUOTED = re.compile(r"[\"“'‘]([^\"”'’]{1,30})[\"”'’]")
_SLASHED = re.compile(r"\b([A-Za-z][\w-]*(?:\s*/\s*[A-Za-z][\w-]*)+)\b")


def _label_key(text: str) -> str:
    words = re.findall(r"[^\W_]+", text.lower())
    while words and words[0] in ("a", "an", "the"):
        words.pop(0)
    return " ".join(words)


def task_labels(instruction: str) -> set[str] | None:
    """The class labels a classification instruction names, or None when it names none.

    Read from quoted options ('"spam" or "ham"'), slashes ("Yes/No") and enumerations ("as
    positive, negative or neutral"). Two labels at least, or None: a label set that cannot be
    read is not checked.
    """
    labels: set[str] = set()
    quoted = [_label_key(q) for q in _QUOTED.findall(instruction)]
    if len([q for q in quoted if q]) >= 2:
        labels.update(q for q in quoted if q)
    for match in _SLASHED.finditer(instruction):
        labels.update(_label_key(p) for p in match.group(1).split("/"))
    for match in _ENUMERATION.finditer(instruction):
        parts = re.split(r"\s*,\s*|\s+(?:or|and)\s+", match.group(1))
        labels.update(_label_key(p) for p in parts)
    labels.discard("")
    return labels if len(labels) >= 2 else None


def label_matches(label: str, labels: set[str]) -> bool:
    """A label matches when it is one of `labels`, starts with one, or names one as a word."""
    key = _label_key(label)
    if not key:
        return False
    if key in labels or key.split()[0] in labels:
        return True
    words = set(key.split())
    return any(all(w in words for w in known.split()) for known in labels) and len(words) <= 4


def clean_instances(instances: list[Instance], *, is_classification: bool = False,
                    instruction: str = "") -> tuple[list[Instance], list[InstanceDrop],
                                                    Rejection | None]:
    """The instance filters: each unusable instance is dropped with its reason; the whole task
    goes when two instances give one input different outputs, or when none is left.

    Returns (kept, dropped, the task's rejection or None). Rules: an empty or placeholder output;
    an input that is only a link or a placeholder slot; input equal to output; input or output
    ending with ':' (the reference implementation's filters); an exact duplicate; for a
    classification task, a label that is not one of the labels its instruction names.
    """
    kept: list[Instance] = []
    dropped: list[InstanceDrop] = []
    labels = task_labels(instruction) if is_classification else None
    for inst in instances:
        candidate = pool_instance(inst.input, inst.output)
        inp, out = candidate.input, candidate.output

        def drop(reason: RejectionReason, detail: str, candidate: Instance = candidate) -> None:
            dropped.append(InstanceDrop(candidate, reason, detail))

        if not out:
            drop(RejectionReason.EMPTY_OUTPUT, "the output is empty")
        elif (why := placeholder_output(out)) is not None:
            drop(RejectionReason.PLACEHOLDER_OUTPUT, why)
        elif is_refusal(out) or is_refusal(inp):
            drop(RejectionReason.REFUSAL, f"the {'output' if is_refusal(out) else 'input'} is "
                                          "a refusal, not content")
        elif (why := unusable_input(inp)) is not None:
            drop(RejectionReason.UNUSABLE_INPUT, why)
        elif inp == out:
            drop(RejectionReason.INPUT_EQUALS_OUTPUT, "the output repeats the input")
        elif inp.endswith(":") or out.endswith(":"):
            drop(RejectionReason.ENDS_WITH_COLON,
                 f"the {'input' if inp.endswith(':') else 'output'} ends with ':'")
        elif labels is not None and not label_matches(out, labels):
            drop(RejectionReason.LABEL_NOT_IN_TASK,
                 f"label {short_text(out, 40)!r} is not one of the task's labels "
                 f"({', '.join(sorted(labels))})")
        elif candidate in kept:
            drop(RejectionReason.DUPLICATE_INSTANCE, "the same input and output again")
        else:
            kept.append(candidate)
    outputs_by_input: dict[str, str] = {}
    for inst in kept:
        if not inst.input:
            continue
        first = outputs_by_input.setdefault(inst.input, inst.output)
        if first != inst.output:
            return [], dropped, Rejection(
                RejectionReason.CONFLICTING_OUTPUTS,
                f"input {short_text(inst.input)!r} has two different outputs")
    if not kept:
        return [], dropped, Rejection(RejectionReason.NO_VALID_INSTANCES,
                                      f"{len(instances)} read, none usable"
                                      + (f" ({summarize_drops(dropped)})" if dropped else ""))
    return kept, dropped, None


def summarize_drops(dropped: list[InstanceDrop]) -> str:
    counts: dict[str, int] = {}
    for d in dropped:
        counts[d.reason.label] = counts.get(d.reason.label, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
