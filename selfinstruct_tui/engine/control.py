"""Driving and watching a run that another process runs, through its SQLite store.

`RemoteControl` has the engine's command methods and writes them to the store's commands table,
which the engine polls; it survives the UI going away and serves several UIs at once.
`StoreFollower` turns rows committed by the engine into the engine's own event types, so an attached
UI is fed exactly like an in-process one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from selfinstruct_tui.engine import events as ev
from selfinstruct_tui.engine.errors import UserError
from selfinstruct_tui.engine.seeds import Instance, SeedTask
from selfinstruct_tui.engine.store import RunStore, db_path, is_run_dir

LIVE_STATES = ("starting", "running", "paused", "stopping")
DETACH_EXIT = 75  # the TUI's return value when the user hands the run to a background process


def check_owner(run_dir: str | Path) -> None:
    """Only the run's owner may attach or send commands."""
    path = Path(run_dir)
    if not is_run_dir(path):
        raise UserError(f"{path}: not a run directory (no run.sqlite in it)")
    try:
        owner = path.stat().st_uid
        readable = os.access(db_path(path), os.R_OK | os.W_OK)
    except PermissionError:
        raise UserError(f"{path}: permission denied: only the run's owner can attach") from None
    if owner != os.getuid() or not readable:
        raise UserError(f"{path}: belongs to another user (uid {owner}); only the run's owner "
                        "can attach or send commands")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def run_status(store: RunStore) -> tuple[str, int | None]:
    """(state, pid): running/paused/stopping with a live pid, finished, stopped, or crashed."""
    meta = store.get_meta("state") or {}
    state, pid = meta.get("state", "new"), meta.get("pid")
    if state in LIVE_STATES and not pid_alive(pid):
        return "crashed", pid
    return state, pid


class RemoteControl:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def _send(self, command: str, args: dict | None = None) -> None:
        store = RunStore(self.run_dir)
        try:
            store.add_command(command, args)
        finally:
            store.close()

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def stop(self) -> None:
        self._send("stop")

    def replace_seeds(self, seeds: list[SeedTask]) -> None:
        self._send("replace_seeds", {"seeds": [s.to_json() for s in seeds]})

    def drop_task(self, task_id: int) -> None:
        self._send("drop_task", {"task_id": task_id})

    def edit_task(self, task_id: int, instruction: str, instances: list[Instance],
                  is_classification: bool) -> None:
        self._send("edit_task", {"task_id": task_id, "instruction": instruction,
                                 "instances": [asdict(i) for i in instances],
                                 "is_classification": is_classification})


