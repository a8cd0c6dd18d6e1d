"""Small typed modal dialogs: confirm, choose one of several, export."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

from rich.errors import MarkupError
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from selfinstruct_tui.engine.control import RunState
from selfinstruct_tui.engine.exports import EXTENSIONS, FORMATS, REVIEWED_ONLY_LABEL
from selfinstruct_tui.tui.widgets.footer import RunFooter
from selfinstruct_tui.tui.widgets.panes import MarkedCheckbox

ResultT = TypeVar("ResultT")


class Dialog(ModalScreen[ResultT]):
    """A modal dialog of the app: its own footer and a notice line at the bottom of the screen.

    The footer lists the dialog's keys (Textual's footer shows the bindings of the screen it is
    on; the main screen's, left under a dialog, listed Pause, Stop, Detach, which do nothing
    there). The notice line shows the newest notification not yet expired (title, message; the
    next one still showing when it expires): while a dialog is on top, notifications are said
    there, in the layout, and their toasts are hidden (app.tcss), because a toast is drawn over
    the screen and a long one ("Run crashed" with its resume command) hid most of a dialog's
    fields on a small terminal. The notification itself is kept as Textual keeps it: its toast
    shows on the main screen if it is still current when the dialog closes."""

    def on_mount(self) -> None:
        # (Textual calls every class's on_mount: the dialogs' own ones run first)
        self._notice_timer: Timer | None = None
        bottom = Vertical(Static("", id="dialog-notice"), RunFooter(), id="dialog-bottom")
        self.mount(bottom)
        self.call_after_refresh(self.show_notice)

    def on_screen_resume(self) -> None:
        if self.query("#dialog-notice"):
            self.show_notice()

    def show_notice(self) -> None:
        """Show the newest notification of the app not yet expired (none: the line hides);
        shown again when it expires."""
        shown = self.query("#dialog-notice")
        if not shown:
            return
        line = shown.first(Static)
        # Textual keeps the notifications in App._notifications and offers no public way to
        # read them (textual is pinned in pyproject.toml; a test reads this line's result)
        current = [n for n in self.app._notifications if not n.has_expired]
        if self._notice_timer is not None:
            self._notice_timer.stop()
            self._notice_timer = None
        line.set_class(bool(current), "visible")
        if not current:
            line.update("")
            return
        note = current[-1]
        text = Text()
        if note.title:
            text.append(f"{note.title}: ", style="bold")
        try:
            text.append_text(Text.from_markup(note.message) if note.markup
                             else Text(note.message))
        except MarkupError:
            text.append(note.message)
        if len(current) > 1:
            text.append(f"  (+{len(current) - 1} more)", style="dim")
        line.update(text)
        for severity in ("information", "warning", "error"):
            line.set_class(note.severity == severity, f"-{severity}")
        self._notice_timer = self.set_timer(max(note.time_left, 0.05), self.show_notice)


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


class ConfirmScreen(RunQuestion, Dialog[bool]):
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


class ChoiceScreen(RunQuestion, Dialog[str | None]):
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


class ExportChoice(NamedTuple):
    """What the export dialog holds: a format (one of `FORMATS`), the path as typed ("" for
    the run's default), and whether only tasks that passed the quality review go out."""

    fmt: str = "alpaca"
    path: str = ""
    reviewed_only: bool = False


def default_export_name(fmt: str) -> str:
    """The file name an export of `fmt` gets by default: "export-alpaca.json"."""
    return f"export-{fmt}.{EXTENSIONS[fmt]}"


def path_for_format(path: str, old: str, new: str) -> str:
    """The dialog's path after its format changed from `old` to `new`, in the folder the user
    chose: the default name of `old` becomes that of `new`, a name with `old`'s extension gets
    `new`'s ("data.json" -> "data.jsonl"); any other name is left as typed."""
    folder, sep, name = path.rpartition("/")
    if name == default_export_name(old):
        name = default_export_name(new)
    elif name.endswith("." + EXTENSIONS[old]):
        name = name[:-len(EXTENSIONS[old])] + EXTENSIONS[new]
    return folder + sep + name


# The check box's explanation: "(r)" after its label read as a key of the dialog, where r does
# nothing (it is the main screen's review key).
REVIEW_KEY_HINT = "The quality review is key r on the main screen."


class ExportScreen(Dialog[ExportChoice]):
    """Choose a format, a path and whether only tasks that passed the quality review go out
    (an `ExportChoice`; `choice`: the values to start from, the last ones of the session).
    Export (or enter in the path) hands the choice to `start`, which runs the export in a
    worker (a long export never holds the screen) and reports back with `finished`: an error
    is shown beside the field it is about (or under them all), that field takes the focus and
    the dialog stays open with everything as typed; it closes on success, or on Escape/Cancel
    (an export still running then finishes and is reported by the app). Returns the choice as
    the dialog held it when it closed."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    FIELDS = {"path": "#path", "reviewed_only": "#reviewed-only"}  # ExportRefused's settings

    def __init__(self, run_dir: str, start: Callable[[ExportScreen, ExportChoice], object],
                 choice: ExportChoice | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.start = start
        self.choice = choice or ExportChoice(path=f"{run_dir}/{default_export_name('alpaca')}")
        self._path_format = self.choice.fmt  # the format the path was last adjusted to
        self.running: ExportChoice | None = None  # the choice being exported
        self.closed = False
        self._refused: ExportChoice | None = None  # what the error shown is about
        self._close_on_resume: ExportChoice | None = None  # exported under another screen

    def compose(self) -> ComposeResult:
        choice = self.choice
        with Vertical(classes="dialog", id="export-dialog"):
            yield Label("Export the machine-generated tasks", classes="question")
            with VerticalScroll(id="export-body", can_focus=False):  # (errors on a small screen)
                yield Select([(f, f) for f in FORMATS], value=choice.fmt, allow_blank=False,
                             id="format")
                yield Input(value=choice.path, id="path")
                yield Static("", id="path-error", classes="errors", markup=False)
                yield MarkedCheckbox(REVIEWED_ONLY_LABEL, choice.reviewed_only, id="reviewed-only")
                yield Static(REVIEW_KEY_HINT, id="review-hint", classes="hint")
                yield Static("", id="reviewed_only-error", classes="errors", markup=False)
                yield Static("", id="export-error", classes="errors", markup=False)
            yield Static("", id="export-status")
            with Horizontal(classes="buttons"):
                yield Button("Export", variant="primary", id="export")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    @property
    def value(self) -> ExportChoice:
        """The choice as the dialog holds it now."""
        return ExportChoice(str(self.query_one("#format", Select).value),
                            self.query_one("#path", Input).value.strip(),
                            self.query_one("#reviewed-only", Checkbox).value)

    def on_select_changed(self, event: Select.Changed) -> None:
        fmt = str(event.value)
        if fmt != self._path_format:  # (not the mount's own Changed: a remembered path stays)
            path = self.query_one("#path", Input)
            path.value = path_for_format(path.value, self._path_format, fmt)
            self._path_format = fmt
        self._recheck()

    def on_input_changed(self) -> None:
        self._recheck()

    def on_checkbox_changed(self) -> None:
        self._recheck()

    def _recheck(self) -> None:
        """An error goes at the first change to what it was about (not at a change message
        that arrives after it, with the values it was about)."""
        if self._refused is not None and self.value != self._refused:
            self._clear_errors()

    def on_input_submitted(self) -> None:
        self._export()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self._export()
        else:
            self.action_cancel()

    def _export(self) -> None:
        if self.running is not None:
            return
        choice = self.value
        self._clear_errors()
        self.running = choice
        self.query_one("#export", Button).disabled = True
        status = self.query_one("#export-status", Static)
        status.update(f"Exporting ({choice.fmt}) ... (esc closes this; the export goes on)")
        status.add_class("visible")
        self.start(self, choice)

    def finished(self, error: str | None = None, setting: str | None = None) -> bool:
        """The export started by `start` ended: closes the dialog (`error` None) or shows
        `error` beside the field of `setting` ("path", "reviewed_only": it takes the focus;
        None: under the fields). False when the dialog was closed meanwhile
        (its caller then says it)."""
        exported, self.running = self.running, None
        self._refused = None if error is None else exported
        if self.closed:
            return False
        if error is None:  # closed with what was exported (though the fields changed since)
            if self.app.screen is self:
                self._close(exported)
            else:  # (dismiss pops the top screen: a question asked over this one)
                self._close_on_resume = exported
            return True
        self.query_one("#export", Button).disabled = False
        self.query_one("#export-status", Static).remove_class("visible")
        shown = self.query_one(f"#{setting}-error" if setting in self.FIELDS else "#export-error",
                               Static)
        shown.update(f"Not exported: {error}")
        shown.add_class("visible")
        if setting in self.FIELDS:
            field = self.query_one(self.FIELDS[setting])
            field.add_class("-invalid")
            field.focus()
        shown.scroll_visible()
        return True

    def _clear_errors(self) -> None:
        self._refused = None
        for shown in self.query(".errors"):
            shown.remove_class("visible")
        for selector in self.FIELDS.values():
            self.query_one(selector).remove_class("-invalid")

    def on_screen_resume(self) -> None:
        if self._close_on_resume is not None:
            self._close(self._close_on_resume)

    def _close(self, choice: ExportChoice | None = None) -> None:
        self.closed = True
        self.dismiss(choice or self.value)

    def action_cancel(self) -> None:
        self._close()
