"""Crash-safe file writing: every file we produce is written to a temp file and renamed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[IO[str]]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`.

    On any error the temp file is removed and `path` is left as it was. A symlink at `path` is
    written through: the file it points to is replaced and the link kept (renaming over the
    link itself replaced a dotfile manager's link to config.toml with a copy, and an export to
    /dev/stdout replaced /dev/stdout). `mode` None: the replaced file's permissions (a 0600
    file stays private), or for a new file what the umask leaves of 0666, as for any file a
    program creates; the rename makes a new file, so hard links to the old one keep the old
    contents.
    """
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
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
