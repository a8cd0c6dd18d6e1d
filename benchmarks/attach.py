"""An attached UI on a run of 100,000 tasks.

Measures (1) the time for `attach` to show the full history, (2) the delay from a commit by the
engine to its row on the attached screen (goal: under the refresh interval + 100 ms), and (3) the
bytes per second a busy attached screen writes to its terminal at the default refresh, recorded
through `script` while a detached engine works against the fake server.

    python benchmarks/attach.py [--tasks 100000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import tui as tui_bench  # noqa: E402

from selfinstruct_tui.engine.seeds import Instance  # noqa: E402
from selfinstruct_tui.engine.store import RunStore  # noqa: E402
from selfinstruct_tui.engine.task import Task  # noqa: E402


async def history_and_delay(run_dir: Path, refresh: float) -> tuple[float, list[float]]:
    from selfinstruct_tui.tui.app import create_app
    from selfinstruct_tui.tui.widgets.task_table import TaskTable

    writer = RunStore(run_dir)
    writer.set_meta("state", {"state": "running", "pid": os.getpid(), "ts": time.time()})
    t0 = time.perf_counter()
    app = create_app(run_dir, attach=True, refresh=refresh)
    delays = []
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        first = time.perf_counter() - t0
        table = app.query_one(TaskTable)
        next_id = writer.max_task_id() + 1
        for i in range(10):
            await pilot.pause(0.13 * (i % 4))  # commits land at different phases of the timer
            committed = time.perf_counter()
            writer.insert_task(Task(id=next_id + i, origin="machine", round=10_000,
                                    instruction=f"A freshly committed task number {i}.",
                                    is_classification=False, instances=[Instance("", "x")]))
            while next_id + i not in table.rows:
                await asyncio.sleep(0.005)
            delays.append(time.perf_counter() - committed)
    writer.close()
    return first, delays


def terminal_bytes(seconds: float) -> tuple[float, str]:
    if not shutil.which("script"):
        return 0.0, "`script` is not installed (util-linux)"
    from fake_openai import FakeOpenAI

    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(latency=0.05) as server:
        run_dir = Path(tmp) / "run"
        env = {**os.environ, "SELFINSTRUCT_CONFIG": str(Path(tmp) / "none.toml")}
        Path(env["SELFINSTRUCT_CONFIG"]).write_text("")  # no user settings
        subprocess.run([sys.executable, "-m", "selfinstruct_tui", "run", "--detach",
                        "--base-url", server.base_url, "--model", "m", "--run-dir",
                        str(run_dir), "--target", "100000", "--concurrency", "8"],
                       env=env, check=True, capture_output=True)
        engine_pid = int((run_dir / "engine.pid").read_text())
        typescript = Path(tmp) / "typescript"
        cmd = (f"stty cols 120 rows 40; TERM=xterm-256color {sys.executable} -m selfinstruct_tui "
               f"attach {run_dir}")
        viewer = subprocess.Popen(["script", "-q", "-f", "-c", cmd, str(typescript)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            time.sleep(5)  # start-up and the first full frame are not steady state
            start_bytes = typescript.stat().st_size
            time.sleep(seconds)
            rate = (typescript.stat().st_size - start_bytes) / seconds
        finally:
            os.killpg(viewer.pid, signal.SIGTERM)
            viewer.wait(timeout=10)
            os.kill(engine_pid, signal.SIGTERM)
        return rate, ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--refresh", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        tui_bench.build_run(run_dir, args.tasks)
        first, delays = asyncio.run(history_and_delay(run_dir, args.refresh))
    delays.sort()
    print(f"attach with {args.tasks:,} tasks -> full history on screen: {first * 1000:.0f} ms")
    print(f"commit -> row on the attached screen (refresh {args.refresh}s): median "
          f"{delays[len(delays) // 2] * 1000:.0f} ms, worst {delays[-1] * 1000:.0f} ms "
          f"(goal < {(args.refresh + 0.1) * 1000:.0f} ms)")
    rate, why = terminal_bytes(args.seconds)
    if why:
        print(f"terminal bytes/s: not measured: {why}")
    else:
        print(f"busy attached screen at refresh {args.refresh}s writes {rate / 1024:.1f} KB/s "
              "to its terminal (120x40)")


if __name__ == "__main__":
    main()
