"""Crash-safe file writing: every file we produce is written to a temp file and renamed."""

from __future__ import annotations

import codecs
import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple, cast

from selfinstruct_tui.engine.errors import UserError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[IO[str]]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`.

    On any error the temp file is removed and `path` is left as it was. A symlink at `path` is
    written through: the file it points to is replaced and the link kept (renaming over the
    link itself replaced a dotfile manager's link to config.toml with a copy, and an export to
    /dev/stdout replaced /dev/stdout). `mode` None: the replaced file's permissions (a 0600
    file stays private), or for a new file what the umask leaves of 0666, as for any file a
    program creates; the rename makes a new file, so hard links to the old one keep the old
    contents. The folder must exist (FileNotFoundError otherwise): a typo in a user's path
    created folders where it pointed (/nonexistent at the file-system root); a caller that owns
    its folder (a run directory, the config folder) creates it, a user's path goes through
    `check_output_path` first.
    """
    target = Path(os.path.realpath(path))
    if mode is None:
        try:
            mode = os.stat(target).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def utf8_stdout(stream: IO[str] | None = None) -> Iterator[IO[str]]:
    """Where data for `-o -` goes: `stream` as it is when given (a caller's own text stream),
    else stdout written as a file is (UTF-8 bytes, LF line ends), whatever the locale's
    encoding. Through the text stdout, an export crashed half-way in a latin-1 or ASCII locale
    (or a Windows pipe, the ANSI code page) or, for text that encoding holds ("café"), came out
    in it: not the UTF-8 that fine-tuning tools read. Flushed on leaving; stdout stays open."""
    if stream is not None:
        yield stream
        return
    out = sys.stdout
    buffer = getattr(out, "buffer", None)
    if buffer is None:  # a stdout without bytes underneath (replaced by a harness): as it is
        yield out
        return
    out.flush()  # whatever was printed before comes first
    yield cast(IO[str], codecs.getwriter("utf-8")(buffer))
    buffer.flush()


class OutputField(NamedTuple):
    """Where a user named an output path, for the messages that say what to change: a
    command-line flag (`name` "-o": "choose another -o", "name a file with -o (or -o - for
    stdout)") or a dialog's field (`flag` False, `name` "path": "choose another path"; a
    dialog writes no standard output, so none is offered)."""

    name: str = "-o"
    flag: bool = True

    def another(self) -> str:
        return f"choose another {self.name}"

    def name_a_file(self, aside: str = "parenthesis") -> str:
        """What to give instead of a directory or a device: a file (or stdout, for a flag);
        `aside` "parenthesis" or "comma" (how the flag's stdout form is added)."""
        if not self.flag:
            return f"end the {self.name} with a file's name"
        if aside == "comma":
            return f"name a file with {self.name}, or {self.name} - for stdout"
        return f"name a file with {self.name} (or {self.name} - for stdout)"


def check_output_path(path: str | os.PathLike[str], flag: str | OutputField = "-o",
                      keep: dict[str, str | os.PathLike[str]] | None = None) -> None:
    """Refuse an output path that would destroy something or scatter folders (UserError naming
    `flag`, the option that gave it, or the dialog field: an `OutputField`): a file in `keep`
    (what it is -> its path: an input the command reads, another file it writes), a path whose
    folder does not exist (a typo is not a folder to create) or is not a folder, or an
    existing path that is not a regular file (a device, a directory, a pipe), through any
    symlinks (/dev/stdout is one, to a pipe or a terminal). Every path a user names for output
    comes through here."""
    field = flag if isinstance(flag, OutputField) else OutputField(flag)
    target = os.path.realpath(path)
    for what, other in (keep or {}).items():
        if target == os.path.realpath(other):
            raise UserError(f"{path}: is {what} ({other}), which writing it would destroy; "
                            f"{field.another()}")
    _check_folder(path, Path(target).parent, field)
    try:
        kind = os.stat(path).st_mode  # follows links, /proc/self/fd's to pipes included
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"{path}: cannot be written ({exc.strerror}); {field.another()}") \
            from None
    if stat.S_ISDIR(kind):
        raise UserError(f"{path}: is a directory; {field.name_a_file()}")
    if not stat.S_ISREG(kind):
        raise UserError(f"{path}: is not a regular file (a pipe, a terminal or a device); "
                        f"{field.name_a_file('comma') if field.flag else field.another()}")


def _check_folder(path: str | os.PathLike[str], folder: Path, field: OutputField) -> None:
    """UserError unless `folder` (where `path` lands, links followed) is an existing folder."""
    if folder.is_dir():
        return
    shown = Path(path).parent  # as the user wrote it, unless a link leads elsewhere
    if shown.is_dir():
        shown = folder
    if folder.exists() or any(p.exists() and not p.is_dir() for p in folder.parents):
        raise UserError(f"{path}: {shown} is not a folder (a file is in the way); "
                        f"{field.another()}")
    raise UserError(f"{path}: the folder {shown} does not exist, and a typo is not a folder to "
                    f"create; create it first (mkdir -p {shown}) or {field.another()}")


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing other threads):
    Linux's /proc/self/status, else the usual 022."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int | None = None) -> None:
    with atomic_writer(path, mode) as fh:
        fh.write(text)
