"""Chat style: the same requests as messages for chat models, with JSON schemas where the
endpoint supports structured output."""

from __future__ import annotations

from typing import Any

from selfinstruct_tui.engine.parsing import (
    ParsedInstances,
    ParsedList,
    parse_instances,
    parse_instruction_list,
)
from selfinstruct_tui.engine.prompts.base import ChatRequest, PromptStyle
from selfinstruct_tui.engine.prompts.fewshot import (
    CHAT_GENERATION_SYSTEM,
    CLASSIFY_HEADER,
    INSTANCE_HEADER,
    LABEL_HEADER,
    classification_shots,
    instance_shots,
    instructions_asked,
    label_shots,
    one_line,
)


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




def generation_chat(instructions: list[str], new_count: int,
                    structured: bool = False) -> ChatRequest:
    listed = "".join(f"{n}. {one_line(i)}\n" for n, i in enumerate(instructions, start=1))
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


def classification_chat(instruction: str) -> ChatRequest:
    user = f"{classification_shots()}Task: {one_line(instruction)}\nClassification:"
    system = CLASSIFY_HEADER.strip() + " Answer with Yes or No only."
    return ChatRequest(({"role": "system", "content": system}, {"role": "user", "content": user}))


def instances_chat(instruction: str, is_classification: bool,
                   structured: bool = False) -> ChatRequest:
    if is_classification:
        system = LABEL_HEADER.strip() + (
            ' Answer in JSON: {"instances": [{"label": "...", "input": "..."}, ...]}.'
            if structured else
            " Use exactly this format: 'Class label: ...' on one line, 'Input: ...' on the next.")
        user = f"{label_shots()}Task: {one_line(instruction)}"
        schema = LABELED_INSTANCES_SCHEMA
    else:
        system = INSTANCE_HEADER.strip() + (
            ' Answer in JSON: {"instances": [{"input": "...", "output": "..."}, ...]}; '
            'an empty input is "".' if structured else
            " Use exactly this format: 'Example N', then 'Input: ...', then 'Output: ...'.")
        user = f"{instance_shots()}Task: {one_line(instruction)}"
        schema = INSTANCES_SCHEMA
    return ChatRequest(({"role": "system", "content": system}, {"role": "user", "content": user}),
                       schema if structured else None)


class ChatStyle(PromptStyle):
    """Answers start fresh: a numbered list (any index) or JSON."""

    api = "chat"
    supports_structured = True

    def generation(self, instructions: list[str], *, structured: bool = False) -> ChatRequest:
        # The model is asked for the rest of a 15-item list, as the completions style gets.
        return generation_chat(instructions, instructions_asked(len(instructions)), structured)

    def read_generation(self, text: str, instructions: list[str], *,
                        truncated: bool) -> ParsedList:
        return parse_instruction_list(text, examples=[one_line(i) for i in instructions],
                                      truncated=truncated)

    def classification(self, instruction: str) -> ChatRequest:
        return classification_chat(instruction)

    def classification_tokens(self, configured: int) -> int:
        return max(configured, 8)  # "Classification: Yes" needs more than the paper's 3

    def instances(self, instruction: str, is_classification: bool, *,
                  structured: bool = False) -> ChatRequest:
        return instances_chat(instruction, is_classification, structured)

    def read_instances(self, text: str, is_classification: bool, *,
                       truncated: bool) -> ParsedInstances:
        return parse_instances(text, output_first=is_classification, truncated=truncated)
