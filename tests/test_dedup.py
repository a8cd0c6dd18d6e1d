"""`selfinstruct dedup` on JSONL, JSON lists and plain text, checked against rouge-score itself."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from fake_openai import make_instruction
from rouge_score import rouge_scorer

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def reference_dedup(texts, threshold=0.7):
    kept = []
    for text in texts:
        if all(SCORER.score(k, text)["rougeL"].fmeasure <= threshold for k in kept):
            kept.append(text)
    return kept


def corpus(n=300, seed=3):
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        if texts and rng.random() < 0.25:
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = "altered"
            texts.append(" ".join(words))
        else:
            texts.append(make_instruction(rng))
    return texts


def test_dedup_jsonl_matches_rouge_score_and_reports(run_cli, tmp_path):
    texts = corpus()
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps({"instruction": t, "extra": i}) + "\n"
                           for i, t in enumerate(texts)))
    out, report = tmp_path / "out.jsonl", tmp_path / "report.jsonl"
    proc = run_cli("dedup", str(src), "-o", str(out), "--report", str(report), check=True)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    want = reference_dedup(texts)
    assert [k["instruction"] for k in kept] == want
    assert all("extra" in k for k in kept)  # records are kept whole
    dropped = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(dropped) == len(texts) - len(want) > 20
    for d in dropped:
        assert d["score"] > 0.7
        assert d["kept_instruction"] in want
        assert SCORER.score(d["kept_instruction"], d["instruction"])["rougeL"].fmeasure == d["score"]
    assert (f"kept {len(want)} of {len(texts)} (" in proc.stdout if len(set(texts)) == len(texts)
            else f"({len(want)} of {len(texts)} rows" in proc.stdout)
    assert "replaced" not in proc.stderr
    # run again: both files are replaced, and said so (as `export` says it)
    again = run_cli("dedup", str(src), "-o", str(out), "--report", str(report), check=True)
    assert f"note: replaced what was there: {out}, {report}" in again.stderr


def test_dedup_json_list_and_plain_text(run_cli, tmp_path):
    texts = corpus(120, seed=9)
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([{"instruction": t, "input": "", "output": "x"} for t in texts],
                              indent=2))
    run_cli("dedup", str(src), check=True)
    out = tmp_path / "alpaca.dedup.json"
    assert [r["instruction"] for r in json.loads(out.read_text())] == reference_dedup(texts)
    txt = tmp_path / "lines.txt"
    txt.write_text("\n".join(texts) + "\n")
    run_cli("dedup", str(txt), "-o", str(tmp_path / "o.txt"), "--threshold", "0.5", check=True)
    assert (tmp_path / "o.txt").read_text().splitlines() == reference_dedup(texts, 0.5)
    # a text file's first instruction may start like JSON: it was "record 1: bad JSON"
    texts = ["[Draft] " + texts[0], *texts[1:]]
    txt.write_text("\n".join(texts) + "\n")
    run_cli("dedup", str(txt), "-o", str(tmp_path / "o.txt"), "--threshold", "0.5", check=True)
    assert (tmp_path / "o.txt").read_text().splitlines() == reference_dedup(texts, 0.5)


def test_dedup_bad_input_names_path_and_line(run_cli, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"instruction": "ok one here"}\n{"prompt": "no field"}\n{broken\n')
    out = tmp_path / "out.jsonl"
    proc = run_cli("dedup", str(src), "-o", str(out))
    assert proc.returncode == 2
    assert f"{src}:2: missing field 'instruction'" in proc.stderr
    assert f"{src}:3: bad JSON" in proc.stderr
    assert not out.exists()
    proc = run_cli("dedup", str(src), "--field", "prompt", "-o", str(out))
    assert proc.returncode == 2 and f"{src}:1: missing field 'prompt'" in proc.stderr


def test_dedup_without_the_compiled_kernel_says_so_and_gives_the_same_result(
        run_cli, isolated_env, tmp_path):
    # A machine without a C compiler installs no kernel: the numpy fallback must give the same
    # output, and the user is told why it is slower.
    texts = corpus(n=150, seed=5)
    src = tmp_path / "data.txt"
    src.write_text("\n".join(texts) + "\n")
    fast, slow = tmp_path / "fast.txt", tmp_path / "slow.txt"
    proc = run_cli("dedup", str(src), "-o", str(fast), check=True)
    assert "numpy fallback" not in proc.stderr
    without_kernel = ("import sys, runpy; sys.modules['_selfinstruct_rouge'] = None; "
                      "sys.argv = ['selfinstruct'] + sys.argv[1:]; "
                      "runpy.run_module('selfinstruct_tui', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", without_kernel, "dedup", str(src), "-o", str(slow)],
                          capture_output=True, text=True, timeout=240, env=isolated_env,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "numpy fallback" in proc.stderr and "C compiler" in proc.stderr
    assert slow.read_text() == fast.read_text()
    assert slow.read_text().splitlines() == reference_dedup(texts)


def test_dedup_warns_when_items_have_no_tokens_and_names_the_unicode_tokenizer(run_cli,
                                                                               tmp_path):
    src = tmp_path / "zh.jsonl"
    rows = ["请为一个下雨的周末安排三个室内活动。", "请为一个下雨的周末安排三个室内活动吧。",
            "Explain why the sky is blue."]
    src.write_text("".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n"
                           for t in rows))
    proc = run_cli("dedup", str(src), "-o", str(tmp_path / "out.jsonl"), check=True)
    assert f"warning: 2 of 3 items have no tokens under the 'rouge' tokenizer (e.g. {src}:1" \
        in proc.stderr
    assert "--tokenizer unicode" in proc.stderr
    assert "kept 3 of 3" in proc.stdout  # the default tokenizer cannot see the duplicate
    proc = run_cli("dedup", str(src), "-o", str(tmp_path / "out2.jsonl"), "--tokenizer",
                   "unicode", check=True)
    assert "warning" not in proc.stderr and "kept 2 of 3" in proc.stdout


def test_dedup_writes_no_input_placeholders_as_empty_inputs(run_cli, tmp_path):
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([
        {"instruction": "Name three rivers in Europe.", "input": "<noinput>", "output": "a"},
        {"instruction": "Sort the numbers in the list.", "input": "3, 1, 2", "output": "b"},
        {"instruction": "Give a synonym for happy please.", "input": "N/A", "output": "c"}]))
    out = tmp_path / "out.json"
    proc = run_cli("dedup", str(src), "-o", str(out), check=True)
    assert "2 'no input' placeholders written as empty inputs" in proc.stdout
    assert [r["input"] for r in json.loads(out.read_text())] == ["", "3, 1, 2", ""]


def test_rows_that_repeat_an_instruction_are_its_instances_not_near_duplicates(run_cli,
                                                                               tmp_path):
    """An Alpaca export has one row per instance: dedup dropped every row after a task's
    first as a near duplicate of it (score 1.0), 146 of 226 rows of a run's export. Rows with
    the same instruction are one task: kept with its first row, or dropped with it."""
    tasks = ["Write a short poem about the quiet winter sea at dawn.",
             "Explain how a bicycle gear system changes the effort needed.",
             "Write a short poem about the quiet winter sea at night.",  # near duplicate of 1
             "List three ways to reduce food waste in a small restaurant."]
    rows = [{"instruction": t, "input": f"case {n}", "output": f"answer {n}"}
            for t in tasks for n in range(3)]
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps(rows))
    out, report = tmp_path / "out.json", tmp_path / "report.jsonl"
    proc = run_cli("dedup", str(src), "-o", str(out), "--report", str(report), check=True)
    kept = json.loads(out.read_text())
    assert kept == [r for r in rows if r["instruction"] != tasks[2]]
    dropped = [json.loads(line) for line in report.read_text().splitlines()]
    assert [d["instruction"] for d in dropped] == [tasks[2]] * 3
    assert {d["kept_instruction"] for d in dropped} == {tasks[0]}
    assert "kept 3 of 4 instructions (9 of 12 rows" in proc.stdout
    assert "1 near duplicate, ROUGE-L" in proc.stdout  # (said "1 near duplicates")


def test_an_empty_output_path_is_refused_not_taken_for_the_default(run_cli, tmp_path):
    """`-o ""` (an unset shell variable) wrote the default file quietly."""
    here = tmp_path / "here"
    here.mkdir()
    src = here / "data.jsonl"
    src.write_text('{"instruction": "Write a poem."}\n')
    for args in (("dedup", str(src), "-o", ""), ("dedup", str(src), "--report", " "),
                 ("export", str(here), "--format", "alpaca", "-o", ""),
                 ("seeds", "export", str(here), "-o", "")):
        proc = run_cli(*args)
        assert proc.returncode == 2, args
        assert "an empty path: name a file (or - for stdout)" in proc.stderr, proc.stderr
    assert [p.name for p in here.iterdir()] == ["data.jsonl"]  # nothing written


def test_a_field_no_record_has_is_one_message(run_cli, tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Task {n}", "input": ""}) + "\n"
                           for n in range(200)))
    proc = run_cli("dedup", str(src), "--field", "instr")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"{src}: no record has the field 'instr' (the first record's fields: instruction, "
        "input); choose one with --field"]


def test_unicode_line_separators_inside_strings_keep_records_whole(run_cli, tmp_path):
    """A JSONL export (json.dumps, ensure_ascii=False) leaves U+2028 and U+0085 in strings as
    they are; dedup split lines there and refused the file as bad JSON. Plain text lines are
    split at line ends only, too."""
    rows = [{"instruction": "Write a short poem about the sea.", "output": "waves\u2028foam"},
            {"instruction": "Summarize the news article below.", "input": "a\x85b\u2029c"},
            {"instruction": "Write a short poem about the sea!", "output": "x"}]
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    out, report = tmp_path / "out.jsonl", tmp_path / "dropped.jsonl"
    proc = run_cli("dedup", str(src), "-o", str(out), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(r) for r in out.read_text(encoding="utf-8").split("\n") if r] == rows[:2]
    assert json.loads(report.read_text())["line"] == 3
    txt = tmp_path / "lines.txt"
    txt.write_text("Write a poem\u2028about the sea.\nTranslate this text.\n", encoding="utf-8")
    run_cli("dedup", str(txt), "-o", str(tmp_path / "o.txt"), check=True)
    assert (tmp_path / "o.txt").read_text(encoding="utf-8") == txt.read_text(encoding="utf-8")


def test_dedup_outputs_never_destroy_the_input_and_bad_paths_are_named(run_cli, tmp_path):
    """--report naming the input replaced the dataset with the (empty) report, exit 0; the
    report over -o's file left only the report; -o DIR, -o /dev/stdout and a path that cannot
    be created ended in a traceback; -o - wrote a file named '-' (export's -o - is stdout)."""
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in corpus(40)))
    before = src.read_bytes()
    out = tmp_path / "out.jsonl"
    for args, flag in ((["--report", str(src)], "--report"), (["-o", str(src)], "-o"),
                       (["-o", str(out), "--report", str(out)], "--report"),
                       (["--report", str(tmp_path / "data.dedup.jsonl")], "--report")):
        proc = run_cli("dedup", str(src), *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and f"choose another {flag}" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert src.read_bytes() == before and not out.exists()
    (tmp_path / "file").write_text("x")
    for target, said in ((tmp_path, "is a directory"), ("/dev/stdout", "not a regular file"),
                         (tmp_path / "file" / "out.jsonl", "is not a folder"),
                         ("/proc/no-such-dir/out.jsonl", "does not exist")):
        proc = run_cli("dedup", str(src), "-o", str(target))
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("dedup", str(src), "-o", "-", check=True)
    assert [json.loads(r)["instruction"] for r in proc.stdout.splitlines()] == \
        reference_dedup(corpus(40))
    assert "wrote stdout" in proc.stderr and not (tmp_path / "-").exists()
    proc = run_cli("dedup", str(src), "-o", str(out), "--report", "-", check=True)
    assert [json.loads(r)["line"] for r in proc.stdout.splitlines()] and "kept" in proc.stderr


def test_dedup_reports_bad_records_in_file_order(run_cli, tmp_path):
    """Bad JSON on line 2 was said before a missing field on line 1."""
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "no field"}\n{broken\n[1]\n{"instruction": 3}\n')
    proc = run_cli("dedup", str(src), "-o", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2
    said = [text.split(":")[1] for text in proc.stderr.splitlines()]
    assert said == ["1", "2", "3", "4"], proc.stderr


def test_dedup_help_says_what_each_option_does(run_cli):
    text = " ".join(run_cli("dedup", "--help", check=True).stdout.split())
    for said in ("the file to write (- for stdout; default: INPUT.dedup.EXT)",
                 "above this (0.7)", "the records' field holding the instruction",
                 "with the kept one it collided with", "unicode (for non-English text)"):
        assert said in text, said
