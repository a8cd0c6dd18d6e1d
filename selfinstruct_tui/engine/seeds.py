"""Seed tasks: reading, validating, summarising and writing seed files.

Two formats are read, detected by content:
* self-instruct JSONL: one `{"id", "name", "instruction", "instances": [{"input", "output"}],
  "is_classification"}` per line;
* Alpaca: a JSON list of `{"instruction", "input", "output"}` (rows with the same instruction
  become one task with several instances; Alpaca rows carry no classification flag, so they are
  read as non-classification).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct_tui.engine.errors import InputFileError
from selfinstruct_tui.engine.fsutil import atomic_write_text
from selfinstruct_tui.engine.placeholders import (
    normalize_input,
    placeholder_output,
    unusable_input,
)
from selfinstruct_tui.engine.records import (
    in_file_order,
    json_type_name,
    parse_records,
    read_utf8,
    record_places,
)


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


def pool_instance(inp: str, output: str) -> Instance:
    """An instance as the pool keeps it, by whatever path it comes (a seed file, the seed
    editors, the task editor, a model's answer): the input without surrounding white space,
    and "" for any "no input" spelling (`normalize_input`); the output without surrounding white
    space (a seed's trailing newline reached the exports, and Stanford Alpaca's train.py then
    trains on "...\n</s>"). White space and line breaks inside are kept as written."""
    return Instance(normalize_input(inp), output.strip())


SEED_ORIGINS = ("file", "added", "promoted")


@dataclass
class SeedTask:
    """One seed task. `origin`: where it came from, one of SEED_ORIGINS ("file": a seed file or
    the raw JSONL editor, "added": the seed manager, "promoted": a machine task moved to the
    seeds); `source_task`: the machine task id of a promoted seed. Neither is part of the seed
    file format (`to_json`) nor of the content fingerprint."""

    id: str
    name: str
    instruction: str
    instances: list[Instance]
    is_classification: bool = False
    origin: str = "file"
    source_task: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "instruction": self.instruction,
            "instances": [asdict(i) for i in self.instances],
            "is_classification": self.is_classification,
        }


@dataclass
class SeedSummary:
    count: int
    classification: int
    without_input: int
    instances: int
    format: str
    warnings: list[str] = field(default_factory=list)

    @property
    def classification_share(self) -> float:
        return self.classification / self.count if self.count else 0.0

    @property
    def without_input_share(self) -> float:
        return self.without_input / self.count if self.count else 0.0


def _check_str(obj: dict, key: str, where: str, problems: list[str], required: bool = True,
               nonempty: bool = False) -> str:
    if key not in obj:
        if required:
            problems.append(f"{where}: missing field '{key}'")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        problems.append(f"{where}: field '{key}' must be a string, got {json_type_name(value)}")
        return ""
    if nonempty and not value.strip():
        problems.append(f"{where}: field '{key}' is empty")
    return value


def _self_instruct_task(obj: dict, where: str, problems: list[str]) -> SeedTask | None:
    before = len(problems)
    task_id = obj.get("id")
    if "id" not in obj:
        problems.append(f"{where}: missing field 'id'")
    elif not isinstance(task_id, (str, int)) or isinstance(task_id, bool):
        problems.append(f"{where}: field 'id' must be a string, got {json_type_name(task_id)}")
    elif not str(task_id).strip():
        problems.append(f"{where}: field 'id' is empty")
    instruction = _check_str(obj, "instruction", where, problems, nonempty=True)
    name = _check_str(obj, "name", where, problems, required=False) or str(task_id or "")
    is_cls = obj.get("is_classification", False)
    if not isinstance(is_cls, bool):
        problems.append(
            f"{where}: field 'is_classification' must be true or false, got "
            f"{json_type_name(is_cls)}")
    instances: list[Instance] = []
    raw_instances = obj.get("instances")
    if "instances" not in obj:
        problems.append(f"{where}: missing field 'instances'")
    elif not isinstance(raw_instances, list):
        problems.append(f"{where}: field 'instances' must be a list, got "
                        f"{json_type_name(raw_instances)}")
    elif not raw_instances:
        problems.append(f"{where}: field 'instances' is empty; give at least one input/output pair")
    else:
        for i, inst in enumerate(raw_instances):
            iw = f"{where}: instances[{i}]"
            if not isinstance(inst, dict):
                problems.append(f"{iw} must be an object, got {json_type_name(inst)}")
                continue
            inp = _check_str(inst, "input", iw, problems)
            out = _check_str(inst, "output", iw, problems, nonempty=True)
            instances.append(pool_instance(inp, out))
    if len(problems) > before:
        return None
    return SeedTask(str(task_id), name, instruction.strip(), instances, bool(is_cls))


def _alpaca_row(obj: dict, where: str, problems: list[str]) -> tuple[str, Instance] | None:
    before = len(problems)
    instruction = _check_str(obj, "instruction", where, problems, nonempty=True)
    inp = _check_str(obj, "input", where, problems, required=False)
    out = _check_str(obj, "output", where, problems, nonempty=True)
    if len(problems) > before:
        return None
    return instruction.strip(), pool_instance(inp, out)


def parse_seeds(path: str | Path, text: str) -> tuple[list[SeedTask], str]:
    """Tasks and the detected format; raises InputFileError listing every bad line."""
    parsed = parse_records(path, text)
    found = list(parsed.problems)  # (line, message): said in file order
    tasks: list[SeedTask] = []
    alpaca: dict[str, list[Instance]] = {}
    kinds: set[str] = set()
    seen_ids: dict[str, int] = {}

    def read(line: int, where: str, obj: Any, problems: list[str]) -> None:
        """One record into `tasks` or `alpaca`, or its problems into `problems`."""
        if not isinstance(obj, dict):
            problems.append(f"{where}: expected a JSON object, got {json_type_name(obj)}")
            return
        if "instances" in obj or "id" in obj:
            kinds.add("self-instruct")
            task = _self_instruct_task(obj, where, problems)
            if task is None:
                return
            if task.id in seen_ids:
                problems.append(
                    f"{where}: duplicate id {task.id!r} (first used on line {seen_ids[task.id]})")
                return
            seen_ids[task.id] = line
            tasks.append(task)
        elif "output" in obj or "instruction" in obj:
            kinds.add("alpaca")
            row = _alpaca_row(obj, where, problems)
            if row is not None:
                alpaca.setdefault(row[0], []).append(row[1])
        else:
            problems.append(
                f"{where}: not a seed task: expected 'instruction' and 'instances' "
                "(self-instruct) or 'instruction', 'input', 'output' (Alpaca)")

    for (line, obj), where in zip(parsed.records, record_places(parsed), strict=True):
        problems: list[str] = []
        read(line, where, obj, problems)
        found.extend((line, problem) for problem in problems)
    problems = in_file_order(found)
    if len(kinds) > 1:
        problems.append(f"{parsed.path}: mixes self-instruct and Alpaca records; use one format")
    if problems:
        raise InputFileError(problems)
    for n, (instruction, instances) in enumerate(alpaca.items(), start=1):
        tid = f"alpaca_{n}"
        tasks.append(SeedTask(tid, tid, instruction, instances, False))
    if not tasks:
        raise InputFileError([f"{parsed.path}:1: no seed tasks in the file"])
    fmt = "alpaca" if "alpaca" in kinds else "self-instruct"
    return tasks, fmt


def load_seeds(path: str | Path) -> list[SeedTask]:
    return parse_seeds(path, read_utf8(path))[0]


def summarize(tasks: list[SeedTask], fmt: str = "self-instruct") -> SeedSummary:
    cls = sum(t.is_classification for t in tasks)
    no_input = sum(all(not i.input.strip() for i in t.instances) for t in tasks)
    summary = SeedSummary(len(tasks), cls, no_input, sum(len(t.instances) for t in tasks), fmt)
    for task in tasks:
        for n, inst in enumerate(task.instances, start=1):
            why = placeholder_output(inst.output) or unusable_input(inst.input)
            if why:
                summary.warnings.append(f"{task.id}: instances[{n - 1}]: {why}; the model "
                                        "learns from it as written")
    if summary.count < 8:
        summary.warnings.append(
            f"only {summary.count} task{'' if summary.count == 1 else 's'}: each prompt shows 6 "
            "seed examples, so prompts will repeat")
    return summary


@dataclass(frozen=True)
class SimilarSeed:
    """A seed (`seed`, its id) whose instruction is a near duplicate of another seed's
    (`other`): ROUGE-L F-measure `score` in [0, 1] above the threshold, or the same text
    (`instruction_key`: case and spaces aside; score 1.0, also where the tokenizer finds no
    word to score)."""

    seed: str
    other: str
    score: float


def near_duplicate_seeds(tasks: list[SeedTask], threshold: float = 0.7,
                         tokenizer: str = "rouge") -> list[SimilarSeed]:
    """Each seed that is a near duplicate of an earlier one of `tasks`, with the most similar
    earlier seed, in order (what `selfinstruct seeds check` warns of). ValueError for an unknown
    tokenizer."""
    check = _SimilarSeeds(threshold, tokenizer)
    found = []
    for task in tasks:
        hit = check.closest(task.instruction)
        if hit is not None:
            found.append(SimilarSeed(task.id, *hit))
        check.add(task)
    return found


def similar_seed(seed: SeedTask, others: list[SeedTask], threshold: float = 0.7,
                 tokenizer: str = "rouge") -> SimilarSeed | None:
    """The seed of `others` (but `seed`'s own id) that `seed` is a near duplicate of, the most
    similar one, by the rule of `near_duplicate_seeds`; None when there is none."""
    check = _SimilarSeeds(threshold, tokenizer)
    for other in others:
        if other.id != seed.id:
            check.add(other)
    hit = check.closest(seed.instruction)
    return SimilarSeed(seed.id, *hit) if hit is not None else None


def instruction_key(instruction: str) -> str:
    """What two instructions that are the same text share: lower case, runs of whitespace as
    one space, none at the ends."""
    return " ".join(instruction.lower().split())


class _SimilarSeeds:
    """The near-duplicate rule for seeds: the run's exact ROUGE-L index, and equal texts."""

    def __init__(self, threshold: float, tokenizer: str) -> None:
        from selfinstruct_tui.engine.similarity import make_index

        self.index = make_index(threshold=threshold, tokenizer=tokenizer)
        self.texts: dict[str, str] = {}  # instruction_key -> the first seed's id

    def add(self, task: SeedTask) -> None:
        self.index.add(task.id, task.instruction)
        self.texts.setdefault(instruction_key(task.instruction), task.id)

    def closest(self, instruction: str) -> tuple[str, float] | None:
        same = self.texts.get(instruction_key(instruction))
        if same is not None:
            return same, 1.0
        result = self.index.query(instruction, k=1)
        hit = result.most_similar
        return (str(hit.key), hit.score) if result.is_duplicate and hit is not None else None


def _canonical(task: SeedTask) -> tuple:
    return (" ".join(task.instruction.split()),
            tuple(astuple(pool_instance(i.input, i.output)) for i in task.instances),
            bool(task.is_classification))


def seed_fingerprint(tasks: list[SeedTask]) -> str:
    """A digest of a seed set's content (instructions, instances, classification flags, in
    order); ids and names do not count, nor do "no input" spellings or surrounding spaces."""
    data = json.dumps([_canonical(t) for t in tasks], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def seed_difference(file_tasks: list[SeedTask], run_tasks: list[SeedTask]) -> str | None:
    """What differs between two seed sets, in a sentence; None when their content is equal."""
    if [_canonical(t) for t in file_tasks] == [_canonical(t) for t in run_tasks]:
        return None
    if sorted(map(_canonical, file_tasks)) == sorted(map(_canonical, run_tasks)):
        return ("the same tasks in another order (the order matters: prompts sample the seed "
                "list by position)")
    parts = []
    if len(file_tasks) != len(run_tasks):
        parts.append(f"the file has {len(file_tasks)} tasks, the run {len(run_tasks)}")
    for n, (a, b) in enumerate(zip(file_tasks, run_tasks, strict=False), start=1):
        ca, cb = _canonical(a), _canonical(b)
        if ca == cb:
            continue
        field = ("instruction" if ca[0] != cb[0] else
                 "instances" if ca[1] != cb[1] else "is_classification")
        if field == "instruction":
            at = _first_difference(ca[0], cb[0])
            shown = (f"file {a.id} {_around(ca[0], at)!r}, run {b.id} {_around(cb[0], at)!r} "
                     f"(character {at + 1})")
        else:
            shown = f"file {a.id}, run {b.id}: {short_text(a.instruction)!r}"
        parts.append(f"first difference at task {n} ({field}): {shown}")
        break
    else:
        shorter, longer = (file_tasks, run_tasks) if len(file_tasks) < len(run_tasks) else \
            (run_tasks, file_tasks)
        extra = longer[len(shorter)]
        where = "run" if longer is run_tasks else "file"
        parts.append(f"first difference at task {len(shorter) + 1}: only the {where} has "
                     f"{extra.id} {short_text(extra.instruction)!r}")
    return "; ".join(parts)


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def _around(text: str, at: int, width: int = 30) -> str:
    start = max(0, at - width)
    return ("…" if start else "") + text[start:at + width] + ("…" if at + width < len(text)
                                                            else "")


def short_text(text: str, n: int = 60) -> str:
    """`text` on one line (runs of whitespace as one space) in at most `n` characters: whole,
    or its start and an ellipsis, so that a quote cut short never reads as the whole text."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def seed_to_record(task: SeedTask) -> dict[str, Any]:
    """The seed-file fields plus `origin` and `source_task`: how a seed set travels in commands
    and in the store's pending-seeds meta."""
    return {**task.to_json(), "origin": task.origin, "source_task": task.source_task}


def with_seed(seeds: list[SeedTask], seed: SeedTask) -> list[SeedTask]:
    """`seeds` with the seed of `seed.id` replaced by `seed` (in its place), or with `seed`
    added at the end when no seed has that id (an edit of a seed deleted meanwhile comes
    back); a new list."""
    ids = [s.id for s in seeds]
    if seed.id not in ids:
        return [*seeds, seed]
    i = ids.index(seed.id)
    return [*seeds[:i], seed, *seeds[i + 1:]]


def seed_from_record(d: dict[str, Any]) -> SeedTask:
    """The inverse of `seed_to_record` (a record without origin reads as "file"); KeyError for a
    record without id, instruction or instances."""
    source = d.get("source_task")
    return SeedTask(str(d["id"]), d.get("name") or str(d["id"]), d["instruction"],
                    [Instance(i.get("input", ""), i.get("output", "")) for i in d["instances"]],
                    bool(d.get("is_classification")), str(d.get("origin") or "file"),
                    int(source) if source is not None else None)


def carry_origins(new: list[SeedTask], old: list[SeedTask]) -> list[SeedTask]:
    """`new` (e.g. parsed from the raw JSONL editor, where origins are not written) with the
    origin of the `old` seed of the same id; seeds with a new id are "added"."""
    by_id = {t.id: t for t in old}
    out = []
    for task in new:
        before = by_id.get(task.id)
        origin, source = (before.origin, before.source_task) if before else ("added", None)
        out.append(SeedTask(task.id, task.name, task.instruction, list(task.instances),
                            task.is_classification, origin, source))
    return out


def seeds_to_jsonl(tasks: list[SeedTask]) -> str:
    return "".join(json.dumps(t.to_json(), ensure_ascii=False) + "\n" for t in tasks)


def write_seeds(path: str | Path, tasks: list[SeedTask]) -> None:
    atomic_write_text(path, seeds_to_jsonl(tasks))


def bundled_seeds_path() -> Path:
    """The default seed set: inside the wheel, or the repository's top-level seeds/ folder."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_data" / "seeds" / "default.jsonl",
                      here.parent / "seeds" / "default.jsonl"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("the bundled seed set is missing from this installation; "
                            "pass --seeds PATH")
