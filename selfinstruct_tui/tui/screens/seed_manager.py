"""The seed manager (key e): the run's seed set as a table, filtered by text, with a form to add,
edit and duplicate a seed, delete with a confirmation, and the raw JSONL editor for bulk edits.

The manager never writes the store: every finished change hands the whole new seed set to
`on_change` (the app sends it as one `ReplaceSeeds`; it applies at the next round). The manager
keeps its own copy of the set, so several changes in a row build on each other even before the
engine has recorded them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Static, TextArea

from selfinstruct_tui.engine.fsutil import atomic_write_text
from selfinstruct_tui.engine.records import escape_line_separators
from selfinstruct_tui.engine.seeds import (
    Instance,
    SeedTask,
    SimilarSeed,
    carry_origins,
    instruction_key,
    near_duplicate_seeds,
    pool_instance,
    seed_to_record,
    seeds_to_jsonl,
    short_text,
    similar_seed,
    with_seed,
)
from selfinstruct_tui.tui.screens.dialogs import ConfirmScreen, Dialog
from selfinstruct_tui.tui.screens.seed_editor import SeedEdit, SeedEditorScreen
from selfinstruct_tui.tui.widgets.panes import MarkedCheckbox

# a delete that would leave the run without seeds (the manager's, the inspector's)
LAST_SEED_KEPT = "A run needs at least one seed: add another before deleting this one."
INSTRUCTION_CELL = 64  # at most this many characters of the instruction in the table
COLUMNS = (("id", 12), ("cls", 3), ("inst", 4), ("input", 5), ("origin", 14))  # besides it
MANAGER_KEYS = ("a add · e/enter edit · c duplicate · d delete · r raw JSONL ($EDITOR: ctrl+o "
                "there) · / filter · esc close")
FORM_KEYS = ("ctrl+s save · ctrl+n add instance · ctrl+r remove the focused instance · "
             "ctrl+t classification · tab next field · esc cancel")


def seed_matches(seed: SeedTask, needle: str) -> bool:
    """Whether the lower-case `needle` occurs in the seed's id, name, instruction or instances."""
    if not needle:
        return True
    hay = [seed.id, seed.name, seed.instruction]
    hay += [part for inst in seed.instances for part in (inst.input, inst.output)]
    return any(needle in text.lower() for text in hay)


def origin_label(seed: SeedTask) -> str:
    """The origin column: "file", "added", or "promoted #ID" (the machine task it came from)."""
    if seed.origin == "promoted" and seed.source_task is not None:
        return f"promoted #{seed.source_task}"
    return seed.origin


def new_seed_id(seeds: list[SeedTask], prefix: str = "added") -> str:
    """An id no seed of `seeds` has: PREFIX_N with the smallest free N from 1."""
    taken = {s.id for s in seeds}
    n = 1
    while f"{prefix}_{n}" in taken:
        n += 1
    return f"{prefix}_{n}"


