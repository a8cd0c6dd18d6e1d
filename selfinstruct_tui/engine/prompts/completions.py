"""Completions style: the paper's few-shot prompts for base models, which the model continues."""

from __future__ import annotations

from selfinstruct_tui.engine.parsing import (
    ParsedInstances,
    ParsedList,
    parse_instances,
    parse_instruction_list,
)
from selfinstruct_tui.engine.prompts.base import CompletionRequest, PromptStyle
from selfinstruct_tui.engine.prompts.fewshot import (
    CLASSIFY_HEADER,
    GENERATION_HEADER,
    INSTANCE_HEADER,
    LABEL_HEADER,
    STOP_NUMBER,
    classification_shots,
    instance_shots,
    label_shots,
    one_line,
)


def generation_completion(instructions: list[str]) -> CompletionRequest:
    lines = [GENERATION_HEADER]
    for number, instruction in enumerate(instructions, start=1):
        lines.append(f"{number}. {one_line(instruction)}\n")
    lines.append(f"{len(instructions) + 1}.")
    stop = ("\n\n", f"\n{STOP_NUMBER}", f"{STOP_NUMBER}.", f"{STOP_NUMBER} .")
    return CompletionRequest("".join(lines), stop)


def classification_completion(instruction: str) -> CompletionRequest:
    prompt = (f"{CLASSIFY_HEADER}{classification_shots()}Task: {one_line(instruction)}\n"
              "Classification:")
    return CompletionRequest(prompt, ("\n", "Task:"))


def instances_completion(instruction: str, is_classification: bool) -> CompletionRequest:
    if is_classification:
        prompt = f"{LABEL_HEADER}{label_shots()}Task: {one_line(instruction)}\nClass label:"
        return CompletionRequest(prompt, ("\nTask:", "\n\n\n"))
    prompt = f"{INSTANCE_HEADER}{instance_shots()}Task: {one_line(instruction)}\nExample 1\n"
    return CompletionRequest(prompt, ("\nTask:", "Example 6"))


class CompletionsStyle(PromptStyle):
    """The prompt ends where the answer begins ("9.", "Example 1", "Class label:"), so answers
    are read as continuations."""

    api = "completions"

    def generation(self, instructions: list[str], *,
                   structured: bool = False) -> CompletionRequest:
        return generation_completion(instructions)

    def read_generation(self, text: str, instructions: list[str], *,
                        truncated: bool) -> ParsedList:
        return parse_instruction_list(text, first_number=len(instructions) + 1,
                                      examples=[one_line(i) for i in instructions],
                                      truncated=truncated)

    def classification(self, instruction: str) -> CompletionRequest:
        return classification_completion(instruction)

    def classification_tokens(self, configured: int) -> int:
        return configured  # the paper's 3: " Yes" / " No" and the stop sequence

    def instances(self, instruction: str, is_classification: bool, *,
                  structured: bool = False) -> CompletionRequest:
        return instances_completion(instruction, is_classification)

    def read_instances(self, text: str, is_classification: bool, *,
                       truncated: bool) -> ParsedInstances:
        return parse_instances(text, output_first=is_classification, truncated=truncated,
                               starts_in_example=True)
