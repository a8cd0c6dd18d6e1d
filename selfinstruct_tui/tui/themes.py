"""Theme files: the bundled ones (themes/ in the wheel or the checkout) and the user's own.

A theme file is TOML with Textual's theme fields. Every colour is validated; a broken file is
skipped and reported (all problems in one notification), never a crash, unless it is the theme
asked for: `choose_theme` checks the asked-for theme before the app starts and refuses an
unknown name or a broken file with a ConfigError naming where it was asked for.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import BUILTIN_THEMES, Theme

from selfinstruct_tui.engine.config import user_config_dir, user_config_path
from selfinstruct_tui.engine.errors import ConfigError

DEFAULT_THEME = "ember"
COLOR_FIELDS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground",
                "background", "surface", "panel", "boost")


def bundled_themes_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_data" / "themes", here.parent / "themes"):
        if candidate.is_dir():
            return candidate
    return here.parent / "themes"


def user_themes_dir() -> Path:
    return user_config_dir() / "themes"


def load_theme_file(path: Path) -> Theme:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM: UTF-8 too
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    name = data.get("name") or path.stem
    if not isinstance(name, str):
        raise ValueError(f"{path}: 'name' must be a string")
    if "primary" not in data:
        raise ValueError(f"{path}: missing the required colour 'primary'")
    kwargs: dict = {}
    for key in COLOR_FIELDS:
        if key in data:
            try:
                Color.parse(str(data[key]))
            except ColorParseError:
                raise ValueError(f"{path}: {key} = {data[key]!r} is not a colour") from None
            kwargs[key] = str(data[key])
    unknown = set(data) - set(COLOR_FIELDS) - {"name", "dark", "variables"}
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    return Theme(name=name, dark=bool(data.get("dark", True)),
                 variables={str(k): str(v) for k, v in (data.get("variables") or {}).items()},
                 **kwargs)


def load_themes(dirs: list[Path] | None = None) -> tuple[list[Theme], list[str]]:
    """Themes from the bundled and user folders, and the problems found (one line each)."""
    themes, problems = [], []
    for folder in dirs if dirs is not None else [bundled_themes_dir(), user_themes_dir()]:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                themes.append(load_theme_file(path))
            except ValueError as exc:
                problems.append(str(exc))
    return themes, problems


def choose_theme(flag: str | None, settings: dict[str, Any],
                 dirs: list[Path] | None = None) -> str | None:
    """The theme asked for: `flag` (--theme), else the config file's `theme` (`settings`, a
    `FileSettings` whose origins name its line); None when neither names one (the default).
    Raises ConfigError, naming the flag or the file and line, when the name is none of the
    bundled, user (`dirs`: the folders load_themes reads) or Textual themes (listing those),
    or when it is a theme file that cannot be loaded (naming the file and what is wrong)."""
    if flag:
        name, where = flag, f"--theme {flag}"
    elif settings.get("theme"):
        name = str(settings["theme"])
        origins = getattr(settings, "origins", {})
        where = f"{origins.get('theme', user_config_path())}: theme = {name!r}"
    else:
        return None
    themes, problems = load_themes(dirs)
    names = {t.name for t in themes} | set(BUILTIN_THEMES)
    if name in names:
        return name
    for folder in dirs if dirs is not None else [bundled_themes_dir(), user_themes_dir()]:
        path = folder / f"{name}.toml"
        if path.is_file():
            try:
                load_theme_file(path)
            except ValueError as exc:
                raise ConfigError(f"{where}: the theme file is broken: {exc}. Fix it, or "
                                  "choose another theme") from None
    skipped = f" (skipped, broken: {'; '.join(problems)})" if problems else ""
    own = sorted({t.name for t in themes})
    raise ConfigError(f"{where}: no such theme. Available: {', '.join(own)}{skipped}; and "
                      f"Textual's: {', '.join(sorted(BUILTIN_THEMES))}. Your own theme files "
                      f"go in {user_themes_dir()}")
