"""The console every line the CLI and the headless printer write goes through."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def text_console(*, stderr: bool = False, soft_wrap: bool = True) -> Console:
    """A rich Console that prints text as it is: no emoji codes (rich turned the ":100:" of
    "seeds.jsonl:100: missing field" into an emoji, the line number gone), no highlighting.
    Print with markup=False where the text is not ours (paths, model answers, endpoint words)."""
    return _Console(stderr=stderr, highlight=False, emoji=False, soft_wrap=soft_wrap)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader stopped reading (`2>&1 | head`): this console and the process's stdout
        and stderr go quiet, and the command goes on to its own exit status. Rich's own ends
        the process with SystemExit(1): a run that failed (exit 3) or finished (exit 0) said 1
        when its last line found the pipe closed."""
        self.quiet = True
        reader_gone()


def reader_gone() -> None:
    """After a BrokenPipeError: the reader of stdout or stderr stopped reading (`2>&1 | head`).
    Both go to /dev/null, so that later lines and the interpreter's last flush do not raise
    again (which ended a run that failed with exit 3 as a traceback and exit 1)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):  # no file descriptor (replaced by a test harness)
                pass
    finally:
        os.close(devnull)
