"""The exports against the rules of the tools that read them, written from those tools' own code
and docs, so that a change that breaks a consumer fails here.

A real run (the loopback server answers exactly the scripted texts: empty inputs in several
spellings, multi-line inputs and outputs, non-ASCII text, a line separator inside an output,
quotes and backslashes, a classification task, tasks with one to three instances) is exported
in every format and each file is read the way its consumer reads it:

* alpaca: tatsu-lab/stanford_alpaca train.py (`utils.jload` = `json.load` of one JSON list;
  `PROMPT_DICT["prompt_input"]` only when `example.get("input", "") != ""`, so an empty input
  must be exactly ""; target = output + EOS) and alpaca_data.json (a list of objects with the
  three string fields, no "<noinput>" left in inputs); LLaMA-Factory's AlpacaDatasetConverter
  (defaults: prompt "instruction", query "input", response "output"; a falsy query is left out).
* self-instruct: yizhongw/self-instruct data/seed_tasks.jsonl as read by
  bootstrap_instructions.py and prepare_for_finetuning.py --include_seed_tasks (one JSON object
  per line; "instruction", "is_classification" a boolean, "instances" of {"input", "output"},
  "" for no input); and this project's own `--seeds` reader.
* openai-chat: OpenAI's chat fine-tuning format as checked by the cookbook's
  Chat_finetuning_data_prep notebook (each line an object with a non-empty "messages" list;
  each message has "role" and "content" and no keys but role, content, name, function_call,
  weight; roles system/user/assistant/function; content a non-empty string; at least one
  assistant message) and OpenAI's guide (at least 10 examples per training file).
* sharegpt: LLaMA-Factory's SharegptDatasetConverter with the dataset_info.json defaults
  (messages "conversations", role tag "from", content tag "value", human/gpt/system; turns
  alternate human then gpt, an even count, else the example is skipped as broken) and
  axolotl's chat_template with `message_property_mappings: {role: from, content: value}`
  (its default roles map human and gpt).

Every JSON file is UTF-8 without a byte order mark, lines end at LF only and the last line
ends too (jsonlines.org; a JSONL record is one line split at "\\n", as `for line in f` and
pyarrow's reader in `datasets` split it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import cli_command
from fake_openai import FakeOpenAI
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.exports import FORMATS, export_run, export_seeds
from selfinstruct_tui.engine.placeholders import is_no_input
from selfinstruct_tui.engine.seeds import load_seeds
from selfinstruct_tui.engine.store import RunStore
from tui_helpers import new_run

TASK_FORMATS = [f for f in FORMATS if f != "rejections"]

GENERATED = ("1. Suggest a weekend itinerary for a rainy coastal village.\n"
             "2. Classify the sentiment of a café review as positive or negative.\n"
             "3. Translate the greeting into Japanese and explain it.\n"
             "4. Explain why sourdough bread rises more slowly than yeasted bread.\n"
             "5. Rewrite the poem so that each line ends with a rhyme.\n")
CLASSIFY = [" No", " Yes", " No", " No", " No"]
INSTANCES = [
    "Example 1\nInput: (none)\nOutput: Saturday: the harbour.\nSunday: the museum.\n\n"
    "Example 2\nInput: two children\nand a dog\nOutput: The aquarium.   \n\n"
    "Example 3\nInput: N/A\nOutput: Stay in and bake bread.",
    "Class label: Positive\nInput: Le café était délicieux ☕ — très bon!\n\n"
    "Class label: Negative\nInput: The coffee was cold.",
    "Example 1\nInput: Good morning\nOutput: おはようございます (ohayō gozaimasu) is the polite "
    "morning greeting.\u2028It is used until about 10am.\n\n"
    "Example 2\nInput: <noinput>\nOutput: こんにちは means hello. 👋",
    'Example 1\nInput: None\nOutput: Wild yeast ferments more slowly; see "C:\\baking\\notes" '
    "for\tdetails.",
    "Example 1\nInput: Roses are red\nViolets are blue\n\tSugar is sweet\n"
    "Output: Roses are red,\nthe sky is blue,\nsugar is sweet\nand so are you.\n\n"
    "Example 2\nInput: Twinkle twinkle little star\nOutput: Twinkle twinkle little star,\n"
    "how I wonder what you are.",
]
# (instruction, input, output) of every instance, in task order: what each export must carry
EXPECTED = [
    ("Suggest a weekend itinerary for a rainy coastal village.", "",
     "Saturday: the harbour.\nSunday: the museum."),
    ("Suggest a weekend itinerary for a rainy coastal village.", "two children\nand a dog",
     "The aquarium."),
    ("Suggest a weekend itinerary for a rainy coastal village.", "", "Stay in and bake bread."),
    ("Classify the sentiment of a café review as positive or negative.",
     "Le café était délicieux ☕ — très bon!", "Positive"),
    ("Classify the sentiment of a café review as positive or negative.",
     "The coffee was cold.", "Negative"),
    ("Translate the greeting into Japanese and explain it.", "Good morning",
     "おはようございます (ohayō gozaimasu) is the polite morning greeting.\u2028It is used "
     "until about 10am."),
    ("Translate the greeting into Japanese and explain it.", "", "こんにちは means hello. 👋"),
    ("Explain why sourdough bread rises more slowly than yeasted bread.", "",
     'Wild yeast ferments more slowly; see "C:\\baking\\notes" for\tdetails.'),
    ("Rewrite the poem so that each line ends with a rhyme.",
     "Roses are red\nViolets are blue\n\tSugar is sweet",
     "Roses are red,\nthe sky is blue,\nsugar is sweet\nand so are you."),
    ("Rewrite the poem so that each line ends with a rhyme.", "Twinkle twinkle little star",
     "Twinkle twinkle little star,\nhow I wonder what you are."),
]


def scripted_run(tmp_path: Path, instances: list[str] = INSTANCES, target: int = 5) -> Path:
    """A finished run whose machine tasks are exactly the scripted answers."""
    run_dir = tmp_path / "run"
    with FakeOpenAI(script={"generate": [GENERATED], "classify": CLASSIFY[:target],
                            "instances": instances[:target]}, repeat_last=False) as server:
        store, config = new_run(run_dir, server.base_url, target=target, concurrency=1,
                                prompts_per_round=1, api="chat", structured_output="off")
        finished = Engine(store, config).run()
        store.close()
    assert finished.reason == "target" and finished.accepted == target
    return run_dir


def seed_instructions(run_dir: Path) -> set[str]:
    store = RunStore(run_dir, readonly=True)
    try:
        return {t.instruction for t in store.iter_tasks("seed")}
    finally:
        store.close()


# -- the file's bytes -----------------------------------------------------------------------------

def text_of(data: bytes) -> str:
    """UTF-8 (strict), no BOM, LF line ends only, a final newline."""
    assert not data.startswith(b"\xef\xbb\xbf"), "a byte order mark"
    text = data.decode("utf-8")  # strict: raises on anything that is not UTF-8
    assert "\r" not in text, "a CR: line ends are LF"
    assert text.endswith("\n"), "the last line has no newline"
    return text


def jsonl_records(data: bytes) -> list[dict]:
    """One JSON object per line, lines split at LF only (jsonlines.org; `for line in f`)."""
    lines = text_of(data).split("\n")[:-1]
    records = []
    for n, line in enumerate(lines, start=1):
        assert line.strip(), f"line {n} is blank"
        record = json.loads(line)
        assert isinstance(record, dict), f"line {n} is not an object"
        records.append(record)
    return records


def nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


# -- each consumer's rules ------------------------------------------------------------------------

def check_alpaca(data: bytes) -> list[tuple[str, str, str]]:
    rows = json.loads(text_of(data))  # utils.jload: json.load of the whole file
    assert isinstance(rows, list)
    triples = []
    for n, row in enumerate(rows):
        assert isinstance(row, dict) and set(row) == {"instruction", "input", "output"}, row
        assert nonempty_str(row["instruction"]) and nonempty_str(row["output"]), n
        assert isinstance(row["input"], str)
        # train.py picks the prompt without an input only for exactly "": a "<noinput>" or
        # "N/A" left in would be trained as the task's input
        assert not (is_no_input(row["input"]) and row["input"] != ""), row
        assert row["input"] == row["input"].strip(), row
        with_input = row.get("input", "") != ""
        prompt = ("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
                  if with_input else "### Instruction:\n{instruction}\n\n### Response:")
        assert row["instruction"] in prompt.format_map(row)
        # LLaMA-Factory: the user turn is "instruction\ninput", a falsy input left out
        query = [row[k] for k in ("instruction", "input") if row[k]]
        assert "\n".join(query) == row["instruction"] + (f"\n{row['input']}" if with_input
                                                           else "")
        triples.append((row["instruction"], row["input"], row["output"]))
    return triples


def check_self_instruct(data: bytes) -> list[tuple[str, str, str]]:
    triples = []
    for task in jsonl_records(data):
        # bootstrap_instructions.py: t["instruction"], t["is_classification"] (truthiness, for
        # --use_clf_seed_tasks_only); prepare_for_finetuning.py: instance["input"/"output"]
        assert nonempty_str(task["instruction"])
        assert isinstance(task["is_classification"], bool)
        assert isinstance(task["instances"], list) and task["instances"]
        for inst in task["instances"]:
            assert isinstance(inst["input"], str) and nonempty_str(inst["output"])
            assert not (is_no_input(inst["input"]) and inst["input"] != ""), inst
            triples.append((task["instruction"], inst["input"], inst["output"]))
    return triples


OPENAI_MESSAGE_KEYS = {"role", "content", "name", "function_call", "weight"}
OPENAI_ROLES = {"system", "user", "assistant", "function"}
OPENAI_MIN_EXAMPLES = 10


def check_openai_chat(data: bytes) -> list[tuple[str, str]]:
    pairs = []
    for n, example in enumerate(jsonl_records(data), start=1):
        assert set(example) == {"messages"}, n
        messages = example["messages"]
        assert isinstance(messages, list) and messages, f"line {n}: missing_messages_list"
        for message in messages:
            assert {"role", "content"} <= set(message), f"line {n}: message_missing_key"
            assert set(message) <= OPENAI_MESSAGE_KEYS, f"line {n}: message_unrecognized_key"
            assert message["role"] in OPENAI_ROLES, f"line {n}: unrecognized_role"
            assert nonempty_str(message["content"]), f"line {n}: missing_content"
        assert any(m["role"] == "assistant" for m in messages), \
            f"line {n}: example_missing_assistant_message"
        assert [m["role"] for m in messages] == ["user", "assistant"], n
        pairs.append((messages[0]["content"], messages[1]["content"]))
    return pairs


def check_sharegpt(data: bytes) -> list[tuple[str, str]]:
    pairs = []
    user_tags, assistant_tags = ("human", "observation"), ("gpt", "function_call")
    axolotl_roles = {"human", "user", "gpt", "assistant", "system", "tool"}
    for n, example in enumerate(jsonl_records(data), start=1):
        turns = example["conversations"]
        assert isinstance(turns, list) and turns, n
        if turns[0]["from"] == "system":
            turns = turns[1:]
        for i, turn in enumerate(turns):
            assert set(turn) == {"from", "value"}, n
            assert turn["from"] in (user_tags, assistant_tags)[i % 2], f"line {n}: invalid role"
            assert turn["from"] in axolotl_roles, n
            assert nonempty_str(turn["value"]), n
        assert len(turns) % 2 == 0, f"line {n}: invalid message count"
        pairs.append((turns[0]["value"], turns[1]["value"]))
    return pairs


def chat_pairs(triples: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """The (user turn, answer) the chat formats write: the instruction, then the input after a
    blank line when there is one."""
    return [(f"{i}\n\n{x}" if x else i, o) for i, x, o in triples]


# -- the tests ------------------------------------------------------------------------------------

def test_every_export_reads_as_its_consumer_reads_it(tmp_path):
    run_dir = scripted_run(tmp_path)
    files = {}
    for fmt in TASK_FORMATS:
        exported = export_run(run_dir, fmt, tmp_path / f"out.{fmt}")
        files[fmt] = exported.path.read_bytes()
        meta = json.loads(text_of(Path(f"{exported.path}.meta.json").read_bytes()))
        assert meta["format"] == fmt and meta["rows"] == exported.rows
    # one row per instance in the instance formats, one per task in self-instruct; the seeds
    # are never in a task export
    assert check_alpaca(files["alpaca"]) == EXPECTED
    assert check_self_instruct(files["self-instruct"]) == EXPECTED
    assert check_openai_chat(files["openai-chat"]) == chat_pairs(EXPECTED)
    assert len(EXPECTED) >= OPENAI_MIN_EXAMPLES
    assert check_sharegpt(files["sharegpt"]) == chat_pairs(EXPECTED)
    assert len(jsonl_records(files["self-instruct"])) == 5
    assert not seed_instructions(run_dir) & {i for i, _, _ in EXPECTED}
    # the classification task: flagged, its instances as the label-first prompt made them
    flags = {t["instruction"]: t["is_classification"]
             for t in jsonl_records(files["self-instruct"])}
    assert [i for i, c in flags.items() if c] == [EXPECTED[3][0]]
    # non-ASCII text is written as UTF-8 text, not escaped; a line separator inside a string
    # stays inside its record (split at LF only)
    for fmt in TASK_FORMATS:
        assert "おはようございます" in files[fmt].decode("utf-8")


def test_jsonl_exports_read_line_by_line_with_the_consumers_open(tmp_path):
    """How the cookbook and self-instruct read a JSONL file: `open(path, encoding="utf-8")` and
    `json.loads(line) for line in f` (universal newlines): the same records as split at LF."""
    run_dir = scripted_run(tmp_path)
    for fmt in ("self-instruct", "openai-chat", "sharegpt"):
        path = export_run(run_dir, fmt, tmp_path / f"out.{fmt}").path
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        assert records == jsonl_records(path.read_bytes())


def test_self_instruct_export_is_a_seed_file(tmp_path):
    """The self-instruct export is the seed_tasks.jsonl shape: this project's `--seeds` reads it
    back with every task, instance and classification flag."""
    run_dir = scripted_run(tmp_path)
    path = export_run(run_dir, "self-instruct", tmp_path / "tasks.jsonl").path
    seeds = load_seeds(path)
    assert [(s.instruction, i.input, i.output) for s in seeds for i in s.instances] == EXPECTED
    assert [s.is_classification for s in seeds] == [False, True, False, False, False]


def cli_bytes(env: dict, *args: str) -> bytes:
    """The command's stdout as bytes (exit 0 required)."""
    proc = subprocess.run(cli_command(*args), capture_output=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return proc.stdout


# A stdout that is not UTF-8: a latin-1 locale, an ASCII one, a pipe on Windows (the ANSI code
# page). The data written there crashed half-way (a traceback after a truncated file) or, for
# text the encoding could hold ("café", "°"), came out in that encoding: not UTF-8, which OpenAI
# and `datasets` read.
@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_data_written_to_stdout_is_the_file_byte_for_byte_whatever_the_locale(
        tmp_path, isolated_env, encoding):
    run_dir = scripted_run(tmp_path)
    env = {**isolated_env, "PYTHONIOENCODING": encoding}
    for fmt in FORMATS:
        path = export_run(run_dir, fmt, tmp_path / f"out.{fmt}").path
        stdout = cli_bytes(env, "export", str(run_dir), "--format", fmt, "-o", "-")
        assert stdout == path.read_bytes(), fmt
    # the run's seed set (the bundled seeds hold "°", "×" and "−")
    seeds = tmp_path / "seeds.jsonl"
    export_seeds(run_dir, seeds)
    assert cli_bytes(env, "seeds", "export", str(run_dir), "-o", "-") == seeds.read_bytes()
    # dedup of an export, and its report
    source = tmp_path / "out.alpaca"
    kept = tmp_path / "kept.json"
    report = tmp_path / "report.jsonl"
    cli_bytes(env, "dedup", str(source), "-o", str(kept), "--report", str(report))
    assert cli_bytes(env, "dedup", str(source), "-o", "-") == kept.read_bytes()
    assert cli_bytes(env, "dedup", str(source), "-o", str(tmp_path / "k2.json"),
                     "--report", "-") == report.read_bytes()


def test_an_openai_chat_export_too_small_to_fine_tune_says_so(tmp_path, run_cli):
    """OpenAI refuses a training file of fewer than 10 examples when the job is created (after
    the upload): the export says so, with the count and what to do; a file of 10 says nothing."""
    small = scripted_run(tmp_path / "small", target=2)  # 3 + 2 instances
    proc = run_cli("export", str(small), "--format", "openai-chat", "-o",
                   str(tmp_path / "small.jsonl"), check=True)
    assert ("note: OpenAI fine-tuning needs at least 10 examples in a training file and this "
            "one has 5") in proc.stderr
    assert len(check_openai_chat((tmp_path / "small.jsonl").read_bytes())) == 5
    proc = run_cli("export", str(small), "--format", "openai-chat", "-o", "-", check=True)
    assert "this one has 5" in proc.stderr and len(proc.stdout.splitlines()) == 5
    for fmt in ("alpaca", "sharegpt"):  # no such minimum there
        proc = run_cli("export", str(small), "--format", fmt, "-o", "-", check=True)
        assert "note:" not in proc.stderr
    full = scripted_run(tmp_path / "full")
    proc = run_cli("export", str(full), "--format", "openai-chat", "-o", "-", check=True)
    assert "note:" not in proc.stderr


def test_the_export_dialog_says_when_openai_would_refuse_the_file(tmp_path, isolated_env):
    from textual.widgets import Input, Select

    from selfinstruct_tui.tui.app import create_app
    from tui_helpers import run, until

    run_dir = scripted_run(tmp_path, target=2)
    out = tmp_path / "chat.jsonl"
    warnings: list[str] = []

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("x")
            await pilot.pause(0.2)
            app.screen.query_one("#format", Select).value = "openai-chat"
            await pilot.pause(0.1)
            app.screen.query_one("#path", Input).value = str(out)
            await pilot.click("#export")
            # the warning follows the "Exported ..." notice from the export's thread
            await until(pilot, lambda: any(n.severity == "warning" for n in app._notifications))
            warnings.extend(n.message for n in app._notifications if n.severity == "warning")

    run(go())
    assert len(check_openai_chat(out.read_bytes())) == 5
    assert any("at least 10 examples" in w and "has 5" in w for w in warnings), warnings


def missing_folder_said(stderr: str, folder: Path, flag: str) -> bool:
    return (f"the folder {folder} does not exist" in stderr and f"mkdir -p {folder}" in stderr
            and f"choose another {flag}" in stderr)


def test_an_output_path_in_a_folder_that_does_not_exist_is_refused_and_creates_nothing(
        tmp_path, run_cli):
    """`export -o /nonexistent/x.json` wrote the file and made /nonexistent: every command that
    writes a path the user names made the missing folders of a typo. Now each exits 2 naming the
    folder and the fix, and writes nothing; a folder that is a file is named too."""
    run_dir = scripted_run(tmp_path)
    source = export_run(run_dir, "alpaca", tmp_path / "data.json").path
    missing = tmp_path / "typo" / "deeper"
    (tmp_path / "plain").write_text("a file\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, flag in ((["export", str(run_dir), "--format", "alpaca", "-o"], "-o"),
                       (["export", str(run_dir), "--format", "rejections", "-o"], "-o"),
                       (["seeds", "export", str(run_dir), "-o"], "-o"),
                       (["dedup", str(source), "-o"], "-o"),
                       (["dedup", str(source), "-o", str(tmp_path / "kept.json"), "--report"],
                        "--report")):
        proc = run_cli(*args, str(missing / "x.json"))
        assert proc.returncode == 2, (args, proc.stderr)
        assert missing_folder_said(proc.stderr, missing, flag), proc.stderr
        assert "Traceback" not in proc.stderr
        proc = run_cli(*args, str(tmp_path / "plain" / "x.json"))
        assert proc.returncode == 2 and "plain is not a folder" in proc.stderr, proc.stderr
        assert f"choose another {flag}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no typo/, no kept.json
    # a relative path is named as it was typed
    proc = run_cli("export", str(run_dir), "--format", "alpaca", "-o", "exprots/x.json")
    assert proc.returncode == 2 and missing_folder_said(proc.stderr, Path("exprots"), "-o")
    assert not (tmp_path / "exprots").exists()


def test_the_export_dialog_refuses_a_path_in_a_folder_that_does_not_exist(tmp_path,
                                                                          isolated_env):
    """The dialog's path /nonexistent/x.json wrote the file and made /nonexistent: now an error
    under the path names the folder and the fix, and nothing is written."""
    from textual.widgets import Input

    from selfinstruct_tui.tui.app import create_app
    from tui_helpers import run, until

    run_dir = scripted_run(tmp_path, target=2)
    missing = tmp_path / "typo"
    errors: list[str] = []

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("x")
            await pilot.pause(0.2)
            app.screen.query_one("#path", Input).value = str(missing / "x.json")
            await pilot.click("#export")
            error = app.screen.query_one("#path-error")
            await until(pilot, lambda: error.has_class("visible"))
            errors.append(str(error.render()))
            assert not app._notifications  # (said beside the path, not closed and notified)

    run(go())
    assert len(errors) == 1 and missing_folder_said(errors[0], missing, "path"), errors
    assert not missing.exists()
