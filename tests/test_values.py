"""Values reach the dataset as the model or the user wrote them: JSON answers' nulls, numbers,
lists and objects; Unicode line separators; the white space around inputs and outputs, the same
by every path into the pool (seed files, the seed editors, the task editor, generation)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from textual.app import App

from fake_openai import FakeOpenAI
from selfinstruct_tui.engine.config import RunConfig
from selfinstruct_tui.engine.control import EditTask, OfflineControl, ReplaceSeeds
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.exports import export_seeds
from selfinstruct_tui.engine.seeds import Instance, SeedTask, load_seeds, parse_seeds
from selfinstruct_tui.engine.store import RunStore, seed_tasks_to_pool
from selfinstruct_tui.engine.task import Task
from selfinstruct_tui.tui.screens.inspector import TaskEditScreen
from test_real_answers import NEW, assert_accounted, exported, machine, rejections, run_engine
from tui_helpers import new_run, read_run, until

# -- JSON answers ---------------------------------------------------------------------------------

JSON_INSTANCES = [
    {"input": None, "output": "A walk along the harbour."},  # null input: no input
    {"input": ["rain", "wind"], "output": {"morning": "museum", "afternoon": "café"}},
    {"input": "How many days?", "output": 1.0},
    {"input": "Is it open on Sunday?", "output": True},
    {"Input": "Sunny", "Output": "The beach."},  # keys as some models capitalise them
    {"input": "A storm", "output": None},  # null output: dropped, never the text "None"
    {"input": "Fog"},  # no output at all
]
# what each kept example must be, in the store and every export
JSON_EXPECTED = [("", "A walk along the harbour."),
                 ('["rain", "wind"]', '{"morning": "museum", "afternoon": "café"}'),
                 ("How many days?", "1.0"), ("Is it open on Sunday?", "true"),
                 ("Sunny", "The beach.")]


def test_json_answers_keep_json_values_and_drop_null_outputs_by_name(tmp_path):
    """Structured output (chat, JSON schema): a JSON value was turned into text with str(): a
    null output became the output "None" and was kept, a null input the input "None" (not "no
    input"), lists and objects Python's repr (['rain', 'wind']), true "True". Now: null and
    missing outputs are missing_output rejections with the example kept as raw, a null input
    is no input, other values are written as JSON spells them. The generation list's items
    and the classification answer in JSON are read the same way."""
    tasks = {"tasks": [{"instruction": NEW[0], "input": None},
                       {"instruction": NEW[1], "input": ["flour", "water"]},
                       {"instruction": ["Name", "a", "fruit"]}]}
    answers = {"generate": [json.dumps(tasks)],
               "classify": [json.dumps({"is_classification": False})] * 2,
               "instances": [json.dumps({"instances": JSON_INSTANCES}, ensure_ascii=False),
                             json.dumps({"instances": [{"input": "", "output": "Slowly."}]})]}
    with FakeOpenAI(structured="json", script=answers, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 2, api="chat")
    assert finished.reason == "target"
    first, second = machine(run_dir)
    assert (first["instruction"], second["instruction"]) == (NEW[0], NEW[1])
    got = [(i["input"], i["output"]) for i in json.loads(first["instances"])]
    assert got == JSON_EXPECTED
    dropped = rejections(run_dir, "instance")
    assert [(r["reason"], json.loads(r["raw"])) for r in dropped] == [
        ("missing_output", JSON_INSTANCES[5]), ("missing_output", JSON_INSTANCES[6])]
    assert "'output' is null" in dropped[0]["detail"]
    assert "without 'output'" in dropped[1]["detail"]
    [listed] = rejections(run_dir)  # the list item whose instruction is a list
    assert listed["reason"] == "not_an_instruction" and "is a list, not text" in listed["detail"]
    assert_accounted(run_dir)
    rows = exported(run_dir, "alpaca", tmp_path)
    assert [(r["input"], r["output"]) for r in rows] == [*JSON_EXPECTED, ("", "Slowly.")]
    si = exported(run_dir, "self-instruct", tmp_path)
    assert [(i["input"], i["output"]) for i in si[0]["instances"]] == JSON_EXPECTED
    chat = exported(run_dir, "openai-chat", tmp_path)
    assert chat[1]["messages"][-1]["content"] == JSON_EXPECTED[1][1]
    assert all("None" not in json.dumps(r) and "True" not in json.dumps(r) for r in rows)


@pytest.mark.parametrize("answer, is_cls", [
    ('{"is_classification": true}', True), ('{"is_classification": false}', False),
    ('```json\n{"answer": "Yes"}\n```', True), ('{"Classification": "no"}', False),
])
def test_a_classification_answered_in_json_is_read_by_its_value(tmp_path, answer, is_cls):
    """A chat model that answers the classification question in JSON (JSON mode on the
    endpoint, or of its own accord): the answer was read as text, "is classification false"
    taken for neither yes nor no, and the candidate rejected as unknown_classification."""
    instances = (json.dumps({"instances": [{"label": "Calm", "input": "Still water."}]})
                 if is_cls else json.dumps({"instances": [{"input": "", "output": "Calm."}]}))
    with FakeOpenAI(script={"generate": [f"1. {NEW[3]}"], "classify": [answer],
                            "instances": [instances]}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1, api="chat",
                                          structured_output="off")
    assert finished.reason == "target"
    [task] = machine(run_dir)
    assert bool(task["is_classification"]) is is_cls
    assert rejections(run_dir) == []
    assert_accounted(run_dir)


# -- line separators ------------------------------------------------------------------------------

# Every character str.splitlines breaks at, besides "\n" and "\r"
SEPARATORS = ["\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


@pytest.mark.parametrize("layout", ["labels", "table", "json"])
def test_line_separators_in_answers_are_kept_as_written(tmp_path, layout):
    """A model's U+0085, U+2028 ... between two words stay there, in the store and the export:
    the parser breaks lines at "\\n" only (after CRLF and CR), so they are never layout, and
    they are neither dropped (the words would run together) nor turned into another
    character (the model's text would change)."""
    pairs = [(f"rain{sep}wind", f"こんにちは{sep}means hello") for sep in SEPARATORS]
    if layout == "labels":
        text = "\n\n".join(f"Example {n}\nInput: {i}\nOutput: {o}"
                           for n, (i, o) in enumerate(pairs, start=1))
    elif layout == "table":
        text = "| Input | Output |\n|---|---|\n" + "".join(f"| {i} | {o} |\n" for i, o in pairs)
    else:
        text = json.dumps({"instances": [{"input": i, "output": o} for i, o in pairs]},
                          ensure_ascii=False)
    with FakeOpenAI(script={"generate": [f"1. {NEW[2]}"], "classify": ["No"],
                            "instances": [text]}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1, api="chat",
                                          structured_output="off", max_instances=10)
    [task] = machine(run_dir)
    assert [(i["input"], i["output"]) for i in json.loads(task["instances"])] == pairs
    for fmt in ("alpaca", "self-instruct", "sharegpt"):
        dumped = json.dumps(exported(run_dir, fmt, tmp_path), ensure_ascii=False)
        assert all(json.dumps(o, ensure_ascii=False)[1:-1] in dumped for _, o in pairs), fmt
    assert_accounted(run_dir)


class _Host(App):
    """Just the task editor, as the inspector opens it; `result` gets what it saves."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task_data = task
        self.result: list = []

    def on_mount(self) -> None:
        self.push_screen(TaskEditScreen(self.task_data), self.result.append)


def _task(instances: list[Instance]) -> Task:
    return Task(7, "machine", "Translate the greeting and explain it.", False, instances)


def test_the_task_editor_saves_line_separators_unchanged():
    """A task whose output holds U+2028 or U+0085 could not be saved from the task editor, even
    unchanged: its JSON wrote them as they are, the text area broke lines at them, and the JSON
    string then held raw line breaks ("bad JSON"). They are written as escapes now."""
    instances = [Instance(f"a{sep}b", f"こんにちは{sep}means hello") for sep in SEPARATORS]

    async def go() -> list:
        app = _Host(_task(instances))
        async with app.run_test(size=(100, 40)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, TaskEditScreen))
            await pilot.press("ctrl+s")
            await until(pilot, lambda: bool(app.result))
        return app.result

    [saved] = asyncio.run(go())
    assert saved is not None and saved["instances"] == instances


# -- one trimming rule for every path into the pool --------------------------------------------

def _seed_file(path: Path) -> Path:
    rows = [{"id": "s1", "name": "s1", "instruction": "  Say hello in French.\n",
             "instances": [{"input": "  a friend \n", "output": "Bonjour !\n"}],
             "is_classification": False},
            {"id": "s2", "name": "s2", "instruction": "Name a colour.",
             "instances": [{"input": "<noinput>", "output": "\tBlue.\u2028\n"}],
             "is_classification": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TRIMMED = [[("a friend", "Bonjour !")], [("", "Blue.")]]


def _pairs(tasks) -> list[list[tuple[str, str]]]:
    return [[(i.input, i.output) for i in t.instances] for t in tasks]


def test_seed_files_and_alpaca_rows_are_trimmed_as_generated_instances_are(tmp_path):
    """A seed's output "Bonjour !\\n" kept its newline (generated outputs are stripped): it went
    into the run, its prompts and `seeds export` as written. Both seed formats, the raw seed
    editor (which parses the same way) and a new run's store now hold the trimmed text."""
    seeds = load_seeds(_seed_file(tmp_path / "seeds.jsonl"))
    assert _pairs(seeds) == TRIMMED
    assert seeds[0].instruction == "Say hello in French."
    alpaca = [{"instruction": "Name a colour.", "input": " \n", "output": "Blue.\n\n"}]
    [task], _ = parse_seeds("a.json", json.dumps(alpaca))
    assert _pairs([task]) == [[("", "Blue.")]]
    store = RunStore(tmp_path / "run")  # as a new run stores its seed set (session.py)
    store.save_config(RunConfig(base_url="http://127.0.0.1:9/v1", model="m", target=1))
    store.replace_seeds(seed_tasks_to_pool(seeds, 1))
    store.close()
    active = read_run(tmp_path / "run", lambda s: [t for t in s.tasks(status="active")
                                                   if t.origin == "seed"])
    assert _pairs(active) == TRIMMED
    path, count, _ = export_seeds(tmp_path / "run", tmp_path / "out.jsonl")
    written = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [[(i["input"], i["output"]) for i in r["instances"]] for r in written] == TRIMMED


def test_a_seed_set_and_a_task_edit_sent_as_commands_are_trimmed(tmp_path):
    """A seed set from the seed manager or another UI (ReplaceSeeds) and a task edited in the
    inspector (EditTask) reached the store untrimmed, through the engine and offline alike."""
    untrimmed = [SeedTask("x1", "x1", " Say hello in French. ",
                          [Instance("  a friend \n", "Bonjour !\n")]),
                 SeedTask("x2", "x2", "Name a colour.", [Instance("N/A", "\tBlue.\u2028\n")])]
    edited = (Instance(" rain \n", "Stay in.\n"), Instance("(none)", "\n Bake bread. "))
    with FakeOpenAI() as server:
        store, config = new_run(tmp_path / "run", server.base_url, target=2)
        Engine(store, config).run()
        a, b = [t.id for t in store.tasks(status="active") if t.origin == "machine"][:2]
        engine = Engine(store, config)
        engine.send(ReplaceSeeds(tuple(untrimmed)))
        engine.send(EditTask(a, "  Plan a rainy day. \n", edited, False))
        engine.run()  # the target is reached: it applies the commands and ends
        store.close()
    OfflineControl(tmp_path / "run", lambda event: None).send(
        EditTask(b, "Plan a dry day.\n", edited, False))

    def read(store: RunStore):
        seeds = [t for t in store.tasks(status="active") if t.origin == "seed"]
        return seeds, store.task(a), store.task(b)

    seeds, first, second = read_run(tmp_path / "run", read)
    assert _pairs(seeds) == TRIMMED
    assert seeds[0].instruction == "Say hello in French."
    assert _pairs([first, second]) == [[("rain", "Stay in."), ("", "Bake bread.")]] * 2
    assert (first.instruction, second.instruction) == ("Plan a rainy day.", "Plan a dry day.")
    rows = exported(tmp_path / "run", "alpaca", tmp_path)
    assert [(r["input"], r["output"]) for r in rows[:4]] == [
        ("rain", "Stay in."), ("", "Bake bread."), ("rain", "Stay in."), ("", "Bake bread.")]


def test_the_task_editor_reads_json_values_as_json_and_trims(tmp_path):
    """The task editor's JSON: a null input was saved as the input "None", a number or a list
    as Python's text; surrounding white space was kept. A null output is refused."""
    typed = {"instruction": " Plan a day. ", "is_classification": False,
             "instances": [{"input": None, "output": " Walk.\n"},
                           {"input": ["rain", "wind"], "output": 2.5}]}

    async def go(data: dict) -> tuple[list, str]:
        app = _Host(_task([Instance("", "x")]))
        async with app.run_test(size=(100, 40)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, TaskEditScreen))
            app.screen.query_one("#task-text").text = json.dumps(data)
            await pilot.press("ctrl+s")
            await pilot.pause()
            errors = str(app.screen.query_one("#task-errors").render()) \
                if isinstance(app.screen, TaskEditScreen) else ""
        return app.result, errors

    [saved], _ = asyncio.run(go(typed))
    assert saved["instruction"] == "Plan a day."
    assert saved["instances"] == [Instance("", "Walk."), Instance('["rain", "wind"]', "2.5")]
    refused, errors = asyncio.run(go({**typed, "instances": [{"input": "x", "output": None}]}))
    assert refused == [] and "each with an output" in errors
