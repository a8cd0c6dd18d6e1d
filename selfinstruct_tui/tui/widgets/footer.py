"""The footer: Textual's, but a footer too narrow for its keys leaves out the least important
whole (`keys.footer_rank`), where Textual's cut the row at its end: at 60 columns that was Quit,
after the task pool's keys and half of Stop."""

from __future__ import annotations

from collections.abc import Iterable

from rich.cells import cell_len
from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

from selfinstruct_tui.tui.keys import KEYS, footer_rank


def key_width(key: FooterKey) -> int:
    """The columns `key` takes, as Textual's footer CSS draws it (not compact): " k desc " for
    a key, and "▏k desc " for the command palette's, docked right with a border left of it."""
    text = cell_len(key.key_display) + (cell_len(key.description) + 1 if key.description else 0)
    return text + 2


def fit_keys(keys: Iterable[FooterKey], width: int) -> None:
    """Show the keys that fit in `width` columns: by `footer_rank`, until the next would not
    fit (the first, quit, is always shown); hide the others."""
    room, fits = width, True
    for n, key in enumerate(sorted(keys, key=lambda k: footer_rank(k.action))):
        room -= key_width(key)
        fits = fits and (room >= 0 or n == 0)
        key.display = fits


class RunFooter(Footer):
    """The app's footer. Its keys stay in the order of the bindings, but when they do not all
    fit, the least important are hidden (`fit_keys`): each key shown is shown whole. They are
    fitted again when the footer's width changes."""

    def compose(self) -> ComposeResult:
        widgets = list(super().compose())
        if self._plain_keys(w for w in widgets if isinstance(w, FooterKey)):
            # in the bindings' order, as if the plain key had been listed first (the keys'
            # places among the footer's widgets: a key group's label, the palette stay)
            order = {key: n for n, key in enumerate(self.screen.active_bindings)}
            slots = [n for n, w in enumerate(widgets) if isinstance(w, FooterKey)
                     and not w.has_class("-command-palette")]
            keys = sorted((w for n in slots if isinstance(w := widgets[n], FooterKey)),
                          key=lambda w: order.get(w.key, 0))
            for n, key in zip(slots, keys, strict=True):
                widgets[n] = key
        if self.size.width:  # (0: not laid out yet; its first size fits them)
            fit_keys((w for w in widgets if isinstance(w, FooterKey)), self.size.width)
        yield from widgets

    def _plain_keys(self, keys: Iterable[FooterKey]) -> bool:
        """An action with a second key (quit: q and ctrl+q) is shown by its first key when that
        one acts here, and by the second while the focused widget takes the first (a text box
        types q): Textual's footer shows whichever its bindings list first. Returns whether a
        key was changed."""
        active, changed = self.screen.active_bindings, False
        for key in keys:
            for k in KEYS:
                plain = active.get(k.key)
                if k.also == key.key and k.action == key.action and plain is not None and \
                        plain.binding.action == k.action:
                    key.key, key.key_display = k.key, self.app.get_key_display(plain.binding)
                    changed = True
        return changed

    def on_resize(self, event: events.Resize) -> None:
        fit_keys(self.query_children(FooterKey), event.size.width)
