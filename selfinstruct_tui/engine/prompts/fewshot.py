"""The prompts' fixed text and their few-shot examples, chosen from the bundled seed set.

This project's own wording; the examples are picked deterministically so every request of a
kind shares the same few-shot prefix.
"""

from __future__ import annotations

import functools
import re

from selfinstruct_tui.engine.seeds import SeedTask, bundled_seeds_path, load_seeds

# The generation prompt shows 8 numbered examples; the model continues at 9 and stops before 16.
STOP_NUMBER = 16


def instructions_asked(examples: int) -> int:
    """How many new instructions a generation prompt with `examples` numbered examples asks
    for: the list goes on to STOP_NUMBER - 1 (the reference's stop at "16")."""
    return max(1, STOP_NUMBER - 1 - examples)


GENERATION_HEADER = (
    "Below is a numbered list of different tasks that people ask a capable assistant to do. "
    "The tasks vary in topic, wording, format and difficulty; some come with an input to work "
    "on and some do not.\n"
)

CHAT_GENERATION_SYSTEM = (
    "You invent new task instructions for training a helpful, text-only assistant."
)

CLASSIFY_HEADER = (
    "For each task, say whether it is a classification task: a task whose answer is always one "
    "of a small, fixed set of labels (such as Yes/No, a sentiment, or a category).\n\n"
)

INSTANCE_HEADER = (
    "Write examples for each task. An example is an input and the output a careful expert would "
    "give for it. A task that needs no input gets 'Input: (none)'. Give up to five varied "
    "examples per task.\n\n"
)

LABEL_HEADER = (
    "Each task below sorts its input into one of a few class labels. For each task, go through "
    "its possible labels; under each label, write an input that belongs to it.\n\n"
)

NO_INPUT = "(none)"



@functools.cache
def fewshot_pool() -> tuple[tuple[SeedTask, ...], tuple[SeedTask, ...], tuple[SeedTask, ...]]:
    """(classification, with-input, without-input) seed examples, chosen deterministically."""
    tasks = sorted(load_seeds(bundled_seeds_path()), key=lambda t: t.id)
    cls = tuple(t for t in tasks if t.is_classification)
    with_input = tuple(
        t for t in tasks if not t.is_classification and any(i.input for i in t.instances))
    without = tuple(
        t for t in tasks if not t.is_classification and not any(i.input for i in t.instances))
    return cls, with_input, without


def classification_examples() -> list[tuple[str, bool]]:
    cls, with_input, without = fewshot_pool()
    yes = [t.instruction for t in cls[:5]]
    no = [t.instruction for t in with_input[:4] + without[:3]]
    # Interleave, and end on "No": most tasks are not classification, and small models copy the
    # label of the last example.
    out: list[tuple[str, bool]] = []
    for i in range(max(len(yes), len(no))):
        if i < len(yes):
            out.append((yes[i], True))
        if i < len(no):
            out.append((no[i], False))
    return out


NUMBERED = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•])\s")


def _plain(task: SeedTask) -> bool:
    """No output of the task is a numbered or bulleted list."""
    return not any(NUMBERED.match(inst.output) for inst in task.instances)


def instance_examples() -> list[SeedTask]:
    """Examples whose outputs are not lists: small models copy the examples' numbering, so a
    one-item answer after a numbered example comes out as "1. ..."."""
    _, with_input, without = fewshot_pool()
    return [t for t in with_input if _plain(t)][:3] + [t for t in without if _plain(t)][:1]


def label_examples() -> list[SeedTask]:
    cls, _, _ = fewshot_pool()
    return list(cls[:3])


def input_text(value: str) -> str:
    # Inputs keep their line breaks (code, lists); the parser splits on the field markers.
    return value.strip() if value.strip() else NO_INPUT


@functools.cache  # a pure function of the cached pool; built once, not per request
def instance_shots() -> str:
    parts = []
    for task in instance_examples():
        parts.append(f"Task: {one_line(task.instruction)}\n")
        for n, inst in enumerate(task.instances[:5], start=1):
            parts.append(f"Example {n}\nInput: {input_text(inst.input)}\nOutput: {inst.output}\n")
        parts.append("\n")
    return "".join(parts)


@functools.cache
def label_shots() -> str:
    parts = []
    for task in label_examples():
        parts.append(f"Task: {one_line(task.instruction)}\n")
        for inst in task.instances[:5]:
            parts.append(f"Class label: {one_line(inst.output)}\nInput: {input_text(inst.input)}\n")
        parts.append("\n")
    return "".join(parts)


_LINE_BREAK = re.compile(r"\s*\n\s*")


def one_line(text: str) -> str:
    return _LINE_BREAK.sub(" ", text.strip())


@functools.cache  # a pure function of the cached pool; built once, not per request
def classification_shots() -> str:
    """The classification prompt's examples, "Task: ...\nClassification: Yes|No" blocks."""
    return "".join(f"Task: {one_line(example)}\nClassification: {'Yes' if is_cls else 'No'}\n\n"
                   for example, is_cls in classification_examples())
