"""The one key table: it feeds the app's bindings, the footer, the help panel and the command
palette, so a key is listed once. A key is offered in the app's modes it makes sense in
(`Key.modes`): the app runs the engine itself (LOCAL), or it is attached to a run another
process drives (ATTACHED); the app's `check_action` hides the others from all four. A key that
commands the engine (`Key.engine`: pause, stop, detach) is offered only while one drives the
run: shown disabled while the run stops, hidden once it has ended (`check_action` again).
A footer too narrow for its keys keeps them by `footer_rank`: quit always."""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import partial

from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider
from textual.keys import _character_to_key, key_to_character

LOCAL = "local"  # the app runs the engine (selfinstruct run)
ATTACHED = "attached"  # the app follows a run another process drives (selfinstruct attach)
BOTH = frozenset({LOCAL, ATTACHED})


@dataclass(frozen=True)
class Key:
    key: str  # Textual's key name
    shown: str  # how the key is written for people
    action: str
    footer: str  # the footer's short label
    title: str  # the command palette's and the help's description
    in_footer: bool = True
    # Another key for the action, bound with priority (it works while a text box has the
    # focus) and never in the footer: ctrl+q, which Textual binds to quit at once otherwise
    also: str = ""
    modes: frozenset[str] = BOTH  # where the key is offered (bound, in the footer, help, palette)
    engine: bool = False  # it commands the engine: it can act only while one drives the run


KEYS = (  # in the footer's order: what a run needs most first (a narrow footer cuts the end)
    # One key, two actions: the app's `check_action` offers the one that applies (a footer
    # that read "Pause/Resume" did not say which a press would do)
    Key("p", "p", "pause", "Pause", "Pause the run: nothing new is sent", engine=True),
    Key("p", "p", "resume", "Resume", "Resume the paused run", engine=True),
    Key("s", "s", "stop", "Stop", "Stop the run (in-flight work gets a bounded grace)",
        engine=True),
    Key("q", "q / ctrl+q", "quit", "Quit", "Quit: stops the run (asks first while it is going)",
        also="ctrl+q", modes=frozenset({LOCAL})),
    Key("q", "q / ctrl+q", "leave", "Leave", "Leave: close this UI; the run goes on in the "
        "background", also="ctrl+q", modes=frozenset({ATTACHED})),
    Key("question_mark", "?", "help", "Help", "Show keys"),
    Key("e", "e", "edit_seeds", "Edit seeds", "Seed manager: add, edit, duplicate, delete seeds"),
    Key("x", "x", "export", "Export", "Export tasks"),
    Key("d", "d", "detach", "Detach", "Detach: move the run to a background process",
        modes=frozenset({LOCAL}), engine=True),
    Key("r", "r", "review", "Review", "Quality review: rate a random sample of machine tasks"),
    Key("slash", "/", "filter", "Filter", "Filter tasks by text"),
    Key("m", "m", "toggle_maximize", "Maximize", "Maximize / restore the focused pane"),
    Key("t", "t", "change_theme", "Theme", "Change theme"),
    Key("g", "g", "next_chart", "Chart", "Next chart in the round statistics", in_footer=False),
)


# The footer's keys that stay longest when it cannot show them all, the first longest: quit
# always; then help and the command palette, which list every key; pause (or resume) and stop.
FOOTER_KEEP = ("quit", "leave", "help", "command_palette", "pause", "resume", "stop")


def offered(action: str, mode: str) -> bool:
    """Whether `action` is offered in `mode` (an action the table does not hold always is)."""
    modes = [k.modes for k in KEYS if k.action == action]
    return not modes or any(mode in m for m in modes)


def commands_engine(action: str) -> bool:
    """Whether `action` commands the engine (pause, stop, detach): it can act only while an
    engine drives the run."""
    return any(k.engine for k in KEYS if k.action == action)


def footer_rank(action: str) -> tuple[int, int]:
    """Where a footer key stands when the footer is too narrow for all: the lower, the longer
    it stays. `action`: its binding's action ("app." prefix or not). FOOTER_KEEP first, then
    the focused widget's own keys (equal: they keep the footer's order; the task pool names
    them in its info line too), then the table's other keys in its order."""
    action = action.removeprefix("app.")
    if action in FOOTER_KEEP:
        return 0, FOOTER_KEEP.index(action)
    actions = [k.action for k in KEYS]
    return (2, actions.index(action)) if action in actions else (1, 0)


# The characters of the keys Textual names by a word its key_to_character does not read back
# ("slash" for "/", "minus" for "-"): the key names of key events, as Textual makes them
_TYPED = {_character_to_key(c): c for c in string.printable if c.isprintable()}


def typed_character(key: str) -> str | None:
    """The character pressing `key` (a Textual key name: "q", "slash", "ctrl+q") types in a
    text box, or None (a key with a modifier, a function key)."""
    return key_to_character(key) or _TYPED.get(key)


def bindings() -> list[BindingType]:
    table: list[BindingType] = []
    for k in KEYS:
        table.append(Binding(k.key, k.action, k.footer, show=k.in_footer, tooltip=k.title))
        if k.also:
            # The same action (the help lists both keys on one line; the footer shows an
            # action's first key that is active: q, or ctrl+q while a text box takes q)
            table.append(Binding(k.also, k.action, k.footer, show=k.in_footer,
                                 tooltip=k.title, priority=True))
    return [*table, Binding("escape", "close_filter", show=False)]


class RunCommands(Provider):
    """Every key of the app is also a command in the palette (ctrl+p)."""

    def _keys(self) -> list[Key]:
        """The keys that can act now (the app's `check_action`: not the hidden, nor the ones
        shown disabled)."""
        return [k for k in KEYS if self.app.check_action(k.action, ())]

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for key in self._keys():
            score = matcher.match(key.title)
            if score > 0:
                yield Hit(score, matcher.highlight(key.title),
                          partial(self.app.run_action, key.action), help=f"key: {key.shown}")

    async def discover(self) -> Hits:
        for key in self._keys():
            yield Hit(1.0, key.title, partial(self.app.run_action, key.action),
                      help=f"key: {key.shown}")
