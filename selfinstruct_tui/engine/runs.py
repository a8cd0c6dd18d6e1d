"""Run directories: the registry that `runs` and `attach` read, what each run's state is, and
detached runs (a background process of its own session that outlives the terminal)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfinstruct_tui.engine.config import runs_root
from selfinstruct_tui.engine.control import RunState, run_status
from selfinstruct_tui.engine.errors import UserError
from selfinstruct_tui.engine.fsutil import atomic_write_text
from selfinstruct_tui.engine.invocation import (
    PROGRAM_ENV,
    command_line,
    export_command,
    program,
)
from selfinstruct_tui.engine.store import RunStore, is_run_dir

DETACHED_ENV = "SELFINSTRUCT_DETACHED"
LOCK_FILE = "engine.lock"
RUN_LOG = "run.log"
PID_FILE = "engine.pid"
DETACH_START_TIMEOUT = 600.0  # seconds; the embedded model's own start is bounded below this


class RunBusy(UserError):
    """Another process drives this run."""


class RunLock:
    """The exclusive right to drive a run: `flock` on RUN_DIR/engine.lock, holding the pid.

    The operating system drops the lock when the process dies, so a crash never leaves a run
    locked. Two engines on one run would spend twice and corrupt its accounting.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; RunBusy (exit 2) naming the holder's pid when another process has it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise busy(self.path.parent, lock_holder(self.path.parent)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process that drives the run, or None when nobody does."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy(run_dir: Path, pid: int | None) -> RunBusy:
    who = f"process {pid}" if pid and pid > 0 else "another process"
    return RunBusy(f"{run_dir} is being run by {who}: watch it with "
                   f"`{command_line('attach', str(run_dir))}`, or stop it first (key s in its TUI, "
                   f"or kill -TERM {pid})")


def registry_path() -> Path:
    """Beside the runs folder (so SELFINSTRUCT_RUNS_DIR moves it too): runs.txt by default."""
    root = runs_root()
    return root.parent / f"{root.name}.txt"


def remember_run(run_dir: Path) -> None:
    """Runs outside the default folder are listed by `selfinstruct runs` too."""
    path = registry_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known = set(path.read_text().splitlines()) if path.exists() else set()
        entry = str(run_dir.resolve())
        if entry not in known:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(entry + "\n")
    except OSError:
        pass


def unfit_for_a_new_run(run_dir: Path) -> str | None:
    """Why `--run-dir` (no run in it: no run.sqlite) cannot hold a new run, or None when it can
    (it does not exist, is empty, or holds only a run's own files that a failed start left).
    A file is no folder; a folder with other things in it is the user's (a project, or the
    folder that holds the runs: a resume given the parent of the run's folder), and a new run
    there would mix its files into it and start afresh, paid, instead of resuming."""
    from selfinstruct_tui.engine.exports import RUN_FILES

    if run_dir.exists() and run_dir.resolve() == runs_root().resolve():
        return (f"--run-dir {run_dir}: is the folder that holds the runs (a new run gets a "
                "folder of its own in it); leave out --run-dir for a new run, or give a run's "
                f"own folder to resume it (`{command_line('runs')}` lists them)")
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        return (f"--run-dir {run_dir}: is a file, not a run directory; give a run's folder to "
                "resume it, or a new folder (or leave out --run-dir) for a new run")
    try:
        others = sorted(e.name for e in run_dir.iterdir()
                        if e.name not in RUN_FILES and e.name != "batches")
    except OSError as exc:
        return f"--run-dir {run_dir}: cannot be read ({exc.strerror})"
    if not others:
        return None
    def some(names: list[str]) -> str:  # the first three, and how many more
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    runs = [str(run_dir / name) for name in others if is_run_dir(run_dir / name)]
    held = f"; the runs in it: {some(runs)}" if runs else ""
    return (f"--run-dir {run_dir}: holds no run (no run.sqlite) but other things "
            f"({some(others)}), "
            f"and a new run would put its files among them{held}. To resume a run, give its "
            f"own folder (`{command_line('runs')}` lists them); for a new run, give a new or "
            "empty folder, or leave out --run-dir")


def known_runs() -> list[Path]:
    """Run directories under the runs folder and in the registry, in path order
    (`runs_by_activity` orders them for people)."""
    found: dict[str, Path] = {}
    root = runs_root()
    if root.is_dir():
        for child in root.iterdir():
            if is_run_dir(child):
                found[str(child.resolve())] = child
    try:
        for line in registry_path().read_text().splitlines():
            if line and is_run_dir(line):
                found.setdefault(str(Path(line).resolve()), Path(line))
    except OSError:
        pass
    return sorted(found.values(), key=str)


@dataclass(frozen=True)
class RunInfo:
    """One line of `runs`: state (with pid while live), pool, target, last activity (epoch)."""

    run_dir: Path
    state: str
    pid: int | None
    pool: int
    target: int | None
    last_activity: float | None
    detail: str

    @property
    def shown_state(self) -> str:
        if self.state in (RunState.RUNNING, RunState.PAUSED, RunState.STOPPING):
            return f"{self.state} (pid {self.pid})"
        if self.detail:
            return f"{self.state}: {self.detail}"
        return self.state


