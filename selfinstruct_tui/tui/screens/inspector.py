"""The task inspector: everything about one task, and the way to drop or edit it."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import NamedTuple

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.css.styles import RulesMap
from textual.strip import Strip
from textual.style import Style
from textual.visual import RenderOptions, Visual
from textual.widgets import Button, Label, Static, TextArea

from selfinstruct_tui.engine.parsing import json_field_text
from selfinstruct_tui.engine.records import escape_line_separators, json_type_name
from selfinstruct_tui.engine.seeds import Instance, pool_instance
from selfinstruct_tui.engine.task import Task
from selfinstruct_tui.tui.screens.dialogs import ConfirmScreen, Dialog

# A line's list marker ("1. ", "2) ", "- ", "* ", "• ", "a) "): its wrapped lines hang after it
LIST_MARKER = re.compile(r"(?:[-*+•]|\d{1,3}[.)]|[A-Za-z][.)]) +")
NARROWEST = 16  # columns a line's text keeps at least (the indents give way first)


class Written(NamedTuple):
    """A text as the model (or a person) wrote it, shown from column `indent` (its first line
    follows what precedes it on that row, e.g. a label `indent` columns wide)."""

    text: str
    indent: int = 0


def wrap_written(written: Written, width: int) -> Content:
    """`written` wrapped to `width` columns as written: each line keeps its indent, blank lines
    stay, and a line too long for the width goes on under its own start (under the text after
    its list marker: "1. ", "- "), every line from column `written.indent` but the first. The
    indents give way on a width too narrow for them (each line keeps `NARROWEST` columns).
    Returns the text without a final newline."""
    out: list[Content | str] = []
    for n, line in enumerate(written.text.expandtabs(4).split("\n")):
        indent = written.indent
        body = line.lstrip(" ")
        lead = len(line) - len(body)
        marker = LIST_MARKER.match(body)
        hang = lead + (marker.end() if marker else 0)
        if width - indent - hang < NARROWEST:
            hang = lead = 0
            body = line.strip(" ") if marker is None else body
        indent = max(0, min(indent, width - hang - NARROWEST))
        head, rest = line[:hang], body[hang - lead:]  # (hang 0: lead 0, no head)
        lines = Content(rest).wrap(max(1, width - indent - hang)) if rest else [Content()]
        for k, piece in enumerate(lines):
            if n or k:
                out.append("\n" + (" " * indent if piece.plain or hang else ""))
            out.append(head if k == 0 else " " * hang)
            out.append(piece.rstrip())
    return Content.assemble(*out)


class TaskDetails(Visual):
    """The inspector's text: labels (`Content`) and texts as written (`Written`: the task's
    instruction, inputs and outputs, the prompt, the raw response), drawn at the width it is
    given with `wrap_written` (Textual's wrapping of one long text lost a written line's indent
    on its wrapped lines and put an output's lines under the label). `plain` (and str()): the
    whole text unwrapped."""

    def __init__(self) -> None:
        self.parts: list[Content | Written] = []
        self._drawn: tuple[int, Content] | None = None  # (width, the text wrapped to it)

    def append(self, text: str, style: str = "") -> None:
        self.parts.append(Content.styled(text, style))

    def written(self, text: str, indent: int = 0) -> None:
        self.parts.append(Written(text, indent))

    @property
    def plain(self) -> str:
        return "".join(p.plain if isinstance(p, Content) else p.text for p in self.parts)

    def __str__(self) -> str:
        return self.plain

    def for_width(self, width: int) -> Content:
        """The text wrapped to `width` columns (kept for the last width asked)."""
        if self._drawn is None or self._drawn[0] != width:
            self._drawn = width, Content.assemble(*(
                part if isinstance(part, Content) else wrap_written(part, width)
                for part in self.parts))
        return self._drawn[1]

    def render_strips(self, width: int, height: int | None, style: Style,
                      options: RenderOptions) -> list[Strip]:
        return self.for_width(width).render_strips(width, height, style, options)

    def get_optimal_width(self, rules: RulesMap, container_width: int) -> int:
        return container_width

    def get_height(self, rules: RulesMap, width: int) -> int:
        return self.for_width(width).get_height(rules, width)


def task_details(task: Task, prompt: str | None, response: str | None,
                 answered_by: list[tuple[str, str | None, str | None]] | None = None
                 ) -> TaskDetails:
    """The inspector's text. `answered_by`: (request kind, endpoint base URL, model) of each
    request that made the task (provenance; empty for seeds)."""
    t = TaskDetails()
    t.append(f"Task #{task.id}", style="bold")
    origin = task.origin
    if task.is_seed:
        origin = f"seed {task.seed_id} ({task.seed_origin or 'file'}" + (
            f" from machine task #{task.source_task})" if task.source_task else ")")
    t.append(f"  {origin}, round {task.round}, "
             f"{'classification' if task.is_classification else 'not classification'}, "
             + (f"max ROUGE-L {task.max_score:.3f}" if not task.is_seed else
                "no ROUGE-L (seeds are not filtered)") + "\n\n")
    t.append("Instruction\n", style="bold underline")
    t.written(task.instruction)
    t.append("\n\n")
    t.append(f"Instances ({len(task.instances)})\n", style="bold underline")
    for n, inst in enumerate(task.instances, start=1):
        label = f"{n}. input: "
        t.append(label, style="bold")
        if inst.input:
            t.written(inst.input, cell_len(label))
        else:
            t.append("(none)")
        label = " " * len(f"{n}. ") + "output: "
        t.append("\n" + label, style="bold")
        t.written(inst.output, cell_len(label))
        t.append("\n")
    t.append("\nMost similar pool tasks\n", style="bold underline")
    if task.most_similar:
        for s in task.most_similar[:5]:
            label = f"{s.score:.3f}  #{s.id} "
            t.append(label)
            t.written(s.instruction, cell_len(label))
            t.append("\n")
    else:
        t.append("(none recorded)\n")
    if answered_by:
        t.append("\nAnswered by\n", style="bold underline")
        for kind, endpoint, model in answered_by:
            t.append(f"{kind:<10} {endpoint or '(not recorded)'}"
                     + (f"  model {model}" if model else "") + "\n")
    if prompt is not None:
        t.append(f"\nPrompt #{task.prompt_id} that produced it\n", style="bold underline")
        t.written(prompt[-4000:])
        t.append("\n\nRaw response\n", style="bold underline")
        t.written(response or "")
        t.append("\n")
    return t


class InspectorScreen(Dialog[tuple[str, dict] | None]):
    """Returns ("drop", {}), ("edit", {...}), ("promote", {}) (+: a machine task becomes a
    seed), ("demote", {}) (-: a promoted seed goes back to the pool) or None."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("d", "drop", "Drop task"),
        Binding("e", "edit", "Edit task"),
        Binding("plus", "promote", "Promote to seed"),
        Binding("minus", "demote", "Demote seed"),
    ]

    def __init__(self, task: Task, prompt: str | None, response: str | None,
                 answered_by: list[tuple[str, str | None, str | None]] | None = None,
                 editable: Task | None = None) -> None:
        """`editable`: what `e` opens the editor on, when not the task as shown (a seed whose
        edit is pending: the set the next round uses, which the edit changes)."""
        super().__init__()
        self.task_data = task
        self.editable = editable or task
        self.prompt, self.response = prompt, response
        self.answered_by = answered_by or []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            with VerticalScroll(id="inspector-body"):
                yield Static(task_details(self.task_data, self.prompt, self.response,
                                          self.answered_by), id="inspector-text")
            with Horizontal(classes="buttons"):
                yield Button("Drop (d)", variant="error", id="drop")
                yield Button("Edit (e)", id="edit")
                if not self.task_data.is_seed:
                    yield Button("Promote to seed (+)", id="promote")
                elif self.task_data.seed_origin == "promoted":
                    yield Button("Demote to the pool (-)", id="demote")
                yield Button("Close (esc)", id="close")

    def on_mount(self) -> None:
        # The prompt and the raw response are below the first screenful: the arrows and
        # PgUp/PgDn scroll to them (with a button focused they did nothing)
        body = self.query_one("#inspector-body", VerticalScroll)
        body.border_subtitle = "↑↓ PgUp PgDn: scroll to the prompt and the raw response"
        body.focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"drop": self.action_drop, "edit": self.action_edit, "close": self.action_close,
         "promote": self.action_promote, "demote": self.action_demote}[str(event.button.id)]()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_drop(self) -> None:
        """After asking (it has no undo; `d` on the main screen is detach, so a second press
        went from dropping a task straight to the detach dialog)."""
        def answer(yes: bool | None) -> None:
            if yes:
                self.dismiss(("drop", {}))

        task = self.task_data
        if task.is_seed:  # (the seed manager's delete: through the seed set)
            back = (f" It came from machine task #{task.source_task}, which returns to the "
                    "pool." if task.seed_origin == "promoted" and task.source_task else "")
            question = (f"Delete seed {task.to_seed().id} (task #{task.id}) from the seed set? "
                        f"The change applies at the next round.{back}")
        else:
            question = (f"Drop task #{task.id}? It leaves the pool and the exports for good "
                        "(the run keeps it, marked dropped_by_user).")
        self.app.push_screen(ConfirmScreen(question, yes="Drop", no="Keep"), answer)

    def action_promote(self) -> None:
        self.dismiss(("promote", {}))

    def action_demote(self) -> None:
        self.dismiss(("demote", {}))

    def action_edit(self) -> None:
        def done(result: dict | None) -> None:
            if result is not None:
                self.dismiss(("edit", result))

        self.app.push_screen(TaskEditScreen(self.editable), done)