class SeedManagerScreen(Dialog[None]):
    """The run's seeds. `on_change(seeds, write_back)` receives the whole new set after each
    change (`write_back`: the raw editor's "also write back to the seed file" box).
    `similarity`: (threshold, tokenizer) of the run's filter, by which the form calls a seed a
    near duplicate of another."""

    BINDINGS = [
        Binding("a", "add", "Add"),
        Binding("e", "edit", "Edit"),
        Binding("c", "duplicate", "Duplicate"),
        Binding("d", "delete", "Delete"),
        Binding("r", "raw", "Raw JSONL"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, seeds: list[SeedTask], pending: bool,
                 on_change: Callable[[list[SeedTask], bool], None],
                 seeds_file: str | None = None,
                 fetch: Callable[[], list[SeedTask]] | None = None,
                 similarity: tuple[float, str] = (0.7, "rouge")) -> None:
        super().__init__()
        self.seeds = list(seeds)
        self.similarity = similarity
        # `fetch` reads the run's current set at save time: another UI (or the inspector's
        # promote) may have changed it since this screen loaded; each change is applied to the
        # current set, not to this screen's copy, so nobody's edit is overwritten.
        self.fetch = fetch or (lambda: list(self.seeds))
        self.pending = pending
        self.on_change = on_change
        self.seeds_file = seeds_file
        self.needle = ""
        self.shown: list[int] = []  # indexes into self.seeds, in table order

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="seed-manager"):
            yield Label("", id="seeds-title", classes="question")
            yield Input(placeholder="filter seeds by text (enter: back to the table)",
                        id="seed-filter")
            table: DataTable = DataTable(id="seed-table", cursor_type="row", zebra_stripes=True)
            yield table
            yield Static(MANAGER_KEYS, id="seed-keys")

    def on_mount(self) -> None:
        self.refresh_table()
        self.query_one("#seed-table", DataTable).focus()

    def on_resize(self) -> None:
        # after the screen's own handler has set the size's breakpoint classes (app.tcss sizes
        # the dialog by them) and the styles follow them
        self.call_after_refresh(lambda: self.refresh_table(self.current))

    def instruction_width(self) -> int:
        """Characters of the instruction column: what the dialog leaves after the other columns
        (the dialog's width and its border and padding as app.tcss sets them for the terminal's
        size: 110 columns or 95% of the terminal, all of a small one)."""
        styles = self.query_one("#seed-manager").styles
        screen = self.app.size
        dialog = int(styles.width.resolve(screen, screen)) if styles.width else screen.width
        if styles.max_width is not None:
            dialog = min(dialog, int(styles.max_width.resolve(screen, screen)))
        dialog -= styles.gutter.width
        others = (sum(w for _, w in COLUMNS[1:-1]) + self.id_width() + self.origin_width()
                  + 2 * (len(COLUMNS) + 1) + 2)
        return max(16, min(INSTRUCTION_CELL, dialog - others))

    def origin_width(self) -> int:
        """The origin column fits the longest label ("file", "added", "promoted #1234")."""
        return max(6, max((len(origin_label(seed)) for seed in self.seeds), default=0))

    def id_width(self) -> int:
        """The id column fits the longest id (seed_task_139 and promoted_1234 stay whole),
        within 10-24 characters."""
        longest = max((len(seed.id) for seed in self.seeds), default=0)
        return max(10, min(24, longest))

    # -- showing ------------------------------------------------------------------------------
    def refresh_table(self, keep: int | None = None) -> None:
        """Rebuild the rows from `self.seeds` and the filter; the cursor goes to seed index
        `keep` when it is shown."""
        table = self.query_one("#seed-table", DataTable)
        width = self.instruction_width()
        table.clear(columns=True)
        table.add_column("id", key="id", width=self.id_width())
        table.add_column("instruction", key="instruction", width=width)
        for label, w in COLUMNS[1:]:
            table.add_column(label, key=label,
                             width=self.origin_width() if label == "origin" else w)
        self.shown = [i for i, s in enumerate(self.seeds) if seed_matches(s, self.needle)]
        for i in self.shown:
            s = self.seeds[i]
            text = " ".join(s.instruction.split())
            if len(text) > width:
                text = text[: width - 1] + "…"
            with_input = any(inst.input.strip() for inst in s.instances)
            table.add_row(s.id, text, "yes" if s.is_classification else "no",
                          str(len(s.instances)), "yes" if with_input else "no", origin_label(s),
                          key=str(i))
        if keep is not None and keep in self.shown:
            table.move_cursor(row=self.shown.index(keep))
        state = ("pending: applies at the next round" if self.pending else
                 "the run's active seeds")
        shown = (f", {len(self.shown)} shown (filter {self.needle!r})" if self.needle else "")
        self.query_one("#seeds-title", Label).update(
            f"Seeds: {len(self.seeds)} ({state}){shown}")

    @property
    def current(self) -> int | None:
        """The index in `self.seeds` of the seed under the cursor, or None (empty table)."""
        table = self.query_one("#seed-table", DataTable)
        if not self.shown or table.cursor_row < 0 or table.cursor_row >= len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def _changed(self, seeds: list[SeedTask], keep: int | None, write_back: bool = False) -> None:
        self.seeds = seeds
        self.pending = True
        self.on_change(list(seeds), write_back)
        self.refresh_table(keep)

    def _apply(self, change: Callable[[list[SeedTask]], tuple[list[SeedTask], str | None] | None],
               write_back: bool = False) -> None:
        """Apply `change` to the run's current seed set (read once, now) and send the result.
        `change` gives (the new set, the id the cursor goes to), or None to change nothing. If
        the set changed elsewhere since this screen last loaded it, say so."""
        fresh = self.fetch()
        stale = _records(fresh) != _records(self.seeds)
        result = change(fresh)
        if result is None:
            return
        new, keep_id = result
        ids = [seed.id for seed in new]
        self._changed(new, ids.index(keep_id) if keep_id in ids else None, write_back)
        if stale:
            self.notify("The seed set had changed elsewhere (another UI, a promotion) since this "
                        "window loaded it: your change was applied to the current set, which "
                        "is shown now.", severity="warning", timeout=15)

    # -- keys -----------------------------------------------------------------------------------
    def action_filter(self) -> None:
        self.query_one("#seed-filter", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "seed-filter":
            self.needle = event.value.strip().lower()
            self.refresh_table()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "seed-filter":
            self.query_one("#seed-table", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    def action_add(self) -> None:
        def done(seed: SeedTask | None) -> None:
            if seed is not None:
                self._apply(lambda fresh: _added(fresh, len(fresh), _unique(seed, fresh)))

        self.app.push_screen(SeedFormScreen(None, new_seed_id(self.seeds),
                                            similar=self.similar_to), done)

    def action_edit(self) -> None:
        at = self.current
        if at is None:
            return

        loaded = self.seeds[at]

        def done(seed: SeedTask | None) -> None:
            if seed is None:
                return
            if seed_to_record(seed) == seed_to_record(loaded):
                # (sending the same set made it "pending" and said "saved" for nothing)
                self.notify(f"Seed {seed.id} is unchanged: nothing to save.")
                return

            # (deleted elsewhere meanwhile: the edit comes back)
            self._apply(lambda fresh: (with_seed(fresh, seed), seed.id))

        self.app.push_screen(SeedFormScreen(loaded, loaded.id, similar=self.similar_to), done)

    def action_duplicate(self) -> None:
        """The form opens on a copy (a new id, origin "added"); saving adds it after the
        original, cancelling adds nothing."""
        at = self.current
        if at is None:
            return
        original = self.seeds[at]
        copy = SeedTask(new_seed_id(self.seeds), "", original.instruction,
                        list(original.instances), original.is_classification, "added", None)

        def done(seed: SeedTask | None) -> None:
            if seed is None:
                return

            def change(fresh: list[SeedTask]) -> tuple[list[SeedTask], str]:
                ids = [s.id for s in fresh]
                i = ids.index(original.id) + 1 if original.id in ids else len(fresh)
                return _added(fresh, i, _unique(seed, fresh))

            self._apply(change)

        self.app.push_screen(SeedFormScreen(copy, copy.id, duplicate_of=original.id,
                                            similar=self.similar_to), done)

    def similar_to(self, seed: SeedTask) -> tuple[SeedTask, float] | None:
        """The seed of the run's current set that `seed` is a near duplicate of (the rule of
        `selfinstruct seeds check`, at the run's threshold and tokenizer) and its ROUGE-L."""
        fresh = self.fetch()
        threshold, tokenizer = self.similarity
        hit = similar_seed(seed, fresh, threshold, tokenizer)
        if hit is None:
            return None
        return next(s for s in fresh if s.id == hit.other), hit.score

    def action_delete(self) -> None:
        at = self.current
        if at is None:
            return
        seed = self.seeds[at]
        if len(self.seeds) == 1:
            self.notify(LAST_SEED_KEPT, severity="warning")
            return
        back = (f" It came from machine task #{seed.source_task}, which returns to the pool."
                if seed.origin == "promoted" else "")

        def change(fresh: list[SeedTask]) -> tuple[list[SeedTask], str | None] | None:
            ids = [s.id for s in fresh]
            if ids == [seed.id]:
                self.notify(LAST_SEED_KEPT, severity="warning")
                return None
            i = ids.index(seed.id) if seed.id in ids else at
            after = ids[i + 1] if i + 1 < len(ids) else (ids[i - 1] if i > 0 else None)
            return [s for s in fresh if s.id != seed.id], after

        def answer(yes: bool | None) -> None:
            if yes:
                self._apply(change)

        self.app.push_screen(ConfirmScreen(
            f"Delete seed {seed.id} ({short_text(seed.instruction)!r})? The change "
            f"applies at the next round.{back}", yes="Delete", no="Keep"), answer)

    def action_raw(self) -> None:
        """The raw JSONL editor over the same set, for bulk edits ($EDITOR with ctrl+o there);
        origins are kept for the ids that stay, new ids are "added"."""
        def done(result: SeedEdit | None) -> None:
            if result is None:
                return
            fresh = self.fetch()
            if _records(fresh) != _records(self.seeds):
                # A whole-set edit over a set that changed elsewhere would undo that change:
                # keep the user's text in a file, show the current set, apply nothing.
                saved = self.keep_conflict(result.text)
                self.seeds = fresh
                self.refresh_table()
                self.notify("The seed set changed elsewhere while you edited the JSONL, so "
                            f"your edit was not applied (it would undo that change). Your text "
                            f"is in {saved}; the current set is shown: edit it again.",
                            severity="error", timeout=30)
                return
            keep = self.current
            before = self.seeds
            self._changed(carry_origins(result.seeds, self.seeds),
                          keep if keep is not None and keep < len(result.seeds) else None,
                          write_back=result.write_back)
            said = self.duplicates_text(before, self.seeds)
            if said:  # (a bulk edit: said after saving, not asked before, as the form does)
                self.notify(said, title="Near-duplicate seeds", severity="warning", timeout=30)

        self.app.push_screen(SeedEditorScreen(escape_line_separators(seeds_to_jsonl(self.seeds)),
                                              self.seeds_file), done)

    def duplicates_text(self, before: list[SeedTask], after: list[SeedTask]) -> str:
        """The near or exact duplicate pairs of `after` that `before` did not have (the rule
        of `seeds check` and the form, at the run's threshold and tokenizer), each named with
        its score, and what to do; "" when there are none."""
        threshold, tokenizer = self.similarity

        def pairs(seeds: list[SeedTask]) -> list[SimilarSeed]:
            return near_duplicate_seeds(seeds, threshold, tokenizer)

        known = {frozenset((hit.seed, hit.other)) for hit in pairs(before)}
        new = [hit for hit in pairs(after) if frozenset((hit.seed, hit.other)) not in known]
        if not new:
            return ""
        texts = {s.id: s.instruction for s in after}
        shown = [f"{hit.seed} ~ {hit.other} (ROUGE-L {hit.score:.2f}"
                 + (", the same instruction" if instruction_key(texts[hit.seed])
                    == instruction_key(texts[hit.other]) else "") + ")" for hit in new[:5]]
        more = f"; and {len(new) - 5} more" if len(new) > 5 else ""
        return (f"Saved, with {len(new)} near-duplicate seed pair{'s' if len(new) > 1 else ''} "
                f"it did not have: {'; '.join(shown)}{more}. A near-duplicate seed shows the "
                "model the same example twice in a prompt: edit or delete one of each pair "
                "(`selfinstruct seeds check` lists them).")

    def keep_conflict(self, text: str) -> Path:
        """Write a raw edit that could not be applied next to the run (temp file + rename)."""
        run_dir = getattr(self.app, "run_dir", Path.cwd())
        path = Path(run_dir) / f"seeds-not-applied-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        atomic_write_text(path, text, mode=0o600)
        return path

    def action_close(self) -> None:
        self.dismiss(None)


def _records(seeds: list[SeedTask]) -> list[dict]:
    return [seed_to_record(s) for s in seeds]


def _added(seeds: list[SeedTask], at: int, seed: SeedTask) -> tuple[list[SeedTask], str]:
    """`seeds` with `seed` inserted at index `at`, and its id (where the cursor goes)."""
    return [*seeds[:at], seed, *seeds[at:]], seed.id


def _unique(seed: SeedTask, seeds: list[SeedTask]) -> SeedTask:
    """`seed`, renamed to a fresh id when `seeds` already has its id (added elsewhere)."""
    if all(s.id != seed.id for s in seeds):
        return seed
    sid = new_seed_id(seeds)
    return SeedTask(sid, sid, seed.instruction, list(seed.instances), seed.is_classification,
                    seed.origin, seed.source_task)


class SeedField(TextArea):
    """A seed field in the form: `value` is the text as loaded, exactly, while the area still
    shows what it showed then. TextArea splits lines at U+2028, U+0085, U+2029 and the other
    str.splitlines breaks (and at CR LF) and gives them back as "\n": saving a seed changed
    every such field, edited or not."""

    def __init__(self, loaded: str, *, id: str | None = None, classes: str = "") -> None:
        super().__init__(loaded, soft_wrap=True, id=id, classes=classes)
        self.loaded = loaded
        self.shown = self.text  # (as the area split it)

    @property
    def value(self) -> str:
        """The field's value: as loaded while untouched, else the text as edited."""
        return self.loaded if self.text == self.shown else self.text


class InstanceFields(Vertical):
    """One instance's input and output in the seed form."""

    def __init__(self, number: int, instance: Instance) -> None:
        super().__init__(classes="instance")
        self.number = number
        self.instance = instance

    def compose(self) -> ComposeResult:
        yield Label("", classes="instance-title")
        yield SeedField(self.instance.input, classes="field f-input")
        yield Label("output", classes="field-label")
        yield SeedField(self.instance.output, classes="field f-output")

    def on_mount(self) -> None:
        self.renumber(self.number)

    def renumber(self, number: int) -> None:
        self.number = number
        self.query_one(".instance-title", Label).update(
            f"Instance {number}: input (empty: the task takes no input)")

    @property
    def value(self) -> Instance:
        """The instance as the fields hold it: the loaded one itself while both are untouched."""
        inp, out = self.query_one(".f-input", SeedField), self.query_one(".f-output", SeedField)
        if inp.value == self.instance.input and out.value == self.instance.output:
            return self.instance
        return Instance(inp.value, out.value)


class SeedFormScreen(Dialog[SeedTask | None]):
    """Add or edit one seed: the instruction and each instance's input and output in wrapping
    text areas, a classification box. Saving validates and names each bad field ("instance 2:
    output is empty"); on an error the form stays open with everything typed. A seed that
    `similar` finds a near duplicate of another (that seed, its ROUGE-L) is saved only when the
    user confirms, the form naming the other seed and the score. Returns the seed (id
    `seed_id`; origin kept on an edit, "added" for a new one) or None."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+n", "add_instance", "Add instance"),
        Binding("ctrl+r", "remove_instance", "Remove instance"),
        Binding("ctrl+t", "toggle_classification", "Classification", show=False),
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    def __init__(self, seed: SeedTask | None, seed_id: str, duplicate_of: str | None = None,
                 similar: Callable[[SeedTask], tuple[SeedTask, float] | None] | None = None
                 ) -> None:
        super().__init__()
        self.seed = seed
        self.similar = similar
        self.seed_id = seed_id
        self.duplicate_of = duplicate_of
        self.adding = seed is None or duplicate_of is not None
        self._said_of: tuple | None = None  # `snapshot` when the errors line was last set

    def compose(self) -> ComposeResult:
        seed = self.seed
        if seed is None:
            title = f"Add a seed ({self.seed_id})"
        elif self.duplicate_of is not None:
            title = f"Duplicate of {self.duplicate_of}: a new seed ({self.seed_id})"
        else:
            title = f"Edit seed {seed.id} ({seed.origin})"
        instances = seed.instances if seed is not None else [Instance("", "")]
        with Vertical(classes="dialog wide", id="seed-form"):
            yield Label(title, classes="question")
            with VerticalScroll(id="form-body"):
                yield Label("Instruction", classes="field-label")
                yield SeedField(seed.instruction if seed else "", id="f-instruction",
                                classes="field")
                yield MarkedCheckbox("classification task (outputs are class labels)",
                               seed.is_classification if seed else False, id="f-cls")
                for n, inst in enumerate(instances, start=1):
                    yield InstanceFields(n, inst)
            yield Static("", id="form-errors", classes="errors")
            yield Static(FORM_KEYS, id="form-keys")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="form-save")
                yield Button("Cancel", id="form-cancel")

    def on_mount(self) -> None:
        self.query_one("#f-instruction", TextArea).focus()
        self._initial = self.snapshot()

    def snapshot(self) -> tuple:
        """Everything the form holds, to tell whether it was changed."""
        return (tuple(area.text for area in self.query(TextArea)),
                tuple(box.value for box in self.query(Checkbox)))

    @property
    def instance_fields(self) -> list[InstanceFields]:
        return list(self.query(InstanceFields))

    def action_add_instance(self) -> None:
        fields = InstanceFields(len(self.instance_fields) + 1, Instance("", ""))
        self.query_one("#form-body", VerticalScroll).mount(fields)

        def focus() -> None:
            fields.query_one(".f-input", TextArea).focus()
            fields.scroll_visible()
            self.recheck()  # (its empty output keeps the form from saving)

        self.call_after_refresh(focus)

    async def action_remove_instance(self) -> None:
        """Remove the instance holding the focus (or the last one); the others are renumbered."""
        fields = self.instance_fields
        if not fields:
            return
        focused = self.focused
        target = next((f for f in fields if focused is not None and f in focused.ancestors),
                      fields[-1])
        await target.remove()
        for n, f in enumerate((f for f in fields if f is not target), start=1):
            f.renumber(n)
        self.recheck()

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self.recheck()

    def recheck(self) -> None:
        """The line under the fields follows the edits: a save's "Not saved: ..." names what
        still keeps the form from saving and goes once nothing does (it stayed on screen
        after the fields were filled); a near-duplicate warning, about the text as it was,
        goes at the first edit."""
        errors = self.query_one("#form-errors", Static)
        if not errors.has_class("visible") or self.snapshot() == self._said_of:
            return  # (an edit's message can arrive after the save that followed it)
        found = [] if errors.has_class("warning") else self.problems()
        if found:
            errors.update("Not saved: " + "; ".join(found))
        else:
            errors.update("")
            errors.remove_class("visible", "warning")

    def action_toggle_classification(self) -> None:
        box = self.query_one("#f-cls", Checkbox)
        box.value = not box.value

    def problems(self) -> list[str]:
        """What keeps the form from saving, each naming its field; empty when it can save."""
        found = []
        if not self.query_one("#f-instruction", TextArea).text.strip():
            found.append("instruction is empty")
        fields = self.instance_fields
        if not fields:
            found.append("no instances: add one with ctrl+n (a seed needs at least one)")
        for f in fields:
            if not f.value.output.strip():
                found.append(f"instance {f.number}: output is empty")
        return found

    def action_save(self) -> None:
        errors = self.query_one("#form-errors", Static)
        found = self.problems()
        self._said_of = self.snapshot()  # what the line under the fields is about
        if found:
            errors.update("Not saved: " + "; ".join(found))
            errors.remove_class("warning")
            errors.add_class("visible")
            return
        errors.remove_class("visible")
        saved = self.value()
        close = self.similar(saved) if self.similar is not None else None
        if close is None:
            self.dismiss(saved)
            return
        other, score = close
        # A near-duplicate seed shows the model the same example twice in a prompt and weighs
        # its task double; the run's filter would reject it as a generated task.
        same = instruction_key(other.instruction) == instruction_key(saved.instruction)
        what = ("the same instruction as" if same else "a near duplicate of")
        errors.update(f"This instruction is {what} seed {other.id} (ROUGE-L {score:.2f}): "
                      f"{short_text(other.instruction)!r}. Change it, or save it anyway.")
        errors.add_class("visible")
        errors.add_class("warning")

        def answer(yes: bool | None) -> None:
            if yes:
                self.dismiss(saved)

        self.app.push_screen(ConfirmScreen(
            f"Seed {saved.id} is {what} seed {other.id} (ROUGE-L {score:.2f}): "
            f"{short_text(other.instruction)!r}. Save it anyway?", yes="Save anyway",
            no="Keep editing"), answer)

    def value(self) -> SeedTask:
        """The seed as the form holds it (id `seed_id`)."""
        seed = self.seed
        # (an untouched field keeps its value exactly: SeedField; a loaded seed's instances
        # were made by pool_instance, which gives them back unchanged)
        instances = [pool_instance(f.value.input, f.value.output) for f in self.instance_fields]
        field = self.query_one("#f-instruction", SeedField)
        instruction = field.value if field.value == field.loaded else field.value.strip()
        is_cls = self.query_one("#f-cls", Checkbox).value
        if seed is None or self.adding:
            return SeedTask(self.seed_id, self.seed_id, instruction, instances, is_cls,
                            "added", None)
        return SeedTask(seed.id, seed.name, instruction, instances, is_cls, seed.origin,
                        seed.source_task)

    def action_cancel(self) -> None:
        """Close without saving; with changes, only after asking."""
        if self.snapshot() == getattr(self, "_initial", None):
            self.dismiss(None)
            return

        def answer(discard: bool | None) -> None:
            if discard:
                self.dismiss(None)

        self.app.push_screen(ConfirmScreen("Discard your changes to this seed?",
                                           yes="Discard", no="Keep editing"), answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "form-save":
            self.action_save()
        elif event.button.id == "form-cancel":
            self.action_cancel()
