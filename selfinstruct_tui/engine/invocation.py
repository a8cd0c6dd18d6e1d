"""The program as the user started it, for the commands we print (resume, attach, export, ...):
a printed command must work when pasted into the same shell.

* `selfinstruct` when that name on PATH is this very script;
* else the script's absolute path: `.venv/bin/selfinstruct`, as the README's install runs it,
  is not on PATH until the venv is activated, and `selfinstruct ...` then said "command not
  found";
* `python -m selfinstruct_tui`: this interpreter (absolute) and `-m selfinstruct_tui`;
* a detached engine prints its starter's program (PROGRAM_ENV), not the `-m` form it is
  spawned with;
* imported by another program (the tests call `main()`): `selfinstruct`, the documented name.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

SCRIPT = "selfinstruct"  # [project.scripts] in pyproject.toml
MODULE = "selfinstruct_tui"
PROGRAM_ENV = "SELFINSTRUCT_PROGRAM"  # shell words: the program a detached process prints


def program() -> list[str]:
    """The words that start this program again from the user's shell (see the module)."""
    given = os.environ.get(PROGRAM_ENV, "").strip()
    if given:
        return shlex.split(given)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == f"{MODULE}.__main__":
        return [sys.executable, "-m", MODULE]
    started = sys.argv[0] if sys.argv else ""
    if Path(started).name != SCRIPT:
        return [SCRIPT]
    on_path = shutil.which(SCRIPT)
    try:
        if on_path and os.path.samefile(on_path, started):
            return [SCRIPT]
    except OSError:  # the script was removed since (a reinstall): its path is still the best
        pass
    return [os.path.abspath(started)]


def command_line(*args: str) -> str:
    """`program()` and `args` as one shell-quoted line, e.g. command_line("attach", "/runs/my run")
    -> "selfinstruct attach '/runs/my run'"."""
    return shlex.join([*program(), *args])


def export_command(run_dir: str) -> str:
    """The command suggested for exporting a run: Alpaca rows to tasks.json."""
    return command_line("export", str(run_dir), "--format", "alpaca", "-o", "tasks.json")


def with_command(text: str, command: str, after: str = "") -> str:
    """`text`, then `command` on a line of its own, then `after` (if any) on the next line:
    no sentence's colon, full stop or quote touches the command, so that a copied line runs
    as it is. with_command("Resume it with:", "selfinstruct run --run-dir r") ->
    "Resume it with:\\nselfinstruct run --run-dir r"."""
    return "\n".join(part for part in (text, command, after) if part)