def run_info(run_dir: Path) -> RunInfo:
    store = RunStore(run_dir, readonly=True)
    try:
        state, pid = run_status(store)
        cfg = store.config()
        meta = store.get_meta("state") or {}
        detail = ""
        if state == RunState.FAILED and meta.get("reason"):
            detail = str(meta["reason"])[:160]
        elif state == RunState.STOPPED and meta.get("finish_reason") == "failing":
            detail = "endpoint failing or paused by a spend guard"
        elif state == RunState.STOPPED and meta.get("finish_reason") == "limit":
            detail = "spend limit"
        return RunInfo(run_dir, state, pid, store.count_tasks("machine"),
                       cfg.target if cfg else None, meta.get("ts"), detail)
    finally:
        store.close()


def runs_by_activity() -> list[tuple[Path, RunInfo | None]]:
    """Every known run with its `run_info` (None: not a readable run database), most recent
    activity first: the engine's last state or heartbeat, else the database file's last change.
    Runs with the same time are in path order, so the list is the same from one call to the
    next. The order of `runs` and of `attach`'s list."""
    listed: list[tuple[float, str, Path, RunInfo | None]] = []
    for run_dir in known_runs():
        info: RunInfo | None
        try:
            info = run_info(run_dir)
        except UserError:
            info = None
        when = info.last_activity if info is not None else None
        if when is None:
            try:
                when = (run_dir / "run.sqlite").stat().st_mtime
            except OSError:
                when = 0.0
        listed.append((-when, str(run_dir), run_dir, info))
    return [(run_dir, info) for _, _, run_dir, info in sorted(listed, key=lambda r: r[:2])]


def spawn_detached(run_dir: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    """`selfinstruct ARGV` in its own session, SIGHUP ignored, output to the run's log."""
    log_path = run_dir / RUN_LOG
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "selfinstruct_tui", *argv], stdin=subprocess.DEVNULL,
            stdout=fd, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, DETACHED_ENV: "1", "NO_COLOR": "1",
                 PROGRAM_ENV: shlex.join(program())},  # its messages: the user's program
            close_fds=True)
    finally:
        os.close(fd)
    atomic_write_text(run_dir / PID_FILE, f"{proc.pid}\n", mode=0o600)  # as the run's files
    return proc


def wait_for_start(run_dir: Path, proc: subprocess.Popen[bytes],
                   waiting: Callable[[], None] = lambda: None,
                   timeout: float = DETACH_START_TIMEOUT) -> str:
    """"running" once the engine wrote its running state (store and heartbeat exist),
    "exited" if the process ended first, "starting" at the timeout (seconds). `waiting` is
    called once if the start takes more than 2 s."""
    started = time.monotonic()
    told = False
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            return "exited"
        if is_run_dir(run_dir):
            try:
                store = RunStore(run_dir, readonly=True)
                try:
                    state = store.get_meta("state") or {}
                finally:
                    store.close()
            except Exception:  # being created right now: look again
                state = {}
            if state.get("pid") == proc.pid and state.get("state") not in (
                    None, RunState.STARTING):
                return "running"
        if not told and time.monotonic() - started > 2:
            told = True
            waiting()
        time.sleep(0.1)
    return "starting"


def log_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ["(no log)"]
    return [line for line in text.splitlines() if line.strip()][-lines:] or ["(empty log)"]


def record_failed_start(run_dir: Path, pid: int, code: int | None, tail: list[str]) -> None:
    """Mark the run `failed` so that `runs` lists it (a store is made if none exists)."""
    try:
        store = RunStore(run_dir)
        try:
            store.set_meta("state", {"state": RunState.FAILED, "pid": pid, "ts": time.time(),
                                     "reason": tail[-1] if tail else f"exit {code}",
                                     "by_errors": True, "exit_code": code})
        finally:
            store.close()
    except UserError:
        pass


def left_attached_lines(run_dir: Path) -> list[str]:
    """What `selfinstruct attach` prints once its UI is closed: what the run does now (closing
    an attached UI never stops it) and the commands to watch, stop or resume it. One line each;
    reads the run's state from its store (UserError: not a readable run)."""
    store = RunStore(run_dir, readonly=True)
    try:
        state, pid = run_status(store)
    finally:
        store.close()
    resume = ("resume it in the background: "
              + command_line("run", "--detach", "--run-dir", str(run_dir)))
    if state in (RunState.RUNNING, RunState.STARTING, RunState.PAUSED, RunState.STOPPING):
        doing = f"the run goes on in the background (pid {pid})"
        if state == RunState.PAUSED:
            doing = (f"the run stays paused in the background (pid {pid}): attach and press p "
                     "to resume it")
        elif state == RunState.STOPPING:
            doing = f"the run is stopping in the background (pid {pid})"
        return [doing, f"log: {run_dir / RUN_LOG}",
                f"attach again: {command_line('attach', str(run_dir))}",
                f"stop it: attach and press s, or kill {pid} (a clean stop), then resume it "
                "with: " + command_line("run", "--run-dir", str(run_dir))]
    if state == RunState.CRASHED:
        return [f"the run's engine process (pid {pid}) is gone (killed or crashed): nothing "
                "runs the run", resume]
    if state == RunState.FINISHED:
        return ["the run is finished (target reached); export it: "
                + export_command(str(run_dir))]
    return [f"the run is {state}: nothing runs it", resume]
