"""Several fake OpenAI server processes on one port, so the benchmark's endpoint is not its own
ceiling: each process binds with SO_REUSEPORT and the kernel spreads connections over them.

    python benchmarks/fake_fleet.py --processes 2 --latency 0.2   # prints the base URL

Used by engine_throughput.py; stop it with SIGTERM (the processes exit with it).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve(port: int, latency: float, jitter: float = 0.0) -> None:
    """One server process on `port` (shared), answering like tests/fake_openai.py; each
    request's latency is drawn from uniform [latency(1-jitter), latency(1+jitter)] seconds."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_openai import FakeOpenAI, _QuietServer

    class SharedPort(_QuietServer):
        allow_reuse_port = True

    server = FakeOpenAI(latency=latency, latency_jitter=jitter)
    server.httpd.server_close()
    server.httpd = SharedPort(("127.0.0.1", port), server._handler())
    server.thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    server.start()
    print("ready", flush=True)
    server.thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """`with Fleet(processes, latency) as base_url:` N server processes sharing one port."""

    def __init__(self, processes: int, latency: float, cpus: set[int] | None = None,
                 jitter: float = 0.0) -> None:
        """`cpus`: the CPUs the server processes may run on (all when None); `jitter`: see
        `serve`."""
        self.processes, self.latency, self.cpus, self.jitter = processes, latency, cpus, jitter
        self.children: list[subprocess.Popen[str]] = []

    def __enter__(self) -> str:
        port = free_port()
        for _ in range(self.processes):
            child = subprocess.Popen(
                [sys.executable, __file__, "--serve", str(port), "--latency", str(self.latency),
                 "--jitter", str(self.jitter)],
                stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a fake server process did not start")
            if self.cpus:
                os.sched_setaffinity(child.pid, self.cpus)
            self.children.append(child)
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            child.terminate()
        for child in self.children:
            child.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="each request's latency uniform in [L(1-j), L(1+j)]")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.latency, args.jitter)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    with Fleet(args.processes, args.latency, jitter=args.jitter) as base_url:
        print(base_url, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    main()
