"""Every key of the app is also a command in the palette (ctrl+p)."""

from __future__ import annotations

from functools import partial

from textual.command import Hit, Hits, Provider

COMMANDS = [
    ("Pause / resume the run", "toggle_pause", "p"),
    ("Edit seeds", "edit_seeds", "e"),
    ("Stop the run (finish in-flight work)", "stop", "s"),
    ("Export tasks", "export", "x"),
    ("Change theme", "change_theme", "t"),
    ("Filter tasks by text", "filter", "/"),
    ("Maximize / restore the focused pane", "toggle_maximize", "m"),
    ("Show keys", "help", "?"),
    ("Detach: move the run to a background process", "detach", "d"),
    ("Quit", "quit_app", "q"),
]


class RunCommands(Provider):
    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, action, key in COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title),
                          partial(self.app.run_action, action), help=f"key: {key}")

    async def discover(self) -> Hits:
        for title, action, key in COMMANDS:
            yield Hit(1.0, title, partial(self.app.run_action, action), help=f"key: {key}")
