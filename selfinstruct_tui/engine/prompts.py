"""Prompts (this project's own text). The answers are read by `parsing`.

Completions mode (base models) keeps the paper's setting: few-shot prompts that the model continues.
Chat mode (chat models) asks for the same thing in messages and is parsed the same way; where the
endpoint supports structured output, chat requests carry a JSON schema.
The few-shot examples inside the classification and instance prompts come from the bundled seeds.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from selfinstruct_tui.engine.seeds import SeedTask, bundled_seeds_path, load_seeds

# The generation prompt shows 8 numbered examples; the model continues at 9 and stops before 16.
STOP_NUMBER = 16

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


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    stop: tuple[str, ...]


@dataclass(frozen=True)
class ChatRequest:
    """Chat messages; `schema` (OpenAI's `json_schema` object: name, strict, schema) asks for
    structured output where the endpoint supports it."""

    messages: tuple[dict[str, str], ...]
    schema: dict[str, Any] | None = None


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


_STRING = {"type": "string"}
GENERATION_SCHEMA = {"name": "new_tasks", "strict": True, "schema": _object(
    {"tasks": {"type": "array", "items": _object({"instruction": _STRING})}})}
INSTANCES_SCHEMA = {"name": "examples", "strict": True, "schema": _object(
    {"instances": {"type": "array", "items": _object({"input": _STRING, "output": _STRING})}})}
# Output first (the paper's order for classification): the label is generated before the input.
LABELED_INSTANCES_SCHEMA = {"name": "labeled_examples", "strict": True, "schema": _object(
    {"instances": {"type": "array", "items": _object({"label": _STRING, "input": _STRING})}})}


# -- few-shot examples from the bundled seed set ---------------------------------------------

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


def _classification_examples() -> list[tuple[str, bool]]:
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


def _instance_examples() -> list[SeedTask]:
    _, with_input, without = fewshot_pool()
    return list(with_input[:3] + without[:1])


def _label_examples() -> list[SeedTask]:
    cls, _, _ = fewshot_pool()
    return list(cls[:3])


# -- instruction generation ------------------------------------------------------------------

def generation_completion(instructions: list[str]) -> CompletionRequest:
    lines = [GENERATION_HEADER]
    for number, instruction in enumerate(instructions, start=1):
        lines.append(f"{number}. {_one_line(instruction)}\n")
    lines.append(f"{len(instructions) + 1}.")
    stop = ("\n\n", f"\n{STOP_NUMBER}", f"{STOP_NUMBER}.", f"{STOP_NUMBER} .")
    return CompletionRequest("".join(lines), stop)


def generation_chat(instructions: list[str], new_count: int,
                    structured: bool = False) -> ChatRequest:
    listed = "".join(f"{n}. {_one_line(i)}\n" for n, i in enumerate(instructions, start=1))
    user = (
        f"Here are some example tasks:\n{listed}\n"
        f"Write {new_count} new tasks, different from these and from each other. Vary the topic, "
        "the verb, the length and the format; mix tasks that need an input with tasks that do "
        "not; keep each task to one or two sentences. Leave out tasks that need images, audio, "
        "files or actions in the world. "
    )
    if structured:
        user += 'Answer in JSON: {"tasks": [{"instruction": "..."}, ...]}.'
    else:
        user += f"Answer with the numbered list only, numbered from {len(instructions) + 1}."
    return ChatRequest(({"role": "system", "content": CHAT_GENERATION_SYSTEM},
                        {"role": "user", "content": user}),
                       GENERATION_SCHEMA if structured else None)


# -- classification ----------------------------------------------------------------------------

def classification_completion(instruction: str) -> CompletionRequest:
    parts = [CLASSIFY_HEADER]
    for example, is_cls in _classification_examples():
        parts.append(f"Task: {_one_line(example)}\nClassification: {'Yes' if is_cls else 'No'}\n\n")
    parts.append(f"Task: {_one_line(instruction)}\nClassification:")
    return CompletionRequest("".join(parts), ("\n", "Task:"))


def classification_chat(instruction: str) -> ChatRequest:
    shots = "".join(
        f"Task: {_one_line(e)}\nClassification: {'Yes' if c else 'No'}\n\n"
        for e, c in _classification_examples())
    user = f"{shots}Task: {_one_line(instruction)}\nClassification:"
    system = CLASSIFY_HEADER.strip() + " Answer with Yes or No only."
    return ChatRequest(({"role": "system", "content": system}, {"role": "user", "content": user}))


# -- instances ---------------------------------------------------------------------------------

def _input_text(value: str) -> str:
    # Inputs keep their line breaks (code, lists); the parser splits on the field markers.
    return value.strip() if value.strip() else NO_INPUT


def _instance_shots() -> str:
    parts = []
    for task in _instance_examples():
        parts.append(f"Task: {_one_line(task.instruction)}\n")
        for n, inst in enumerate(task.instances[:5], start=1):
            parts.append(f"Example {n}\nInput: {_input_text(inst.input)}\nOutput: {inst.output}\n")
        parts.append("\n")
    return "".join(parts)


def _label_shots() -> str:
    parts = []
    for task in _label_examples():
        parts.append(f"Task: {_one_line(task.instruction)}\n")
        for inst in task.instances[:5]:
            parts.append(f"Class label: {_one_line(inst.output)}\nInput: {_input_text(inst.input)}\n")
        parts.append("\n")
    return "".join(parts)


def instances_completion(instruction: str, is_classification: bool) -> CompletionRequest:
    if is_classification:
        prompt = f"{LABEL_HEADER}{_label_shots()}Task: {_one_line(instruction)}\nClass label:"
        return CompletionRequest(prompt, ("\nTask", "\n\n\n"))
    prompt = f"{INSTANCE_HEADER}{_instance_shots()}Task: {_one_line(instruction)}\nExample 1\n"
    return CompletionRequest(prompt, ("\nTask", "Example 6"))


def instances_chat(instruction: str, is_classification: bool,
                   structured: bool = False) -> ChatRequest:
    if is_classification:
        system = LABEL_HEADER.strip() + (
            ' Answer in JSON: {"instances": [{"label": "...", "input": "..."}, ...]}.'
            if structured else
            " Use exactly this format: 'Class label: ...' on one line, 'Input: ...' on the next.")
        user = f"{_label_shots()}Task: {_one_line(instruction)}"
        schema = LABELED_INSTANCES_SCHEMA
    else:
        system = INSTANCE_HEADER.strip() + (
            ' Answer in JSON: {"instances": [{"input": "...", "output": "..."}, ...]}; '
            'an empty input is "".' if structured else
            " Use exactly this format: 'Example N', then 'Input: ...', then 'Output: ...'.")
        user = f"{_instance_shots()}Task: {_one_line(instruction)}"
        schema = INSTANCES_SCHEMA
    return ChatRequest(({"role": "system", "content": system}, {"role": "user", "content": user}),
                       schema if structured else None)


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())
