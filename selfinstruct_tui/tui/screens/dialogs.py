"""Small typed modal dialogs: confirm, choose one of several, export."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select

from selfinstruct_tui.engine.control import RunState
from selfinstruct_tui.engine.exports import EXTENSIONS, FORMATS
from selfinstruct_tui.tui.widgets.panes import MarkedCheckbox


def run_phase(state: str) -> str:
    """What a question about the run depends on: "going" (starting, running), "paused", or
    "ended" (stopping and every end)."""
    return "going" if state in (RunState.STARTING, RunState.RUNNING) else \
        "paused" if state == RunState.PAUSED else "ended"


class RunQuestion:
    """A question that may depend on the run's phase: `asked_in`, the phase (`run_phase`) it
    was written for, or None (the app withdraws it when the phase changes), and `key`, the
    key that asked it."""

    asked_in: str | None = None
    key: str = ""

    def withdraw(self) -> None:
        """Close the question unanswered."""
        raise NotImplementedError


class ConfirmScreen(RunQuestion, ModalScreen[bool]):
    """A yes/no question (`RunQuestion`'s `asked_in` and `key`)."""

    BINDINGS = [Binding("escape,n", "answer(False)", "No"), Binding("y", "answer(True)", "Yes")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No", *,
                 asked_in: str | None = None, key: str = "") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no
        self.asked_in, self.key = asked_in, key

    def withdraw(self) -> None:
        """Close the question unanswered (as No)."""
        self.dismiss(False)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="primary", id="yes")
                yield Button(f"{self.no} (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ChoiceScreen(RunQuestion, ModalScreen[str | None]):
    """A question with several answers, each (id, key, label): returns the chosen id, or None
    for Escape (the way back: nothing is done)."""

    BINDINGS = [Binding("escape", "choose(None)", "Back")]

    def __init__(self, question: str, choices: list[tuple[str, str, str]], *,
                 asked_in: str | None = None, key: str = "") -> None:
        super().__init__()
        self.question, self.choices = question, choices
        self.asked_in, self.key = asked_in, key
        for choice_id, key, label in choices:
            if key != "escape":  # Escape is the way back already
                self._bindings.bind(key, f"choose({choice_id!r})", label)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                for n, (choice_id, key, label) in enumerate(self.choices):
                    shown = "esc" if key == "escape" else key
                    yield Button(f"{label} ({shown})", id=choice_id,
                                 variant="primary" if n == 0 else "default")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)

    def withdraw(self) -> None:
        """Close the question unanswered (as Escape)."""
        self.dismiss(None)


class ExportScreen(ModalScreen[tuple[str, str, bool] | None]):
    """Choose a format, a path and whether only tasks that passed the quality review go out;
    returns (format, path, reviewed only) or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export the machine-generated tasks", classes="question")
            yield Select([(f, f) for f in FORMATS], value="alpaca", allow_blank=False,
                         id="format")
            yield Input(value=f"{self.run_dir}/export-alpaca.json", id="path")
            yield MarkedCheckbox("only tasks that passed the quality review (r)",
                                 id="reviewed-only")
            with Horizontal(classes="buttons"):
                yield Button("Export", variant="primary", id="export")
                yield Button("Cancel", id="cancel")

    def on_select_changed(self, event: Select.Changed) -> None:
        fmt = str(event.value)
        self.query_one("#path", Input).value = f"{self.run_dir}/export-{fmt}.{EXTENSIONS[fmt]}"

    def on_input_submitted(self) -> None:
        self._done()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self._done()
        else:
            self.dismiss(None)

    def _done(self) -> None:
        self.dismiss((str(self.query_one("#format", Select).value),
                      self.query_one("#path", Input).value.strip(),
                      self.query_one("#reviewed-only", Checkbox).value))

    def action_cancel(self) -> None:
        self.dismiss(None)
