"""The pool's unit: a task (seed or machine-generated) with its provenance."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from selfinstruct_tui.engine.seeds import Instance, SeedTask, pool_instance


class Origin(str, enum.Enum):
    """Where a task came from: a seed file (or the seed editor), or the model."""

    SEED = "seed"
    MACHINE = "machine"


class TaskStatus(str, enum.Enum):
    ACTIVE = "active"
    DROPPED = "dropped"  # by the user, in the inspector
    REMOVED = "removed"  # a seed replaced by an edit of the seed set
    PROMOTED = "promoted"  # a machine task that became a seed (its seed row has source_task)


@dataclass(frozen=True)
class SimilarTask:
    id: int
    instruction: str
    score: float


@dataclass
class Task:
    id: int
    origin: str  # an Origin value
    instruction: str
    is_classification: bool
    instances: list[Instance]
    round: int = 0
    prompt_id: int | None = None
    max_score: float = 0.0
    most_similar: list[SimilarTask] = field(default_factory=list)
    status: str = "active"  # a TaskStatus value
    seed_id: str | None = None
    name: str | None = None
    created: float = 0.0
    seed_origin: str | None = None  # seeds: a SEED_ORIGINS value (None: a run made before it)
    source_task: int | None = None  # promoted seeds: the machine task id

    @property
    def is_seed(self) -> bool:
        return self.origin == "seed"

    def instances_json(self) -> str:
        # Plain dicts, not dataclasses.asdict: asdict deep-copies every field, and these run
        # once per accepted task on the engine's thread.
        return json.dumps([{"input": i.input, "output": i.output} for i in self.instances],
                          ensure_ascii=False)

    def most_similar_json(self) -> str:
        return json.dumps([{"id": s.id, "instruction": s.instruction, "score": s.score}
                           for s in self.most_similar], ensure_ascii=False)

    def apply_edit(self, instruction: str, instances: list[Instance],
                   is_classification: bool) -> None:
        """Take a user's edit (the task editor, in the engine or offline), trimmed as every
        path into the pool is (`seeds.pool_instance`)."""
        self.instruction = instruction.strip()
        self.instances = [pool_instance(i.input, i.output) for i in instances]
        self.is_classification = is_classification

    def to_seed(self) -> SeedTask:
        sid = self.seed_id or f"task_{self.id}"
        return SeedTask(sid, self.name or sid, self.instruction, list(self.instances),
                        self.is_classification, self.seed_origin or "file", self.source_task)


def instances_from_json(text: str) -> list[Instance]:
    return [Instance(d.get("input", ""), d.get("output", "")) for d in json.loads(text or "[]")]


def similar_from_json(text: str | None) -> list[SimilarTask]:
    return [SimilarTask(int(d["id"]), d["instruction"], float(d["score"]))
            for d in json.loads(text or "[]")]
