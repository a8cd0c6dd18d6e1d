"""What a prompt style is: the requests it builds and how it reads the answers.

`CompletionsStyle` (base models, the paper's few-shot continuations) and `ChatStyle` (chat models,
messages; JSON-schema structured output where the endpoint supports it) implement `PromptStyle`, so
the engine never branches on the API.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

from selfinstruct_tui.engine.parsing import ParsedInstances, ParsedList


@dataclass(frozen=True)
class CompletionRequest:
    """A prompt for /v1/completions and its stop sequences (at most 4 are sent)."""

    prompt: str
    stop: tuple[str, ...]


@dataclass(frozen=True)
class ChatRequest:
    """Chat messages; `schema` (OpenAI's `json_schema` object: name, strict, schema) asks for
    structured output where the endpoint supports it."""

    messages: tuple[dict[str, str], ...]
    schema: dict[str, Any] | None = None


Request = CompletionRequest | ChatRequest


class PromptStyle(abc.ABC):
    """Builds the three requests of a task's life and reads their answers."""

    api: ClassVar[str]
    supports_structured: ClassVar[bool] = False  # JSON-schema answers (chat only)

    @abc.abstractmethod
    def generation(self, instructions: list[str], *, structured: bool = False) -> Request:
        """Ask for new instructions after these examples (Self-Instruct: 8 of them)."""

    @abc.abstractmethod
    def read_generation(self, text: str, instructions: list[str], *,
                        truncated: bool) -> ParsedList:
        """The new instructions in an answer to `generation(instructions)`."""

    @abc.abstractmethod
    def classification(self, instruction: str) -> Request:
        """Ask whether the instruction is a classification task."""

    @abc.abstractmethod
    def classification_tokens(self, configured: int) -> int:
        """max_tokens for a classification answer, given the configured value."""

    @abc.abstractmethod
    def instances(self, instruction: str, is_classification: bool, *,
                  structured: bool = False) -> Request:
        """Ask for instances: output first for classification tasks (the paper), else input
        first."""

    @abc.abstractmethod
    def read_instances(self, text: str, is_classification: bool, *,
                       truncated: bool) -> ParsedInstances:
        """The instances in an answer to `instances(...)`."""
