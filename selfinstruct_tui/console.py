"""The console every line the CLI and the headless printer write goes through."""

from __future__ import annotations

from rich.console import Console


def text_console(*, stderr: bool = False, soft_wrap: bool = True) -> Console:
    """A rich Console that prints text as it is: no emoji codes (rich turned the ":100:" of
    "seeds.jsonl:100: missing field" into an emoji, the line number gone), no highlighting.
    Print with markup=False where the text is not ours (paths, model answers, endpoint words)."""
    return Console(stderr=stderr, highlight=False, emoji=False, soft_wrap=soft_wrap)
