"""Prompt styles: one per API (completions for base models, chat for chat models).

`style_for(api)` gives the engine its `PromptStyle`; the request builders stay importable for
tests and benchmarks.
"""

from selfinstruct_tui.engine.prompts.base import (
    ChatRequest,
    CompletionRequest,
    PromptStyle,
    Request,
)
from selfinstruct_tui.engine.prompts.chat import (
    GENERATION_SCHEMA,
    INSTANCES_SCHEMA,
    LABELED_INSTANCES_SCHEMA,
    ChatStyle,
    classification_chat,
    generation_chat,
    instances_chat,
)
from selfinstruct_tui.engine.prompts.completions import (
    CompletionsStyle,
    classification_completion,
    generation_completion,
    instances_completion,
)
from selfinstruct_tui.engine.prompts.fewshot import (
    NO_INPUT,
    STOP_NUMBER,
    fewshot_pool,
    instructions_asked,
)

STYLES: dict[str, type[PromptStyle]] = {"completions": CompletionsStyle, "chat": ChatStyle}


def style_for(api: str) -> PromptStyle:
    """The prompt style of an API ("completions" or "chat"); ValueError for another."""
    try:
        return STYLES[api]()
    except KeyError:
        raise ValueError(f"unknown api {api!r}: choose 'completions' or 'chat'") from None


__all__ = [
    "GENERATION_SCHEMA", "INSTANCES_SCHEMA", "LABELED_INSTANCES_SCHEMA", "NO_INPUT", "STOP_NUMBER",
    "STYLES", "ChatRequest", "ChatStyle", "CompletionRequest", "CompletionsStyle", "PromptStyle",
    "Request", "classification_chat", "classification_completion", "fewshot_pool",
    "generation_chat", "generation_completion", "instances_chat", "instances_completion",
    "instructions_asked",
    "style_for",
]
