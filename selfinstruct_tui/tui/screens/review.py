"""The quality review: one sampled task at a time, three yes/no questions (Wang et al. 2022,
§4.2, Table 2), answers sent as commands through the app's `RunControl`.

Without a sample (or when every sampled task is done) the screen asks for a sample size and
draws one, seeded, from the active machine tasks; the sample and every answer are stored, so the
review continues where it stopped, here or in another UI attached to the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Static

from selfinstruct_tui.engine.control import Command, ReviewAnswer, ReviewSkip, SetReviewSample
from selfinstruct_tui.engine.review import (
    DEFAULT_SAMPLE_SIZE,
    QUESTION_TEXT,
    draw_sample,
    next_item,
    summarize,
)
from selfinstruct_tui.engine.store import REVIEW_QUESTIONS, ReviewRecord
from selfinstruct_tui.engine.task import Task
from selfinstruct_tui.tui.screens.dialogs import Dialog


def review_details(record: ReviewRecord, task: Task | None) -> Text:
    """The sampled task as the reviewer judges it: instruction, the sampled instance and where
    the task came from (round, prompt, max ROUGE-L against the pool, its most similar task)."""
    t = Text()
    if task is None:
        t.append(f"Task #{record.task_id} is no longer in the run's store.\n", style="bold")
        t.append("Skip it with s.")
        return t
    t.append(f"Task #{task.id}", style="bold")
    t.append(f"  round {task.round}, prompt "
             f"{'#' + str(task.prompt_id) if task.prompt_id else '(none)'}, "
             f"max ROUGE-L {task.max_score:.3f}"
             + (", classification" if task.is_classification else ""))
    if task.status != "active":
        t.append(f"  [{task.status} since it was sampled]", style="bold")
    t.append("\n")
    if task.most_similar:
        best = max(task.most_similar, key=lambda s: s.score)
        t.append("most similar: ", style="italic")
        text = " ".join(best.instruction.split())
        t.append(f"#{best.id} ({best.score:.2f}) "
                 f"{text if len(text) <= 60 else text[:59] + '…'}\n", style="italic")
    t.append("\nInstruction\n", style="bold underline")
    t.append(task.instruction + "\n")
    n = len(task.instances)
    if record.instance_index < n:
        instance = task.instances[record.instance_index]
        t.append(f"\nInstance {record.instance_index + 1} of {n} (sampled)\n",
                 style="bold underline")
        t.append("input: ", style="bold")
        t.append((instance.input or "(none)") + "\n")
        t.append("output: ", style="bold")
        t.append(instance.output + "\n")
    else:
        t.append(f"\nThe sampled instance {record.instance_index + 1} no longer exists (the "
                 f"task has {n} now); skip it with s.\n", style="bold")
    return t


def question_lines(record: ReviewRecord) -> Text:
    """The three questions, the current one highlighted, the answered ones marked yes/no."""
    t = Text()
    current = record.next_question
    for n, (question, answer) in enumerate(zip(REVIEW_QUESTIONS, record.answers, strict=True),
                                           start=1):
        mark = {True: "yes", False: "no ", None: "   "}[answer]
        line = f" {n}. [{mark}] {QUESTION_TEXT[question]} "
        t.append(line, style="bold reverse" if question == current else "")
        if n < len(REVIEW_QUESTIONS):
            t.append("\n")
    return t


class ReviewScreen(Dialog[None]):
    """Review sampled tasks: y/n answer the highlighted question, s skips the task, esc leaves.

    `records`: the review so far, in review order; `machine_tasks`: (task id, instance count)
    of the active machine tasks, to draw new samples from; `seed`: the run's random seed;
    `load_task`: a task by id from the store; `send`: the app's way to send a command."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("s", "skip", "Skip task"),
        Binding("escape", "leave", "Leave"),
    ]

    def __init__(self, records: list[ReviewRecord], machine_tasks: list[tuple[int, int]],
                 seed: int | None, load_task: Callable[[int], Task | None],
                 send: Callable[[Command], None]) -> None:
        super().__init__()
        self.records = {r.task_id: r for r in sorted(records, key=lambda r: r.position)}
        self.machine_tasks = machine_tasks
        self.seed = seed
        self.load_task = load_task
        self.send = send
        self._task_cache: dict[int, Task | None] = {}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="review-dialog"):
            yield Static("", id="review-progress")
            with VerticalScroll(id="review-body"):
                yield Static("", id="review-task")
            yield Static("", id="review-questions")
            with Horizontal(id="review-setup"):
                yield Label("sample size ", id="review-size-label")
                yield Input(str(DEFAULT_SAMPLE_SIZE), id="review-size", type="integer")
                yield Button("Draw sample", variant="primary", id="review-draw")
            yield Static("", id="review-errors", classes="errors")
            yield Static("y yes · n no · s skip task · esc leave (progress is kept)",
                         id="review-keys")

    def on_mount(self) -> None:
        self._show()

    # -- what is shown ----------------------------------------------------------------------------
    @property
    def current(self) -> ReviewRecord | None:
        return next_item(self.records.values())

    def _sampled_task(self, task_id: int) -> Task | None:
        if task_id not in self._task_cache:
            self._task_cache[task_id] = self.load_task(task_id)
        return self._task_cache[task_id]

    def _show(self) -> None:
        summary = summarize(self.records.values())
        current = self.current
        progress = self.query_one("#review-progress", Static)
        setup = self.query_one("#review-setup")
        body = self.query_one("#review-task", Static)
        questions = self.query_one("#review-questions", Static)
        if current is not None:
            progress.update(Text.assemble(
                ("Quality review", "bold"),
                f"  task {current.position} of {summary.sampled} · {summary.done} done"
                + (f" ({summary.skipped} skipped)" if summary.skipped else "")
                + " · question "
                f"{REVIEW_QUESTIONS.index(current.next_question or 'instruction') + 1} of 3"))
            body.update(review_details(current, self._sampled_task(current.task_id)))
            questions.update(question_lines(current))
            questions.display = True
            setup.display = False
            self.query_one("#review-keys").display = True
            return
        questions.display = False
        setup.display = True
        self.query_one("#review-keys").display = False
        self.query_one("#review-draw", Button).label = \
            "Add a sample" if self.records else "Draw sample"
        if self.records:
            progress.update(Text.assemble(("Quality review", "bold"),
                                          f"  all {summary.sampled} sampled tasks done"))
            text = Text("\n".join(summary.lines()) + "\n\nTo go on, draw another sample of "
                        "tasks not reviewed yet: give its size and press enter.")
        else:
            progress.update(Text.assemble(("Quality review", "bold"), "  no sample yet"))
            text = Text(
                f"Rate a random sample of this run's {len(self.machine_tasks)} machine tasks, "
                "as the Self-Instruct paper did (§4.2): for one random instance of each, is the "
                "instruction a valid task, is the input appropriate, is the output a correct and "
                "acceptable response? The sample is drawn once (seeded) and kept with every "
                "answer, so the review can continue later.\n\nGive the sample size and press "
                "enter.")
        body.update(text)
        self.query_one("#review-size", Input).focus()

    # -- keys -------------------------------------------------------------------------------------
    def _sent(self, command: Command) -> bool:
        """Send a command; False (and the reason on the screen) when it could not be written,
        so that an answer the store never got is not shown as given."""
        errors = self.query_one("#review-errors", Static)
        try:
            self.send(command)
        except Exception as exc:  # a full disk, a locked or unreadable database
            errors.update(f"not saved: {exc}")
            errors.add_class("visible")
            return False
        errors.remove_class("visible")
        return True

    def action_answer(self, yes: bool) -> None:
        current = self.current
        if current is None or current.next_question is None:
            return
        question = current.next_question
        if not self._sent(ReviewAnswer(current.task_id, question, yes)):
            return
        answers = list(current.answers)
        answers[REVIEW_QUESTIONS.index(question)] = yes
        self.records[current.task_id] = replace(
            current, answers=(answers[0], answers[1], answers[2]))
        self._show()

    def action_skip(self) -> None:
        current = self.current
        if current is None:
            return
        if not self._sent(ReviewSkip(current.task_id)):
            return
        self.records[current.task_id] = replace(current, skipped=True)
        self._show()

    def action_leave(self) -> None:
        self.dismiss(None)

    # -- drawing a sample -------------------------------------------------------------------------
    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._draw()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "review-draw":
            self._draw()

    def _draw(self) -> None:
        errors = self.query_one("#review-errors", Static)
        raw = self.query_one("#review-size", Input).value.strip()
        try:
            size = int(raw)
            if size < 1:
                raise ValueError
        except ValueError:
            errors.update(f"sample size: {raw!r} is not a whole number of at least 1")
            errors.add_class("visible")
            return
        sample = max((r.sample for r in self.records.values()), default=0) + 1
        items = draw_sample(self.machine_tasks, size, self.seed, sample, exclude=self.records)
        if not items:
            errors.update("every machine task of the run is in the review already"
                          if self.records else "the run has no machine tasks to review yet")
            errors.add_class("visible")
            return
        if not self._sent(SetReviewSample(tuple(t for t, _ in items),
                                          tuple(i for _, i in items))):
            return
        if len(items) < size:
            self.notify(f"The sample is {len(items)} tasks, not {size}: that is every machine "
                        "task not reviewed yet.", severity="warning", timeout=10)
        position = max((r.position for r in self.records.values()), default=0)
        for n, (task_id, index) in enumerate(items, start=1):
            self.records[task_id] = ReviewRecord(task_id, sample, position + n, index)
        self.set_focus(None)
        self._show()