class StoreFollower:
    """Polls the store for rows committed since the last look and emits them as events."""

    def __init__(self, run_dir: str | Path, emit: Callable[[ev.Event], None],
                 interval: float = 0.05) -> None:
        self.run_dir = Path(run_dir)
        self.emit = emit
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        store = RunStore(self.run_dir, readonly=True)
        try:
            self.last_task = store.max_task_id()
            self.last_rejection = store.db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM rejections").fetchone()[0]
            self.last_prompt = store.db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM prompts WHERE response IS NOT NULL"
            ).fetchone()[0]
            try:
                self.last_retry = store.db.execute(
                    "SELECT COALESCE(MAX(id), 0) FROM retries").fetchone()[0]
            except sqlite3.OperationalError:  # a run made before retries were recorded
                self.last_retry = None
            self.finished_rounds = {r.round for r in store.rounds() if r.status != "running"}
            self.last_round_seen = max(self.finished_rounds, default=0) - 2
            self.accepted: int | None = None
            self.seen_changes: set[tuple] = set()
            self.state = store.get_meta("state") or {}
            self.last_update = time.time()
            cfg = store.config()
            self.target = cfg.target if cfg else 0
        finally:
            store.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="store-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        store = RunStore(self.run_dir, readonly=True)
        try:
            while not self._stop.is_set():
                try:
                    self.poll(store)
                except Exception:  # a locked or busy database: try again next time
                    pass
                self._stop.wait(self.interval)
        finally:
            store.close()

    def poll(self, store: RunStore) -> None:
        db = store.db
        new_tasks = store.tasks(status="active", after_id=self.last_task)
        changed = db.execute("SELECT id, status, updated FROM tasks WHERE updated >= ? AND "
                             "origin = 'machine'", (self.last_update - 1,)).fetchall()
        # Counting is the one query that grows with the pool: only when something changed.
        if new_tasks or changed or self.accepted is None:
            self.accepted = store.count_tasks("machine")
        accepted = self.accepted
        seeds_changed = False
        for task in new_tasks:
            self.last_task = max(self.last_task, task.id)
            if task.origin == "machine":
                self.emit(ev.TaskAccepted(task, accepted, self.target))
            else:
                seeds_changed = True
        if seeds_changed:
            self.emit(ev.SeedsReplaced(store.count_tasks("seed")))
        now = time.time()
        for row in changed:
            if tuple(row) in self.seen_changes:
                continue
            self.seen_changes.add(tuple(row))
            if row[1] == "dropped":
                self.emit(ev.TaskDropped(row[0], accepted))
            elif row[1] == "active":
                task = store.task(row[0])
                if task is not None:
                    self.emit(ev.TaskEdited(task))
        self.last_update = now
        for r in store.rejections(after_id=self.last_rejection):
            self.last_rejection = r["id"]
            level = r["level"] if "level" in r.keys() else "candidate"
            self.emit(ev.CandidateRejected(r["id"], r["round"], r["candidate"], r["reason"],
                                           r["detail"], r["similar_id"], r["similar_text"],
                                           r["score"], level=level, task_id=r["task_id"]))
        if self.last_retry is not None:
            for r in db.execute("SELECT * FROM retries WHERE id > ? ORDER BY id",
                                (self.last_retry,)):
                self.last_retry = r["id"]
                self.emit(ev.RequestRetried(r["round"], r["prompt_id"], r["cause"], r["attempt"],
                                            r["delay"], r["message"]))
        for p in db.execute("SELECT * FROM prompts WHERE id > ? AND response IS NOT NULL "
                            "AND kind = 'generate' ORDER BY id", (self.last_prompt,)):
            self.last_prompt = max(self.last_prompt, p["id"])
            examples = tuple((e["id"], e["origin"], e["instruction"])
                             for e in json.loads(p["examples"] or "[]"))
            self.emit(ev.PromptSent(p["id"], p["round"], "generate", p["prompt"], examples))
            self.emit(ev.ResponseReceived(p["id"], p["round"], "generate", p["response"],
                                          p["finish_reason"], p["latency"] or 0.0,
                                          p["prompt_tokens"], p["completion_tokens"]))
        for r in store.rounds(since=self.last_round_seen):
            self.last_round_seen = max(self.last_round_seen, r.round - 2)
            if r.status != "running" and r.round not in self.finished_rounds:
                self.finished_rounds.add(r.round)
                self.emit(ev.RoundFinished(r, accepted, self.target))
        state = store.get_meta("state") or {}
        old, new = self.state.get("state"), state.get("state")
        if new != old:
            if new == "paused":
                self.emit(ev.Paused(state.get("reason") or "", bool(state.get("by_errors"))))
            elif new == "running" and old == "paused":
                self.emit(ev.Resumed())
            elif new == "running":
                self.emit(ev.RunStarted(str(self.run_dir), "", "", "", self.target, accepted, 0,
                                        True))
            elif new == "stopping":
                self.emit(ev.Stopping())
            elif new in ("finished", "stopped", "error", "failed"):
                reason = state.get("finish_reason") or {"finished": "target",
                                                        "error": "error"}.get(new, "stopped")
                self.emit(ev.Finished(ev.FinishReason(reason), accepted, self.target,
                                      str(state.get("message") or "")))
        self.state = state
