"""Shared fixtures: a real fake-OpenAI HTTP server on loopback and a CLI runner in a subprocess."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def fake_server():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No user config, no endpoint or key from the developer's shell, runs under tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "SELFINSTRUCT_"))}
    env["SELFINSTRUCT_CONFIG"] = str(tmp_path / "no-config.toml")
    Path(env["SELFINSTRUCT_CONFIG"]).write_text("")  # an empty config: a missing one is an error
    env["SELFINSTRUCT_RUNS_DIR"] = str(tmp_path / "runs")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "SELFINSTRUCT_")):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SELFINSTRUCT_CONFIG", env["SELFINSTRUCT_CONFIG"])
    monkeypatch.setenv("SELFINSTRUCT_RUNS_DIR", env["SELFINSTRUCT_RUNS_DIR"])
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "selfinstruct_tui", *args]


def shown(*args: str) -> str:
    """A command as the CLI started by `cli_command` prints it: its own program (this
    interpreter, -m selfinstruct_tui), shell-quoted, so that it runs when pasted."""
    return shlex.join(cli_command(*args))


@pytest.fixture
def run_cli(isolated_env, tmp_path):
    def run(*args: str, timeout: float = 240, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run(cli_command(*args), capture_output=True, text=True,
                              timeout=timeout, env={**isolated_env, **(env or {})}, cwd=tmp_path)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def on_a_terminal(env: dict, react, *args: str, timeout: float = 120, columns: int = 120,
                  stdin_tty: bool = True) -> tuple[int, str]:
    """`selfinstruct ARGS` on a pty (a terminal, `columns` x 40: the TUI runs; headless draws
    its bars). After each read, `react(seen, write)` may answer: `seen` is all the output so
    far (bytes), `write` sends keys. `stdin_tty` False: stdin is /dev/null, the output alone a
    terminal. Returns (exit code, the output without escape sequences)."""
    import pty
    import re
    import time

    primary, secondary = pty.openpty()
    proc = subprocess.Popen(cli_command(*args),
                            env={**env, "TERM": "xterm", "COLUMNS": str(columns), "LINES": "40"},
                            stdin=secondary if stdin_tty else subprocess.DEVNULL,
                            stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the child closed the pty
                break
            if not data:
                break
            chunks.append(data)
            react(b"".join(chunks), lambda keys: os.write(primary, keys))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    return proc.returncode, re.sub(r"\x1b[\[\]][0-9;?<>=]*[A-Za-z~]", "",
                                   b"".join(chunks).decode(errors="replace"))
