"""The seed editor: a modal JSONL editor over the run's seed set, validated as you save."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult, SuspendNotSupported
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Label, Static, TextArea

from selfinstruct_tui.engine.errors import InputFileError
from selfinstruct_tui.engine.seeds import SeedTask, parse_seeds
from selfinstruct_tui.tui.screens.dialogs import Dialog
from selfinstruct_tui.tui.widgets.panes import MarkedCheckbox

EDITOR_NAME = "seed editor"


@dataclass
class SeedEdit:
    seeds: list[SeedTask]
    text: str
    write_back: bool


class SeedEditorScreen(Dialog[SeedEdit | None]):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+o", "external_editor", "$EDITOR"),
        # priority: a focused TextArea would take the first escape (to release focus)
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    def __init__(self, text: str, seeds_file: str | None) -> None:
        super().__init__()
        self.initial = text
        self.seeds_file = seeds_file

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Seeds (self-instruct JSONL, one task per line). ctrl+s saves; the "
                        "change takes effect at the next round. ctrl+o opens $EDITOR.",
                        classes="question")
            yield TextArea(self.initial, id="seed-text", show_line_numbers=True,
                           soft_wrap=False, tab_behavior="indent")
            yield Static("", id="seed-errors", classes="errors")
            with Horizontal(classes="buttons"):
                if self.seeds_file:
                    yield MarkedCheckbox(f"also write back to {self.seeds_file}", id="write-back")
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#seed-text", TextArea).focus()

    @property
    def text(self) -> str:
        return self.query_one("#seed-text", TextArea).text

    def validate(self) -> list[SeedTask] | None:
        errors = self.query_one("#seed-errors", Static)
        try:
            seeds, _ = parse_seeds(EDITOR_NAME, self.text)
        except InputFileError as exc:
            shown = exc.problems[:8]
            more = len(exc.problems) - len(shown)
            errors.update("\n".join(shown) + (f"\n... and {more} more" if more > 0 else ""))
            errors.add_class("visible")
            return None
        errors.update("")
        errors.remove_class("visible")
        return seeds

    def action_save(self) -> None:
        seeds = self.validate()
        if seeds is None:
            self.notify("The seeds were not saved: fix the lines listed below the editor.",
                        severity="error")
            return
        write_back = bool(self.seeds_file) and self.query_one("#write-back", Checkbox).value
        self.dismiss(SeedEdit(seeds, self.text, write_back))

    def action_cancel(self) -> None:
        """Close; with unsaved changes, only after asking."""
        if self.text == self.initial:
            self.dismiss(None)
            return

        def answer(discard: bool | None) -> None:
            if discard:
                self.dismiss(None)

        from selfinstruct_tui.tui.screens.dialogs import ConfirmScreen

        self.app.push_screen(ConfirmScreen("Discard your changes to the seeds? Nothing of them "
                                           "is saved.", yes="Discard", no="Keep editing"),
                             answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "cancel":
            self.action_cancel()

    def action_external_editor(self) -> None:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
        if not editor:
            self.notify("Set $EDITOR (e.g. export EDITOR=vim) to edit seeds in your editor.",
                        severity="warning")
            return
        # Nothing may be raised inside `suspend()`: Textual resumes the app only when its block
        # ends normally, and an editor that failed left the app suspended (a dead screen)
        outcome: str | EditorFailed
        try:
            with self.app.suspend():
                try:
                    outcome = edit_externally(self.text, editor)
                except EditorFailed as exc:
                    outcome = exc
        except SuspendNotSupported:
            self.notify("$EDITOR cannot be opened here: this terminal cannot be handed over to "
                        "another program (Textual cannot suspend the app); edit the text here "
                        "or in the seed file", severity="warning", timeout=10)
            return
        if isinstance(outcome, EditorFailed):
            self.notify(str(outcome), severity="error", timeout=10)
            return
        self.query_one("#seed-text", TextArea).text = outcome
        self.validate()


class EditorFailed(Exception):
    """$EDITOR could not edit the text: why, in words for the user."""


def edit_externally(text: str, editor: str, suffix: str = ".jsonl") -> str:
    """The text as `editor` (a $EDITOR setting: a program and its arguments, split as a shell
    would, e.g. "code --wait") saved it, edited in a temporary file (removed afterwards). Run
    in the foreground: the caller hands the terminal over (App.suspend).

    Raises EditorFailed when the setting cannot be read, the program cannot be started, it
    exits with a non-zero status (vim's :cq, a crash): its text is not taken, as git does
    with a commit message; or the file it left cannot be read back as UTF-8 text (removed,
    saved in another encoding)."""
    try:
        command = shlex.split(editor)
    except ValueError as exc:
        raise EditorFailed(f"$EDITOR {editor!r} cannot be read as a command ({exc}); "
                           "fix its quoting") from None
    if not command:
        raise EditorFailed("$EDITOR is blank; set it to your editor (e.g. export EDITOR=vim)")
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="seeds-")
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            done = subprocess.run([*command, str(path)], check=False)
        except OSError as exc:
            raise EditorFailed(f"$EDITOR {command[0]!r} cannot be run ({exc.strerror or exc}); "
                               "set it to an editor on your PATH") from None
        if done.returncode != 0:
            raise EditorFailed(f"$EDITOR {editor!r} exited with status {done.returncode}: "
                               "the text is unchanged")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise EditorFailed(f"$EDITOR {editor!r} saved the text in an encoding other than "
                               f"UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
                               f"{exc.start}): the text is unchanged; save it as UTF-8") from None
        except OSError as exc:
            raise EditorFailed(f"$EDITOR {editor!r} left no file to read back ({path}: "
                               f"{exc.strerror or exc}): the text is unchanged") from None
    finally:
        path.unlink(missing_ok=True)
