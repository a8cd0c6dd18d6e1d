"""Seed files: both formats, the bundled set, and PATH:LINE errors for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from selfinstruct_tui.engine.errors import InputFileError
from selfinstruct_tui.engine.seeds import bundled_seeds_path, load_seeds, summarize


def line(**fields):
    base = {"id": "t1", "name": "n", "instruction": "Do a thing well.",
            "instances": [{"input": "", "output": "done"}], "is_classification": False}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def test_bundled_seed_set_is_diverse_and_valid():
    tasks = load_seeds(bundled_seeds_path())
    s = summarize(tasks)
    assert s.count >= 120
    assert 0.15 <= s.classification_share <= 0.20
    assert 0.28 <= s.without_input_share <= 0.40
    assert len({t.instruction for t in tasks}) == len(tasks)


def test_seeds_check_cli_passes_on_bundled_set(run_cli):
    proc = run_cli("seeds", "check", str(bundled_seeds_path()))
    assert proc.returncode == 0, proc.stderr
    assert "tasks:           139" in proc.stdout
    assert "classification:" in proc.stdout and "without input:" in proc.stdout


def test_alpaca_list_is_detected_and_rows_merge_by_instruction(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
        {"instruction": "Add the numbers.", "input": "1, 1", "output": "2"},
        {"instruction": "Name a color.", "input": "", "output": "Blue"},
    ], indent=2))
    tasks = load_seeds(path)
    assert [t.instruction for t in tasks] == ["Add the numbers.", "Name a color."]
    assert len(tasks[0].instances) == 2


@pytest.mark.parametrize("content, expected", [
    (line() + "\n{not json\n", "f.jsonl:2: bad JSON"),
    (line() + "\n" + line(id="t2", instruction=...) + "\n", "f.jsonl:2: missing field 'instruction'"),
    (line(instruction="   "), "f.jsonl:1: field 'instruction' is empty"),
    (line() + "\n" + line() + "\n", "f.jsonl:2: duplicate id 't1' (first used on line 1)"),
    (line(is_classification="yes"), "f.jsonl:1: field 'is_classification' must be true or false"),
    (line(instances="x"), "f.jsonl:1: field 'instances' must be a list, got string"),
    (line(instances=[{"input": 3, "output": "x"}]), "f.jsonl:1: instances[0]: field 'input' must be a string"),
    ("\n\n", "f.jsonl:1: the file is empty"),
    ("[1, 2]", "f.jsonl:1: record 1: expected a JSON object, got number"),
])
def test_bad_seed_files_name_path_and_line(tmp_path, content, expected):
    path = tmp_path / "f.jsonl"
    path.write_text(content)
    with pytest.raises(InputFileError) as info:
        load_seeds(path)
    assert any(p.startswith(str(tmp_path)) and expected in p for p in info.value.problems), \
        info.value.problems


def test_every_bad_line_is_reported(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join([line(id="a"), "{oops", line(id="b", instruction=""),
                               line(id="a")]) + "\n")
    with pytest.raises(InputFileError) as info:
        load_seeds(path)
    lines = sorted(int(p.split(":")[1]) for p in info.value.problems)
    assert lines == [2, 3, 4]


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(line().encode() + b"\n" + b'{"id": "x\xff"}\n')
    with pytest.raises(InputFileError) as info:
        load_seeds(path)
    assert f"{path}:2: not valid UTF-8" in info.value.problems[0]


def test_bad_json_list_names_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n {"instruction": "a b c d", "output": "x"},\n {"instruction": }\n]')
    with pytest.raises(InputFileError) as info:
        load_seeds(path)
    assert info.value.problems[0].startswith(f"{path}:3: record 2: bad JSON")


def test_seeds_check_cli_exits_2_with_every_problem(run_cli, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(line(id="a") + "\n" + "{x\n" + line(id="a") + "\n")
    proc = run_cli("seeds", "check", str(path))
    assert proc.returncode == 2
    assert f"{path}:2: bad JSON" in proc.stderr
    assert f"{path}:3: duplicate id 'a'" in proc.stderr


def test_a_problem_on_line_100_names_line_100(run_cli, tmp_path):
    """rich read ':100:' as an emoji code and printed 'bad.jsonl💯 missing field': the line
    number was gone exactly when the file was long enough to need it."""
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([line(id=f"s{n}") for n in range(99)]
                              + ['{"id": "x", "output": "y"}', line(id="z")]) + "\n")
    proc = run_cli("seeds", "check", str(path))
    assert proc.returncode == 2
    assert f"{path}:100: " in proc.stderr and "\N{HUNDRED POINTS SYMBOL}" not in proc.stderr


def test_every_console_is_the_text_console():
    """One place makes the consoles that print our lines (emoji codes off): a Console made
    elsewhere would bring ':100:' back."""
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "selfinstruct_tui"
    made = [f"{p.relative_to(package)}:{n}" for p in package.rglob("*.py")
            for n, text in enumerate(p.read_text().splitlines(), 1)
            if "Console(" in text and p.name != "console.py"]
    assert made == []


def test_run_with_bad_seeds_fails_before_creating_anything(run_cli, tmp_path, fake_server):
    path = tmp_path / "bad.jsonl"
    path.write_text("{x\n")
    run_dir = tmp_path / "run"
    proc = run_cli("run", "--headless", "--seeds", str(path), "--run-dir", str(run_dir),
                   "--base-url", fake_server.base_url, "--model", "m")
    assert proc.returncode == 2
    assert f"{path}:1: bad JSON" in proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("name, content, expected", [
    ("f.jsonl", '{"id": "a", "instruction": "x", "instances": [],}\n',
     "f.jsonl:1: bad JSON: trailing comma before '}'; remove the comma"),
    ("f.json", '[\n {"instruction": "a b c d", "output": "x"},\n {"instruction": "e", '
               '"output": "y"},\n]\n',
     "f.json:4: bad JSON: trailing comma after record 2 (the last one) before ']'"),
    ("f.json", '[\n {"instruction": "a b c d", "output": "x",},\n]\n',
     "f.json:2: record 1: bad JSON: trailing comma before '}'"),
])
def test_trailing_commas_are_named(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputFileError) as info:
        load_seeds(path)
    [problem] = info.value.problems
    assert problem.startswith(str(tmp_path)) and expected in problem, problem
    assert "near '" in problem  # an excerpt of the text around the error


def test_a_single_json_object_gets_one_clear_message(tmp_path):
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps({"tasks": [json.loads(line()), json.loads(line(id="t2"))]},
                               indent=2))
    with pytest.raises(InputFileError) as info:
        load_seeds(path)
    [problem] = info.value.problems  # one message, not one per line
    assert problem.startswith(f"{path}:1: the file is one JSON object, not a list of records")
    assert "its 'tasks' field holds a list of 2 records" in problem
    spread = tmp_path / "spread.jsonl"
    spread.write_text(json.dumps(json.loads(line()), indent=2) + "\n"
                      + json.dumps(json.loads(line(id="t2")), indent=2) + "\n")
    with pytest.raises(InputFileError) as info:
        load_seeds(spread)
    assert info.value.problems == [
        f"{spread}:1: the records span several lines; JSON Lines needs one object per line "
        "(or put the records in a JSON list: [{...}, {...}])"]


def test_no_input_placeholders_are_empty_inputs_in_seeds(tmp_path, run_cli):
    path = tmp_path / "f.jsonl"
    rows = [line(id=f"t{n}", instruction=f"Do thing number {n} well.",
                 instances=[{"input": spelling, "output": "done"}])
            for n, spelling in enumerate(["<noinput>", "N/A", "None", "(no input)", "real"])]
    path.write_text("\n".join(rows) + "\n")
    tasks = load_seeds(path)
    assert [t.instances[0].input for t in tasks] == ["", "", "", "", "real"]
    proc = run_cli("seeds", "check", str(path), check=True)
    assert "without input:   4 (80.0%)" in proc.stdout


def test_seeds_check_warns_about_placeholder_outputs_and_unusable_inputs(tmp_path, run_cli):
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join([
        line(id="a", instances=[{"input": "", "output": "<No Output>"}]),
        line(id="b", instruction="Summarize the page.",
             instances=[{"input": "https://example.com/page", "output": "A summary."}]),
        line(id="c", instruction="Name a colour please.")]) + "\n")
    proc = run_cli("seeds", "check", str(path), check=True)
    assert "warning: a: instances[0]: placeholder output '<No Output>'" in proc.stdout
    assert "warning: b: instances[0]: the input is only a link" in proc.stdout


def test_a_seed_edit_keeps_the_ids_of_the_seeds_before_its_first_change(tmp_path):
    """Adding a seed at the end keeps every other seed's task row and id (provenance such as
    "seed #12" stays true, no dead rows); editing the third seed keeps the first two."""
    from selfinstruct_tui.engine.seeds import Instance, SeedTask
    from selfinstruct_tui.engine.store import RunStore, seed_tasks_to_pool

    store = RunStore(tmp_path / "run")
    seeds = load_seeds(bundled_seeds_path())[:5]
    store.replace_seeds(seed_tasks_to_pool(seeds, 1))
    before = [t.id for t in store.tasks(origin="seed")]
    added = SeedTask("added_1", "added_1", "Name a fruit that is yellow.",
                     [Instance("", "A banana.")], False, origin="added")
    new = seed_tasks_to_pool([*seeds, added], store.max_used_id() + 1)
    store.apply_seed_set(new)
    after = store.tasks(origin="seed")
    assert [t.id for t in after][:5] == before and [t.id for t in new][:5] == before
    assert after[5].instruction == added.instruction and after[5].id > max(before)
    assert store.tasks(status="removed", origin="seed") == []
    edited = [*seeds[:2], SeedTask(seeds[2].id, seeds[2].name, "Say hello in French.",
                                   [Instance("", "Bonjour.")], False), *seeds[3:], added]
    store.apply_seed_set(seed_tasks_to_pool(edited, store.max_used_id() + 1))
    now = store.tasks(origin="seed")
    assert [t.id for t in now][:2] == before[:2] and now[2].id > after[5].id
    assert [t.instruction for t in now] == [s.instruction for s in edited]  # the set's order
    assert len(store.tasks(status="removed", origin="seed")) == 4  # seeds 3-6 of the last set
    store.close()


def test_a_seed_file_named_in_the_config_file_is_found_beside_it(run_cli, tmp_path,
                                                                 fake_server):
    """`seeds = "myseeds.jsonl"` was read from the working directory: the same config file
    worked from one folder and failed from another ("myseeds.jsonl: no such file")."""
    import sqlite3

    config = tmp_path / "cfg" / "config.toml"
    config.parent.mkdir()
    seeds = load_seeds(bundled_seeds_path())[:20]
    (config.parent / "myseeds.jsonl").write_text(
        "".join(line(id=t.id, instruction=t.instruction) + "\n" for t in seeds))
    config.write_text('seeds = "myseeds.jsonl"\n')
    run_dir = tmp_path / "run"  # run_cli works in tmp_path, not beside the config file
    run_cli("run", "--headless", "--base-url", fake_server.base_url, "--model", "m",
            "--run-dir", str(run_dir), "--target", "2", check=True,
            env={"SELFINSTRUCT_CONFIG": str(config)})
    conn = sqlite3.connect(run_dir / "run.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM tasks WHERE origin = 'seed'").fetchone()[0] == 20
    assert json.loads(conn.execute("SELECT value FROM meta WHERE key = 'seeds_path'"
                                   ).fetchone()[0]) == str(config.parent / "myseeds.jsonl")


def test_a_run_on_seeds_that_repeat_an_instruction_says_so(run_cli, tmp_path, fake_server):
    path = tmp_path / "dup.jsonl"
    tasks = load_seeds(bundled_seeds_path())[:12]
    rows = [line(id=t.id, instruction=t.instruction) for t in tasks]
    rows.append(line(id="again", instruction="  " + tasks[3].instruction.upper() + " "))
    path.write_text("\n".join(rows) + "\n")
    proc = run_cli("run", "--headless", "--seeds", str(path), "--base-url", fake_server.base_url,
                   "--model", "m", "--run-dir", str(tmp_path / "run"), "--target", "1",
                   check=True)
    assert (f"note: {path}: 1 seed task(s) repeat another's instruction (again = "
            f"{tasks[3].id}); each weighs as two") in proc.stderr


def test_unicode_line_separators_inside_strings_do_not_split_records(run_cli, tmp_path):
    """JSON strings may hold U+2028, U+2029 and U+0085 as they are (json.dumps with
    ensure_ascii=False writes them so, as the exports do); str.splitlines broke lines there,
    so a valid file was 'bad JSON' on lines that do not exist and later lines were misnumbered."""
    def raw(task_id, output="one\u2028two\u2029three\x85four"):
        return json.dumps({"id": task_id, "instruction": f"Do thing {task_id} well.",
                           "instances": [{"input": "", "output": output}]},
                          ensure_ascii=False) + "\n"

    path = tmp_path / "seeds.jsonl"
    path.write_text(raw("a") + raw("b"), encoding="utf-8")
    proc = run_cli("seeds", "check", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "tasks:           2" in proc.stdout
    path.write_text(raw("a") + raw("b") + '{"id": "c", "instances": []}\n', encoding="utf-8")
    proc = run_cli("seeds", "check", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"{path}:3: missing field 'instruction'",
        f"{path}:3: field 'instances' is empty; give at least one input/output pair"]


@pytest.mark.parametrize("name, content, lines", [
    # JSON Lines: bad JSON (found while reading) between records checked after reading
    ("seeds.jsonl", "\n".join([line(id="a", instances=[]), "{oops", "[1]",
                               line(id="b", instruction="")]) + "\n", [1, 2, 3, 4]),
    # a JSON list: the records read before the bad JSON come first
    ("seeds.json", "[\n" + line(id="a", instances=...) + ",\n"
     + line(id="b", instruction="") + ",\n{oops}\n]\n", [2, 3, 4]),
], ids=["jsonl", "json-list"])
def test_seeds_check_reports_problems_in_file_order(run_cli, tmp_path, name, content, lines):
    """`seeds check` said a bad-JSON line 2 before a missing field on line 1: problems found
    while reading the file came first, then those of the records. A user fixing the file from
    the top reads them in its order."""
    path = tmp_path / name
    path.write_text(content)
    proc = run_cli("seeds", "check", str(path))
    assert proc.returncode == 2
    said = [int(text.removeprefix(f"{path}:").split(":")[0])
            for text in proc.stderr.splitlines()]
    assert said == lines, proc.stderr


def test_seeds_check_names_near_and_exact_duplicate_seeds(tmp_path, run_cli):
    """Near duplicates by ROUGE-L, and a repeated text even where the tokenizer finds no word
    in it (ROUGE-L 0: a Japanese instruction twice went unsaid)."""
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join([
        line(id="a", instruction="Explain what inflation is to a ten-year-old."),
        line(id="b", instruction="日本の首都はどこですか？"),
        line(id="c", instruction="Explain what inflation is to a 10-year-old child."),
        line(id="d", instruction=" 日本の首都はどこですか？ "),
        line(id="e", instruction="Name a colour please.")]) + "\n", encoding="utf-8")
    proc = run_cli("seeds", "check", str(path), check=True)
    said = [text.strip() for text in proc.stdout.splitlines() if "near-duplicate" in text]
    assert said == ["near-duplicate seeds (ROUGE-L 0.84): c ~ a",
                    "near-duplicate seeds (ROUGE-L 1.00, the same instruction): d ~ b"], \
        proc.stdout


def test_a_json_list_on_one_line_names_the_record_of_each_problem(run_cli, tmp_path):
    """An Alpaca file as json.dump writes it (the whole list on one line): every problem was
    "PATH:1: ...", which did not say which of the records; `seeds check` and `dedup` name it.
    A list with a record per line keeps its lines alone."""
    rows = [{"instruction": "Give one tip for running faster.", "input": "", "output": "Rest."},
            {"instruction": "", "input": "", "output": "x"},
            {"instruction": 5, "input": "", "output": "y"}]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    proc = run_cli("seeds", "check", str(path))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{path}:1: record 2: field 'instruction' is empty",
        f"{path}:1: record 3: field 'instruction' must be a string, got number"], proc.stderr
    proc = run_cli("dedup", str(path), "-o", str(tmp_path / "out.json"))
    assert proc.returncode == 2 and not (tmp_path / "out.json").exists()
    assert proc.stderr.splitlines() == [
        f"{path}:1: record 3: field 'instruction' must be a string"], proc.stderr
    path.write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")
    assert run_cli("seeds", "check", str(path)).stderr.splitlines() == [
        f"{path}:3: field 'instruction' is empty",
        f"{path}:4: field 'instruction' must be a string, got number"]
