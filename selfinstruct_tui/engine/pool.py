"""The task pool: tasks, their texts, seed and machine ids by round, and the similarity index.

These change together, only through the methods here, so the index always holds exactly the
pool's instructions plus the candidates reserved and not yet settled.

Seed tasks are held whole; a machine task only as what the loop reads of it (id, instruction,
round, classification flag): its instances and most-similar list are in the store. A whole task
with three instances and ten similar tasks cost the pool 3,474 bytes and 16 objects for the
garbage collector to walk (the index's Python side included; measured with 20,000 such tasks),
so a pool of 1M tasks held ~3.5 GB and made every full collection walk ~16M objects; now 851
bytes and none. A resumed run reads the store's tasks one row at a time into it.

Reservations: a candidate that passes the filters is `reserve`d (in the index from then on, so the
rest of its round is compared with it). It then either joins the pool (`commit`) or fails
(`release`); a failed reservation stays in the index until `evict` reaches its round, so when it
leaves does not depend on when its request happened to fail (see engine.py on reproducibility).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable

from selfinstruct_tui.engine.similarity import SimilarityIndex, SimilarityResult
from selfinstruct_tui.engine.task import Origin, Task


class Pool:
    """Seed and machine tasks of one run, with the similarity index over their instructions."""

    def __init__(self, index: SimilarityIndex) -> None:
        self.index = index
        self._seeds: dict[int, Task] = {}
        self._machine: dict[int, tuple[int, bool]] = {}  # id -> (round, is_classification)
        self._texts: dict[int, str] = {}  # pool tasks and open reservations
        self._seed_ids: list[int] = []  # in id order
        self._machine_ids: list[int] = []  # in commit order: rounds never decrease
        self._machine_rounds: list[int] = []
        self._reserved: dict[int, int] = {}  # task id -> round
        self._failed: list[tuple[int, int]] = []  # (round, task id) waiting for `evict`

    # -- reading ----------------------------------------------------------------------------------
    def __contains__(self, task_id: object) -> bool:
        return task_id in self._machine or task_id in self._seeds

    def get(self, task_id: int) -> Task | None:
        """A seed task whole; a machine task as the pool holds it (`_light`); None if absent."""
        if task_id in self._machine:
            return self._light(task_id)
        return self._seeds.get(task_id)

    def _light(self, task_id: int) -> Task:
        """A machine task with what the pool keeps of it: id, instruction, round and whether
        it is a classification task (no instances, no most-similar list)."""
        round_number, is_classification = self._machine[task_id]
        return Task(task_id, Origin.MACHINE, self._texts[task_id], is_classification, [],
                    round=round_number)

    def text(self, task_id: int) -> str | None:
        """The instruction of a pool task or an open reservation."""
        return self._texts.get(task_id)

    @property
    def machine_count(self) -> int:
        return len(self._machine_ids)

    @property
    def seed_count(self) -> int:
        return len(self._seed_ids)

    def seeds(self) -> list[Task]:
        return [self._seeds[i] for i in self._seed_ids]

    def query(self, text: str) -> SimilarityResult:
        """ROUGE-L of `text` against the pool and the open reservations."""
        return self.index.query(text)

    def sample_examples(self, rng: random.Random, *, total: int, machine: int,
                        up_to_round: int) -> list[Task]:
        """The in-context examples of a generation prompt (Self-Instruct: 8 = 6 seed + 2 machine):
        up to `machine` machine tasks from rounds <= `up_to_round`, seeds for the rest, shuffled.
        Draws from `rng` in a fixed order, so a round's examples depend only on its seed. Machine
        tasks come as the pool holds them (id, instruction, round)."""
        eligible = bisect.bisect_right(self._machine_rounds, up_to_round)
        machine_ids = self._machine_ids[:eligible]
        k_machine = min(machine, len(machine_ids))
        picked = [self._light(i) for i in rng.sample(machine_ids, k_machine)]
        seeds = self.seeds()
        picked += rng.sample(seeds, min(total - k_machine, len(seeds)))
        rng.shuffle(picked)
        return picked

    # -- changing ---------------------------------------------------------------------------------
    def load(self, tasks: Iterable[Task]) -> None:
        """Add active tasks read from the store (in id order)."""
        for task in tasks:
            self._add(task)

    def _add(self, task: Task) -> None:
        self._texts[task.id] = task.instruction
        if task.id not in self.index:
            self.index.add(task.id, task.instruction)
        if task.origin == Origin.MACHINE:
            self._machine[task.id] = (task.round, task.is_classification)
            self._machine_ids.append(task.id)
            self._machine_rounds.append(task.round)
        else:
            self._seeds[task.id] = task
            self._seed_ids.append(task.id)

    def reserve(self, task_id: int, instruction: str, round_number: int) -> None:
        """A candidate passed the filters: later candidates are compared with it."""
        self.index.add(task_id, instruction)
        self._texts[task_id] = instruction
        self._reserved[task_id] = round_number

    def commit(self, task: Task) -> None:
        """A reserved candidate joins the pool as this machine task."""
        self._reserved.pop(task.id, None)
        self._add(task)

    def release(self, task_id: int) -> None:
        """A reserved candidate failed; it leaves the index when `evict` reaches its round."""
        round_number = self._reserved.pop(task_id, None)
        if round_number is not None:
            self._failed.append((round_number, task_id))

    def forget_reservation(self, task_id: int) -> None:
        """A failed reservation's candidate is taken up again (its request got no answer): its
        entry leaves the index now, so the candidate is not compared with itself."""
        self._reserved.pop(task_id, None)
        self._failed = [(n, t) for n, t in self._failed if t != task_id]
        self._unindex_reservation(task_id)

    def evict(self, up_to_round: int) -> None:
        """Remove failed reservations of rounds <= `up_to_round` from the index."""
        keep = []
        for number, tid in self._failed:
            if number <= up_to_round:
                self._unindex_reservation(tid)
            else:
                keep.append((number, tid))
        self._failed = keep

    def _unindex_reservation(self, task_id: int) -> None:
        """A reservation's entry leaves the index (never a task's: it may have joined since)."""
        if task_id in self.index and task_id not in self:
            self.index.remove(task_id)
            self._texts.pop(task_id, None)

    def drop(self, task_id: int) -> Task | None:
        """Take a task out of the pool (the user dropped it, or it became a seed); returns it
        (a machine task as `get` gives it), or None."""
        task = self.get(task_id)
        if task is None:
            return None
        if task_id in self.index:
            self.index.remove(task_id)
        self._texts.pop(task_id, None)
        if task.origin == Origin.MACHINE:
            del self._machine[task_id]
            i = self._machine_ids.index(task_id)
            del self._machine_ids[i]
            del self._machine_rounds[i]
        else:
            del self._seeds[task_id]
            self._seed_ids.remove(task_id)
        task.status = "dropped"
        return task

    def edit(self, task: Task) -> bool:
        """`task` (an edited copy of a pool task, whole) replaces what the pool holds of it: the
        index follows its instruction; False if no such task is in the pool."""
        if task.id not in self:
            return False
        if task.id in self._machine:
            self._machine[task.id] = (self._machine[task.id][0], task.is_classification)
        else:
            self._seeds[task.id] = task
        if task.id in self.index:
            self.index.remove(task.id)
        self.index.add(task.id, task.instruction)
        self._texts[task.id] = task.instruction
        return True

    def restore(self, task: Task) -> bool:
        """A machine task comes back (demoted from the seeds), in round order among the machine
        tasks so that `sample_examples` stays reproducible; False if it is already in the pool."""
        if task.id in self or task.origin != Origin.MACHINE:
            return False
        self._machine[task.id] = (task.round, task.is_classification)
        self._texts[task.id] = task.instruction
        if task.id not in self.index:
            self.index.add(task.id, task.instruction)
        at = bisect.bisect_right(self._machine_rounds, task.round)
        self._machine_ids.insert(at, task.id)
        self._machine_rounds.insert(at, task.round)
        return True

    def replace_seeds(self, new: list[Task]) -> None:
        """The seed set becomes `new` (tasks with fresh ids); machine tasks stay."""
        for tid in self._seed_ids:
            del self._seeds[tid]
            self._texts.pop(tid, None)
            if tid in self.index:
                self.index.remove(tid)
        self._seed_ids = []
        for task in new:
            self._add(task)