def edited_instance(value: dict) -> Instance:
    """An instance of the task editor's JSON as the pool keeps it (`pool_instance`): a null
    input is no input, a null output an empty one (refused), a number, true/false, list or
    object its JSON text (`json_field_text`), never Python's ("None", "True", "['a']").
    KeyError without "input" or "output"; TypeError when `value` is not an object."""
    if not isinstance(value, dict):
        raise TypeError(f"each instance must be an object, got {json_type_name(value)}")
    return pool_instance(json_field_text(value["input"]) or "",
                         json_field_text(value["output"]) or "")


class TaskEditScreen(Dialog[dict | None]):
    """A task as JSON (instruction, is_classification, instances), checked as it is saved.
    Returns the edited values or None; `esc` with changes asks before discarding them."""

    BINDINGS = [Binding("ctrl+s", "save", "Save"),
                # priority: the focused TextArea took the first escape (to release focus)
                Binding("escape", "cancel", "Cancel", priority=True)]

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task_data = task

    def compose(self) -> ComposeResult:
        data = {"instruction": self.task_data.instruction,
                "is_classification": self.task_data.is_classification,
                "instances": [asdict(i) for i in self.task_data.instances]}
        task = self.task_data
        what = (f"seed {task.to_seed().id} (task #{task.id}; the change applies at the next "
                "round)" if task.is_seed else f"task #{task.id}")
        self.initial = escape_line_separators(json.dumps(data, indent=2, ensure_ascii=False))
        with Vertical(classes="dialog wide"):
            yield Label(f"Edit {what} (JSON). ctrl+s saves, esc cancels.", classes="question")
            yield TextArea(self.initial, id="task-text", show_line_numbers=True)
            yield Static("", id="task-errors", classes="errors")

    def action_save(self) -> None:
        errors = self.query_one("#task-errors", Static)
        text = self.query_one("#task-text", TextArea).text
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"the task must be a JSON object, got {json_type_name(data)}")
            instruction = data["instruction"]
            if not isinstance(instruction, str) or not instruction.strip():
                raise ValueError("'instruction' must be a non-empty string")
            is_cls = data.get("is_classification", False)
            if not isinstance(is_cls, bool):  # (bool("false") is True)
                raise TypeError("'is_classification' must be true or false, got "
                                f"{json.dumps(is_cls, ensure_ascii=False)}")
            if not isinstance(data["instances"], list):
                raise TypeError("'instances' must be a list, got "
                                f"{json_type_name(data['instances'])}")
            instances = [edited_instance(i) for i in data["instances"]]
            if not instances or any(not i.output for i in instances):
                raise ValueError("give at least one instance, each with an output")
        except json.JSONDecodeError as exc:
            errors.update(f"line {exc.lineno}: bad JSON: {exc.msg}")
            errors.add_class("visible")
            return
        except KeyError as exc:
            errors.update(Text(f"not saved: the field {exc} is missing"))
            errors.add_class("visible")
            return
        except (TypeError, ValueError) as exc:
            errors.update(Text(f"not saved: {exc}"))  # (the text as typed)
            errors.add_class("visible")
            return
        self.dismiss({"instruction": instruction.strip(), "instances": instances,
                      "is_classification": is_cls})

    def action_cancel(self) -> None:
        """Close without saving; with changes, only after asking (as the seed form does)."""
        if self.query_one("#task-text", TextArea).text == self.initial:
            self.dismiss(None)
            return

        def answer(discard: bool | None) -> None:
            if discard:
                self.dismiss(None)

        self.app.push_screen(ConfirmScreen("Discard your changes to this task?",
                                           yes="Discard", no="Keep editing"), answer)
