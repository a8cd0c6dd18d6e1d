"""The task pool: a Line-API ScrollView over an index of rows, flat at 100k tasks.

One widget renders only the visible lines; rows are small tuples kept in a dict, and the view is a
list of ids (filtered, sorted). Adding a row is a bisect insert, not a re-layout.

The cursor is a task, not a row position: when rows arrive, the sort changes or a filter narrows
the view, it stays on the task it was on (and that task stays on the same screen line when it can).
If a filter hides that task, the cursor moves to its nearest neighbour in the sort order. "Follow
newest" (`f`, like `tail -f`) keeps the cursor on the newest task instead; moving the cursor by hand
ends following.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable
from itertools import compress, repeat
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive, var
from textual.scroll_view import ScrollView
from textual.strip import Strip

from selfinstruct_tui.engine.task import Task
from selfinstruct_tui.tui.view import Row

ORIGINS = ("all", "seed", "machine")
SORT_COLUMNS = ("id", "round", "origin", "cls", "instances", "rouge", "instruction")


# (name, width, align) of the fixed columns; the instruction takes the rest of the line. One table
# feeds the header, the cells and their styles, so a column's style never splits its text.
COLUMNS = (("id", 7, ">"), ("round", 5, ">"), ("origin", 7, "<"), ("cls", 3, "<"),
           ("inst", 4, ">"), ("rouge", 5, ">"))
HEADER = " ".join(f"{name:{align}{width}}" for name, width, align in COLUMNS) + "  instruction"
SCORE = 5  # the index of the max ROUGE-L column
HIGH_SCORE = 0.6  # a max ROUGE-L above this is drawn highlighted (the filter rejects above 0.7)
_LOWERED = operator.attrgetter("lowered")
_ORIGIN = operator.attrgetter("origin")


class TaskTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES = {"task-table--cursor", "task-table--seed", "task-table--machine",
                         "task-table--high"}
    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "Top", show=False),
        Binding("end", "jump(-1)", "Bottom", show=False),
        Binding("enter", "inspect", "Inspect"),
        Binding("o", "cycle_origin", "Origin"),
        Binding("c", "cycle_sort", "Sort"),
        Binding("v", "reverse_sort", "Reverse", show=False),
        Binding("f", "toggle_follow", "Follow newest", show=False),
    ]

    cursor = reactive(0, always_update=True)
    # What the pool's info line says: (rows shown, rows in all, `describe()`). The app watches
    # it: a watcher runs as the view changes, so the info line is drawn in the same frame as
    # the rows. (A message reached the app after that frame, and the info line took a frame of
    # its own, 20-35 ms after the key.) Setting an unchanged value calls no watcher.
    summary: var[tuple[int, int, str]] = var((0, 0, ""))

    class Inspect(Message):
        def __init__(self, task_id: int) -> None:
            super().__init__()
            self.task_id = task_id

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: dict[int, Row] = {}
        # All ids in ascending sort order, with their sort keys (for bisect inserts). Descending
        # order is the same list displayed from the end: no second sort, no comparison wrapper.
        self.sorted_ids: list[int] = []
        self.sorted_keys: list = []
        # Parallel to sorted_ids, what a filter scans: lowered instructions and origins.
        self.sorted_text: list[str] = []
        self.sorted_origin: list[str] = []
        # The filtered subset of sorted_ids (ascending), or sorted_ids itself when no filter is
        # set. Only the ids: `_view_index` bisects it by row, a filter scans the sorted lists.
        self.view: list[int] = []
        self.text_filter = ""
        self.origin = "all"
        self.sort_column = "id"
        self.descending = True  # newest first
        self.cursor_id: int | None = None  # the task under the cursor
        self.follow = True  # keep the cursor on the newest task (until the user moves it)

    @property
    def filtering(self) -> bool:
        return bool(self.text_filter) or self.origin != "all"

    # -- data -------------------------------------------------------------------------------
    def _matches(self, row: Row) -> bool:
        if self.origin != "all" and row.origin != self.origin:
            return False
        return not self.text_filter or self.text_filter in row.lowered

    def load(self, rows: list[Row]) -> None:
        """Replace everything at once (history on start-up)."""
        self.rows = {r.id: r for r in rows}
        self.resort()

    def add_tasks(self, tasks: list[Task]) -> None:
        self.add_rows([Row.of(t) for t in tasks])

    def add_rows(self, rows: list[Row]) -> None:
        if len(rows) > 5_000:
            for row in rows:
                self.rows[row.id] = row
            self.resort()
            return
        for row in rows:
            old = self.rows.get(row.id)
            if old is not None:
                self._remove_row(old)
            self.rows[row.id] = row
            key = row.key(self.sort_column)
            i = bisect.bisect_left(self.sorted_keys, key)
            self.sorted_keys.insert(i, key)
            self.sorted_ids.insert(i, row.id)
            self.sorted_text.insert(i, row.lowered)
            self.sorted_origin.insert(i, row.origin)
            if self.filtering and self._matches(row):
                self.view.insert(self._view_index(key), row.id)
        self._refresh_view()

    def remove_task(self, task_id: int) -> None:
        if task_id == self.cursor_id and not self.follow:
            # The held task leaves (dropped, promoted): hold the next one in display order.
            index, shown = self._position(task_id)
            if shown and len(self.view) > 1:
                self.cursor_id = self.id_at(index + 1 if index + 1 < len(self.view)
                                            else index - 1)
        row = self.rows.get(task_id)
        if row is not None:
            self._remove_row(row)  # while the row is in `rows`: the view's bisect reads it
            del self.rows[task_id]
            self._refresh_view()

    def _remove_row(self, row: Row) -> None:
        key = row.key(self.sort_column)
        i = bisect.bisect_left(self.sorted_keys, key)
        if i < len(self.sorted_ids) and self.sorted_ids[i] == row.id:
            del self.sorted_ids[i]
            del self.sorted_keys[i]
            del self.sorted_text[i]
            del self.sorted_origin[i]
        if self.filtering:
            j = self._view_index(key)
            if j < len(self.view) and self.view[j] == row.id:
                del self.view[j]

    def _view_index(self, key: Any) -> int:
        """Where sort key `key` is (or goes) in the view. Sorted by id, the ids are the keys;
        else each probe reads its row's key (log2 n probes: 17 at 100k rows)."""
        if self.view is self.sorted_ids:
            return bisect.bisect_left(self.sorted_keys, key)
        column = self.sort_column
        if column == "id":
            return bisect.bisect_left(self.view, key)
        rows = self.rows
        return bisect.bisect_left(self.view, key, key=lambda i: rows[i].key(column))

    def resort(self) -> None:
        column = self.sort_column
        if column == "id":  # the key is the id itself: a plain integer sort (C speed)
            self.sorted_ids = sorted(self.rows)
            self.sorted_keys = list(self.sorted_ids)  # a separate list: both get inserts
        else:
            pairs = sorted((r.key(column), r.id) for r in self.rows.values())
            self.sorted_keys = [k for k, _ in pairs]
            self.sorted_ids = [i for _, i in pairs]
        ordered = list(map(self.rows.__getitem__, self.sorted_ids))
        self.sorted_text = list(map(_LOWERED, ordered))
        self.sorted_origin = list(map(_ORIGIN, ordered))
        self.refilter()

    def refilter(self) -> None:
        """Recompute the view: one pass over every task, in C (map over str.__contains__ and
        the origins feeding compress): 6-15 ms at 100k tasks. Nothing but the ids is gathered,
        so a key press builds one list and frees one. (Scanning only the current view when
        the user types more characters needs the view's texts gathered too: that gather,
        freeing the old one and the garbage collector walking the new one cost more than the
        scan saves while the view is large.)"""
        if self.filtering:
            ids, text, origin = self.sorted_ids, self.text_filter, self.origin
            hits: Iterable[object] | None = None
            if text:
                hits = map(operator.contains, self.sorted_text, repeat(text))
            if origin != "all":
                same = map(operator.eq, self.sorted_origin, repeat(origin))
                hits = same if hits is None else map(operator.and_, hits, same)
            self.view = list(ids) if hits is None else list(compress(ids, hits))
        else:
            self.view = self.sorted_ids
        self._refresh_view()

    def _refresh_view(self) -> None:
        if not self.filtering:
            self.view = self.sorted_ids
        screen_line = self.cursor - self.scroll_offset.y  # where the cursor's task is drawn
        self._set_rows(len(self.view))
        self._place_cursor(screen_line)
        self.refresh()
        self.summary = (len(self.view), len(self.rows), self.describe())

    def _set_rows(self, rows: int) -> None:
        """The scrollable height becomes `rows`. Setting `virtual_size` re-lays out the whole
        screen (it is a layout reactive): ~35 ms per filter key at 100k tasks. When the
        scrollbar stays as it is (shown before and after), only the scrollbar is updated."""
        new = Size(self.size.width, rows)
        old = self.virtual_size
        if new == old:
            return
        height = self.size.height
        if self.is_mounted and height and (old.height > height) == (rows > height) \
                and old.width == new.width:
            self.set_reactive(TaskTable.virtual_size, new)
            self._scroll_update(new)
        else:
            self.virtual_size = new

    def _position(self, task_id: int) -> tuple[int, bool]:
        """(index in the displayed order, whether `task_id` is shown). A task the view does not
        show gives the index of its nearest neighbour in the sort order."""
        row = self.rows.get(task_id)
        n = len(self.view)
        if row is None or n == 0:
            return 0, False
        pos = self._view_index(row.key(self.sort_column))
        shown = pos < n and self.view[pos] == task_id
        pos = min(pos, n - 1)
        return (n - 1 - pos if self.descending else pos), shown

    def newest_id(self) -> int | None:
        """The highest task id the view shows (O(1) when sorted by id, else one scan)."""
        if not self.view:
            return None
        if self.sort_column == "id":
            return self.view[-1]
        return max(self.view)

    def _place_cursor(self, screen_line: int) -> None:
        """Put the cursor back on its task (or the newest, when following) and scroll so that
        task stays on `screen_line` of the widget when it can."""
        if not self.view:
            self.cursor, self.cursor_id = 0, None
            return
        target = self.newest_id() if self.follow or self.cursor_id is None else self.cursor_id
        assert target is not None
        index, shown = self._position(target)
        self.cursor = index
        self.cursor_id = target if shown else self.id_at(index)
        height = max(1, self.size.height)
        if self.follow:
            top = index - (0 if self.descending else height - 1)
        else:
            top = index - max(0, min(height - 1, screen_line))
        self.scroll_to(y=max(0, top), animate=False, immediate=True)

    def displayed_ids(self) -> list[int]:
        return self.view[::-1] if self.descending else list(self.view)

    def id_at(self, index: int) -> int:
        return self.view[len(self.view) - 1 - index] if self.descending else self.view[index]

    def describe(self) -> str:
        parts = ["following newest" if self.follow else
                 f"holding #{self.cursor_id}" if self.cursor_id is not None else "holding",
                 f"by {self.sort_column} {'↓' if self.descending else '↑'}"]
        if self.origin != "all":
            parts.append(f"origin {self.origin}")
        if self.text_filter:
            parts.append(f"filter {self.text_filter!r}")
        return " · ".join(parts)

    def set_filter(self, text: str) -> None:
        """Show the tasks whose instruction contains `text` (case and surrounding spaces
        ignored); a text that filters the same as the current one changes nothing."""
        new = text.strip().lower()
        if new != self.text_filter:
            self.text_filter = new
            self.refilter()

    @property
    def current_id(self) -> int | None:
        return self.id_at(self.cursor) if 0 <= self.cursor < len(self.view) else None

    # -- actions ------------------------------------------------------------------------------
    def action_cursor(self, delta: int) -> None:
        self._move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move_to(self.cursor + direction * max(1, self.size.height - 1))

    def action_jump(self, where: int) -> None:
        self._move_to(0 if where == 0 else len(self.view) - 1)

    def _move_to(self, index: int) -> None:
        if not self.view:
            return
        self.cursor = max(0, min(len(self.view) - 1, index))
        self.cursor_id = self.id_at(self.cursor)
        if self.follow and self.cursor_id != self.newest_id():
            self.follow = False  # the user moved off the newest task: hold still from now on
        self.summary = (len(self.view), len(self.rows), self.describe())
        top = self.scroll_offset.y
        height = max(1, self.size.height)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)
        self.refresh()

    def action_inspect(self) -> None:
        if self.current_id is not None:
            self.post_message(self.Inspect(self.current_id))

    def action_cycle_origin(self) -> None:
        self.origin = ORIGINS[(ORIGINS.index(self.origin) + 1) % len(ORIGINS)]
        self.refilter()

    def action_cycle_sort(self) -> None:
        i = SORT_COLUMNS.index(self.sort_column)
        self.sort_column = SORT_COLUMNS[(i + 1) % len(SORT_COLUMNS)]
        self.resort()

    def action_reverse_sort(self) -> None:
        self.descending = not self.descending
        self._refresh_view()

    def action_toggle_follow(self) -> None:
        """Follow the newest task (like `tail -f`), or hold the cursor where it is."""
        self.follow = not self.follow
        self._refresh_view()

    def on_click(self, event) -> None:
        self._move_to(self.scroll_offset.y + event.y)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.view))

    # -- rendering ------------------------------------------------------------------------------
    _styles: dict[str, Style] | None = None

    def _line_styles(self) -> dict[str, Style]:
        """The row styles, computed once per style change (rich_style walks every ancestor: per
        line it cost ~0.4 ms)."""
        base = self.rich_style
        part = self.get_component_rich_style
        styles = {name: base + part(f"task-table--{name}")
                  for name in ("cursor", "seed", "machine")}
        high = part("task-table--high")
        styles["seed-high"] = styles["seed"] + high
        styles["machine-high"] = styles["machine"] + high
        return styles

    def notify_style_update(self) -> None:
        self._styles = None
        super().notify_style_update()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        index = self.scroll_offset.y + y
        if index >= len(self.view):
            return Strip.blank(width, self.rich_style)
        row = self.rows[self.id_at(index)]
        styles = self._styles
        if styles is None:
            styles = self._styles = self._line_styles()
        if index == self.cursor:
            style = styles["cursor"]
        elif row.origin == "seed":
            style = styles["seed"]
        else:
            style = styles["machine"]
        cells = row_cells(row)
        score_style = style
        if row.max_score > HIGH_SCORE and index != self.cursor:
            score_style = styles["seed-high" if row.origin == "seed" else "machine-high"]
        # The score's digits are their own segment: the highlight covers exactly the number.
        score = cells[SCORE].lstrip()
        pad = len(cells[SCORE]) - len(score)
        segments = [Segment(" ".join(cells[:SCORE]) + " " * (pad + 1), style),
                    Segment(score, score_style),
                    Segment("  " + cells[-1], style)]
        return Strip(segments).crop_extend(0, width, style)


def row_cells(row: Row) -> list[str]:
    """The texts of one row's cells, in COLUMNS order, then the instruction."""
    values = (row.id, row.round, row.origin, "yes" if row.is_classification else "",
              row.instances, "-" if row.origin == "seed" else f"{row.max_score:.2f}")
    return [f"{value:{align}{width}}" for value, (_, width, align) in zip(values, COLUMNS,
                                                                          strict=True)
            ] + [row.instruction]

