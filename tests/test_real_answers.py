"""Raw model answers through the real engine: a loopback server returns exactly the scripted text,
the engine runs, and the store and the exports are checked (every candidate accounted for)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from selfinstruct_tui.engine.engine import Engine
from selfinstruct_tui.engine.exports import export_run
from selfinstruct_tui.engine.store import RunStore
from tui_helpers import new_run

# Instructions far from the bundled seeds (ROUGE-L) and clear of the blacklist.
NEW = ["Suggest a weekend itinerary for a rainy coastal village.",
       "Explain why sourdough bread rises more slowly than yeasted bread.",
       "Rewrite the sentence so that it sounds more polite to a customer.",
       "Compose a limerick about a forgetful lighthouse keeper."]


def run_engine(tmp_path: Path, server: FakeOpenAI, target: int, **cfg):
    run_dir = tmp_path / "run"
    store, config = new_run(run_dir, server.base_url, target=target,
                            **{"concurrency": 1, "prompts_per_round": 1, **cfg})
    engine = Engine(store, config)
    events: list = []
    engine.bus.subscribe(events.append)
    finished = engine.run()
    store.close()
    return run_dir, finished, events


def db(run_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(run_dir / "run.sqlite")
    conn.row_factory = sqlite3.Row
    return conn


def machine(run_dir: Path) -> list[sqlite3.Row]:
    return db(run_dir).execute("SELECT * FROM tasks WHERE origin = 'machine' AND "
                               "status = 'active' ORDER BY id").fetchall()


def rejections(run_dir: Path, level: str = "candidate") -> list[sqlite3.Row]:
    return db(run_dir).execute("SELECT * FROM rejections WHERE level = ? ORDER BY id",
                               (level,)).fetchall()


def assert_accounted(run_dir: Path) -> None:
    """Every finished round adds up, and every paid instance answer ends in a task or a
    rejection that names the task."""
    conn = db(run_dir)
    for r in conn.execute("SELECT * FROM rounds WHERE status != 'running'"):
        rejected = sum(json.loads(r["rejected"]).values())
        assert r["candidates"] == r["accepted"] + rejected + r["surplus"], dict(r)
    tasks = {row[0] for row in conn.execute("SELECT id FROM tasks")}
    rejected_ids = {row[0] for row in conn.execute(
        "SELECT task_id FROM rejections WHERE level = 'candidate' AND task_id IS NOT NULL")}
    for (ref,) in conn.execute("SELECT task_ref FROM prompts WHERE kind = 'instances' "
                               "AND response IS NOT NULL"):
        assert ref in tasks or ref in rejected_ids, ref
    for row in conn.execute("SELECT reason, raw FROM rejections WHERE reason != "
                            "'dropped_by_user'"):
        assert row["raw"], dict(row)  # the fragment of the answer is kept
    # a candidate is recorded once per round (surplus or unanswered, then interrupted, was twice)
    twice = conn.execute("SELECT round, task_id FROM rejections WHERE level = 'candidate' AND "
                         "task_id IS NOT NULL GROUP BY round, task_id HAVING COUNT(*) > 1"
                         ).fetchall()
    assert not twice, [tuple(r) for r in twice]
    # nothing paid twice: a candidate's instance request is answered once at most
    twice = conn.execute("SELECT task_ref, COUNT(*) FROM prompts WHERE kind = 'instances' AND "
                         "response IS NOT NULL GROUP BY task_ref HAVING COUNT(*) > 1").fetchall()
    assert not twice, [tuple(r) for r in twice]


def exported(run_dir: Path, fmt: str, tmp_path: Path) -> list[dict]:
    out = tmp_path / f"export.{fmt}"
    export_run(run_dir, fmt, out)
    text = out.read_text()
    # JSONL records end at "\n" only: str.splitlines would also cut a record at a U+2028 or
    # U+0085 its strings hold as they are
    return json.loads(text) if fmt == "alpaca" else [json.loads(x) for x in text.split("\n") if x]


GENERATION_ANSWERS = {
    "bare number": (f" {NEW[0]}\n10 {NEW[1]}\n11. {NEW[2]}", [], "completions"),
    "new line start": (f"\n10. {NEW[0]}\n11. {NEW[1]}", [], "completions"),
    "value on next line": (f" {NEW[0]}\n10.\n{NEW[1]}\n11.\n{NEW[2]}", [], "completions"),
    "### separators": (f" {NEW[0]}\n###\n10. Instruction: {NEW[1]}\n###\n11. Instruction: "
                       f"{NEW[2]}", [], "completions"),
    "labels under tasks": (f" {NEW[0]}\nInput: <noinput>\nOutput: Day one: the harbour.\n"
                           f"10. Output: nothing here\n11. {NEW[1]}",
                           ["not_an_instruction"], "completions"),
    "chat task headers": (f"Sure! Here are 7 new tasks:\n\n**Task 9:**\n**Instruction:** "
                          f"{NEW[0]}\n**Input:** None\n\n**Task 10:**\n**Instruction:** {NEW[1]}"
                          f"\n\nLet me know if you'd like more!", [], "chat"),
    "chat bullets": (f"Here are new tasks:\n- {NEW[0]}\n- {NEW[1]}\n- {NEW[2]}\n\nEnjoy!", [],
                     "chat"),
    "refusal item": (f"9. {NEW[0]}\n10. I'm sorry, but I can't help with that.\n11. {NEW[1]}",
                     ["refusal"], "chat"),
    # small models run the list on one line: one task was accepted holding all three
    "items on one line": (f" {NEW[0]} 10. {NEW[1]} 11. {NEW[2]}", [], "completions"),
    "chat items on one line": (f"1. {NEW[0]} 2. {NEW[1]} 3. {NEW[3]}", [], "chat"),
    # lettered, circled and keycap markers, and a table: each answer was unparseable, whole
    "lettered a)": (f"Here are new tasks:\n\na) {NEW[0]}\nb) {NEW[1]}\nc) {NEW[2]}\n\n"
                    "Let me know!", [], "chat"),
    "lettered (a)": (f"(a) {NEW[0]}\n(b) {NEW[1]}", [], "chat"),
    "lettered A.": (f"A. {NEW[0]}\nB. {NEW[1]}\nC. {NEW[3]}", [], "chat"),
    "lettered a.": (f"a. {NEW[1]}\nb. {NEW[2]}", [], "chat"),
    "circled": (f"① {NEW[0]}\n② {NEW[1]}\n③ {NEW[2]}", [], "chat"),
    "circled from 9": (f"⑨ {NEW[0]}\n⑩ {NEW[1]}", [], "chat"),
    "keycaps": (f"9\ufe0f\u20e3 {NEW[0]}\n1\ufe0f\u20e30\ufe0f\u20e3 {NEW[1]}\n"
                f"1\ufe0f\u20e31\ufe0f\u20e3 {NEW[2]}", [], "chat"),
    "table": (f"Here are the new tasks:\n\n| # | Instruction |\n|---|---|\n| 9 | {NEW[0]} |\n"
              f"| 10 | {NEW[1]} |\n| 11 | {NEW[3]} |\n\nLet me know if you want more!", [],
              "chat"),
    # roman numerals: each answer was unparseable, whole
    "roman i.": (f"Here are new tasks:\n\ni. {NEW[0]}\nii. {NEW[1]}\niii. {NEW[2]}\n\n"
                 "Let me know!", [], "chat"),
    "roman I.": (f"I. {NEW[0]}\nII. {NEW[1]}\nIII. {NEW[3]}", [], "chat"),
    "roman (iv)": (f"(i) {NEW[0]}\n(ii) {NEW[1]}\n(iii) {NEW[2]}\n(iv) {NEW[3]}", [], "chat"),
    "roman IV)": (f"**I)** {NEW[0]}\n**II)** {NEW[1]}\n**III)** {NEW[2]}\n**IV)** {NEW[3]}", [],
                  "chat"),
    # enclosed numbers and keycaps run together on one line: one task held them all
    "circled on one line": (f"① {NEW[0]} ② {NEW[1]} ③ {NEW[2]}", [], "chat"),
    "keycaps on one line": (f"1\ufe0f\u20e3 {NEW[0]} 2\ufe0f\u20e3 {NEW[1]}", [], "chat"),
    # letters in circles or brackets: each answer was unparseable, whole
    "circled letters": (f"Here are new tasks:\n\nⓐ {NEW[0]}\nⓑ {NEW[1]}\nⓒ {NEW[2]}\n\n"
                        "Let me know!", [], "chat"),
    "circled capitals": (f"Ⓐ {NEW[0]}\nⒷ {NEW[1]}\nⒸ {NEW[3]}", [], "chat"),
    "circled, no space": (f"ⓐ{NEW[1]}\nⓑ{NEW[2]}", [], "chat"),
    "bracketed letters": (f"⒜ {NEW[0]}\n⒝ {NEW[1]}", [], "chat"),
    # a lone "\r" line end (old Mac tool chains): the table was unparseable
    "table, lone CR line ends": (f"| # | Instruction |\r|---|---|\r| 9 | {NEW[0]} |\r"
                                 f"| 10 | {NEW[1]} |", [], "chat"),
    # the list in a code fence, with a sentence before and after: unparseable, whole
    "fenced list": (f"Here you go:\n```\n1. {NEW[0]}\n2. {NEW[1]}\n```\nI hope this helps!",
                    [], "chat"),
    "fenced markdown list, CRLF": (f"```markdown\r\n- **{NEW[2]}**\r\n- **{NEW[3]}**\r\n```",
                                   [], "chat"),
    "fenced list, completions": (f" {NEW[0]}\n```\n10. {NEW[1]}\n11. {NEW[2]}\n```", [],
                                 "completions"),
    # no-break spaces after the markers: unparseable (chat); two tasks glued into one
    # (completions)
    "no-break spaces": (f"9.\u00a0{NEW[0]}\n10.\u00a0{NEW[1]}\n\u00a0\u00a011.\u00a0{NEW[2]}", [],
                        "chat"),
    "no-break spaces, completions": (f" {NEW[0]}\n10.\u00a0{NEW[1]}\n11)\u202f{NEW[3]}", [],
                                     "completions"),
    # full-width colons after "Task 9": each task began with "：" and was rejected as
    # starting with a non-ASCII character
    "full-width colons": (f"**Task 9**：{NEW[0]}\nTask 10：{NEW[1]}", [], "chat"),
    "full-width colons, labels": (f"Instruction：{NEW[0]}\nInput：None\n\n**Instruction**："
                                  f"{NEW[3]}\nInput：(empty)", [], "chat"),
    # the mark after the bold number: ": Suggest ..." (rejected as starting with punctuation),
    # or the answer unparseable
    "bold number, mark after": (f"**Task 9**: {NEW[0]}\n**Task 10** - {NEW[1]}\n**11**: "
                                f"{NEW[2]}", [], "chat"),
    # the assistant's words on the last item's own line were part of its task
    "chatter on the last item's line": (f"9. {NEW[0]}\n10. {NEW[1]} I hope this helps! Let me "
                                        "know if you need more.", [], "chat"),
}


@pytest.mark.parametrize("name", list(GENERATION_ANSWERS))
def test_generation_layouts_through_the_engine(tmp_path, name):
    text, reasons, api = GENERATION_ANSWERS[name]
    expected = [n for n in NEW if n in text]
    with FakeOpenAI(script={"generate": [text]}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, len(expected), api=api,
                                          structured_output="off")
    assert finished.reason == "target"
    assert [t["instruction"] for t in machine(run_dir)] == expected
    assert [r["reason"] for r in rejections(run_dir)] == reasons
    assert_accounted(run_dir)
    rows = exported(run_dir, "self-instruct", tmp_path)
    assert [r["instruction"] for r in rows] == expected
    assert [r["reason"] for r in exported(run_dir, "rejections", tmp_path)
            if r["level"] == "candidate"] == reasons


def assert_chat_lists_give(tmp_path: Path, answers: list[str], expected: list[str]) -> None:
    """The chat generation `answers` run through the engine give the `expected` tasks, in the
    store and the export, and nothing rejected."""
    with FakeOpenAI(script={"generate": answers}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, len(expected), api="chat",
                                          structured_output="off")
    assert finished.reason == "target"
    assert [t["instruction"] for t in machine(run_dir)] == expected
    assert rejections(run_dir) == []
    assert_accounted(run_dir)
    assert [r["instruction"] for r in exported(run_dir, "self-instruct", tmp_path)] == expected


def test_lettered_lines_inside_items_stay_in_their_instruction(tmp_path):
    """A lettered sub-list under a numbered item, a line that starts "A. Lincoln", options
    inline ("a) ... b) ...") are the item's text; a lettered list of items is items, its own
    lettered sub-list is part of its item. The lettered list was unparseable."""
    numbered = (f"1. {NEW[0][:-1]}, choosing one of:\n   a) a museum\n   b) a harbour walk\n"
                f"2. {NEW[1][:-1]} for a child whose favourite president is\nA. Lincoln.\n"
                f"3. {NEW[2][:-1]}: a) formally b) warmly.")
    lettered = (f"a) {NEW[3][:-1]}, in one of these forms:\n\n   a. rhymed\n   b. unrhymed\n"
                "b) Describe how a lighthouse lens focuses light.")
    expected = [f"{NEW[0][:-1]}, choosing one of: a) a museum b) a harbour walk",
                f"{NEW[1][:-1]} for a child whose favourite president is A. Lincoln.",
                f"{NEW[2][:-1]}: a) formally b) warmly.",
                f"{NEW[3][:-1]}, in one of these forms: a. rhymed b. unrhymed",
                "Describe how a lighthouse lens focuses light."]
    assert_chat_lists_give(tmp_path, [numbered, lettered], expected)


def test_roman_lines_inside_items_stay_in_their_instruction(tmp_path):
    """Roman markers under a numbered item are its sub-list (after a blank line they were
    dropped, unrecorded); "I. M. Pei", "V. S. Naipaul" starting a line are the item's text; a
    roman list's own lettered sub-list and a lettered list's roman one are part of the item."""
    numbered = (f"1. {NEW[0][:-1]}, choosing one of:\n\n   i. a museum\n   ii. a harbour walk\n\n"
                f"2. {NEW[1][:-1]} in a building by\nI. M. Pei.\n3. {NEW[2][:-1]} for a fan of\n"
                "V. S. Naipaul.")
    roman = (f"I. {NEW[3][:-1]}, in one of these forms:\n\n   a) rhymed\n   b) unrhymed\n"
             "II. Describe how a lighthouse lens focuses light.")
    lettered = ("a) Plan a ferry trip to one of:\ni) the north island\nii) the south island\n"
                "b) Explain why harbour water looks green in summer.")
    expected = [f"{NEW[0][:-1]}, choosing one of: i. a museum ii. a harbour walk",
                f"{NEW[1][:-1]} in a building by I. M. Pei.",
                f"{NEW[2][:-1]} for a fan of V. S. Naipaul.",
                f"{NEW[3][:-1]}, in one of these forms: a) rhymed b) unrhymed",
                "Describe how a lighthouse lens focuses light.",
                "Plan a ferry trip to one of: i) the north island ii) the south island",
                "Explain why harbour water looks green in summer."]
    assert_chat_lists_give(tmp_path, [numbered, roman, lettered], expected)


def test_circled_letters_run_from_a_and_under_an_item_are_its_sub_list(tmp_path):
    """Circled letters follow the lettered lists' rules: a run from ⓐ in one style at one
    indent makes items; under a numbered item (or an item of another style) they are its
    sub-list; a circled letter that starts no run ("Ⓑ" alone) is text. The circled list was
    unparseable and the sub-list's lines were lost."""
    numbered = (f"1. {NEW[0][:-1]}, choosing one of:\n   ⓐ a museum\n   ⓑ a harbour walk\n"
                f"2. {NEW[1][:-1]} to a reader of\nⒷ magazine.")
    circled = (f"ⓐ {NEW[2][:-1]}, in one of these tones:\n   a) formal\n   b) warm\n"
               f"ⓑ {NEW[3][:-1]}, in one of these forms:\n   Ⓐ rhymed\n   Ⓑ unrhymed")
    expected = [f"{NEW[0][:-1]}, choosing one of: ⓐ a museum ⓑ a harbour walk",
                f"{NEW[1][:-1]} to a reader of Ⓑ magazine.",
                f"{NEW[2][:-1]}, in one of these tones: a) formal b) warm",
                f"{NEW[3][:-1]}, in one of these forms: Ⓐ rhymed Ⓑ unrhymed"]
    assert_chat_lists_give(tmp_path, [numbered, circled], expected)


def test_table_rows_the_parser_cannot_read_are_rejected_by_name(tmp_path):
    """A table's rows are items one each; a row with more cells than the header (an unescaped
    '|'), an empty row and a table without an instruction column are rejected with the reason,
    never merged or dropped. An escaped pipe and inline code stay in the instruction."""
    piped = "Explain what the shell command `sort \\| uniq -c` prints for a word list."
    table = (f"| # | Instruction | Input |\n| :-: | --- | --- |\n| 9 | {NEW[0]} | |\n"
             f"| 10 | {piped} | apple apple pear |\n| 11 | Explain a | b | c |\n| 12 | | x |")
    no_column = "| Category | Difficulty |\n|---|---|\n| Travel | Easy |"
    with FakeOpenAI(script={"generate": [table, no_column, f"9. {NEW[1]}"]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 3, api="chat",
                                          structured_output="off")
    assert finished.reason == "target"
    assert [t["instruction"] for t in machine(run_dir)] == [
        NEW[0], piped.replace("\\|", "|"), NEW[1]]
    got = [(r["reason"], r["raw"], r["detail"]) for r in rejections(run_dir)]
    assert [g[:2] for g in got] == [("unparseable", "| 11 | Explain a | b | c |"),
                                    ("not_an_instruction", "| 12 | | x |"),
                                    ("unparseable", no_column)]
    assert "4 cells under a header of 3" in got[0][2] and "\\|" in got[0][2]
    assert "no Instruction column" in got[2][2] and "Category, Difficulty" in got[2][2]
    assert_accounted(run_dir)


def test_steps_nested_in_an_item_stay_in_its_instruction(tmp_path):
    """A chat model's sub-steps under an item were tasks of their own ("A dinner spot near the
    harbour"), and the item was kept cut at "Include:"."""
    text = (f"Here are new tasks:\n\n1. {NEW[0]} Include:\n   1. A museum visit for the "
            f"children\n   2. A dinner spot near the harbour\n2. {NEW[1]}\n3. {NEW[2][:-1]}:\n"
            f"1. Once in a formal tone\n2. Once in a friendly tone\n4. {NEW[3]}")
    expected = [f"{NEW[0]} Include: 1. A museum visit for the children 2. A dinner spot near "
                "the harbour", NEW[1],
                f"{NEW[2][:-1]}: 1. Once in a formal tone 2. Once in a friendly tone", NEW[3]]
    assert_chat_lists_give(tmp_path, [text], expected)


def test_a_model_that_repeats_the_examples_keeps_its_new_items(tmp_path):
    # The prompt's 8 examples are sampled from the seeds: repeat them back, then add new items.
    def answer(prompt_examples):
        listed = "".join(f"{n}. {e}\n" for n, e in enumerate(prompt_examples, start=1))
        return listed + "".join(f"{9 + n}. {t}\n" for n, t in enumerate(NEW))

    with FakeOpenAI() as probe:
        run_dir, _, events = run_engine(tmp_path / "probe", probe, 1)
    conn = db(run_dir)
    shown = [e["instruction"] for e in json.loads(conn.execute(
        "SELECT examples FROM prompts WHERE kind = 'generate' ORDER BY id").fetchone()[0])]
    with FakeOpenAI(script={"generate": [answer(shown)]}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, len(NEW), api="chat",
                                          structured_output="off")
    assert [t["instruction"] for t in machine(run_dir)] == NEW  # none cut off
    assert [r["reason"] for r in rejections(run_dir)] == ["repeated_example"] * 8
    assert_accounted(run_dir)


def test_truncated_list_keeps_complete_items_and_names_the_cut_one(tmp_path):
    text = f" {NEW[0]}\n10. {NEW[1]}\n11. Explain how the tides wo"
    with FakeOpenAI(script={"generate": [{"text": text, "finish_reason": "length"}]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 2)
    assert [t["instruction"] for t in machine(run_dir)] == NEW[:2]
    [cut] = rejections(run_dir)
    assert cut["reason"] == "truncated" and cut["raw"] == "Explain how the tides wo"
    assert_accounted(run_dir)


def test_an_answer_a_content_filter_stopped_is_named_as_such_at_every_stage(tmp_path):
    """finish_reason "content_filter" (OpenAI, Azure): an empty answer was "unparseable: no
    list items; expected numbered lines", and the pause blamed --model and --api. The text so
    far is read like a cut answer (its complete items kept); what the filter cut is named."""
    stopped = {"text": "", "finish_reason": "content_filter"}
    with FakeOpenAI(script={
            "generate": [stopped, {"text": f" {NEW[0]}\n10. {NEW[1]}\n11. Explain how th",
                                   "finish_reason": "content_filter"}, f" {NEW[2]}",
                         f" {NEW[3]}"],
            "classify": [" No", stopped, " No", " No"],
            "instances": [stopped, "Output: A rainy walk by the harbour."]},
            repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1, structured_output="off")
    assert finished.reason == "target"
    got = {(r["reason"], r["candidate"]): r["detail"] for r in rejections(run_dir)
           if r["reason"] != "surplus"}
    said = "the endpoint's content filter stopped the answer (finish_reason content_filter)"
    assert got == {("content_filter", "(empty answer)"): said,  # a generation answer
                   ("content_filter", "Explain how th"): said,  # the cut item of the next one
                   ("no_valid_instances", NEW[0]): "no usable example (content filter 1)",
                   ("content_filter", NEW[1]): said}  # its classification
    [dropped] = rejections(run_dir, "instance")
    assert (dropped["reason"], dropped["detail"]) == ("content_filter", said)
    assert [t["instruction"] for t in machine(run_dir)] == [NEW[2]]
    assert_accounted(run_dir)


def test_unparseable_and_refusal_answers_are_recorded_with_the_raw_answer(tmp_path):
    answers = ["I'm sorry, but I can't help with that.", "The weather is lovely today.",
               f"9. {NEW[0]}"]
    with FakeOpenAI(script={"generate": answers}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1, api="chat",
                                          structured_output="off")
    got = [(r["reason"], r["raw"]) for r in rejections(run_dir)]
    assert got == [("refusal", answers[0]), ("unparseable", answers[1])]
    assert_accounted(run_dir)


INSTANCE_ANSWERS = {
    "numbered pairs": ("1. Input: A long wet weekend.\n   Output: Visit the museum.\n"
                       "2. Input: A short dry weekend.\n   Output: Walk the cliffs.",
                       [("A long wet weekend.", "Visit the museum."),
                        ("A short dry weekend.", "Walk the cliffs.")], []),
    "bulleted one line": ("- Input: rain Output: Museum day.\n- Input: sun | Output: Beach day.",
                          [("rain", "Museum day."), ("sun", "Beach day.")], []),
    "placeholders": ("Input: <Picture Attached>\nOutput: A harbour.\nExample 2\nInput: No input."
                     "\nOutput: <No Output>\nExample 3\nInput: https://example.com/trip\nOutput:"
                     " A plan.\nExample 4\nInput: (none)\nOutput: Visit the lighthouse.",
                     [("", "Visit the lighthouse.")],
                     ["unusable_input", "placeholder_output", "unusable_input"]),
    "misspelled label": ("Inptu: A wet day\nOutput: Museum.\nExample 2\nInput: A dry day\n"
                         "Output: Cliffs.", [("A dry day", "Cliffs.")], ["unlabeled_input"]),
    # an output's own list of task lines: was cut at its first line and kept as "Here is a plan:"
    "a to-do list in the output": (
        "Input: Move house next month.\nOutput: Here is a plan:\nTask 1: Book the movers.\n"
        "Task 2: Pack the kitchen.\n\nTask 3: Change the address.\nExample 2\nInput: Paint a "
        "room.\nOutput: Task 1: Buy paint.\nTask 2: Tape the edges.",
        [("Move house next month.", "Here is a plan:\nTask 1: Book the movers.\nTask 2: Pack "
          "the kitchen.\n\nTask 3: Change the address."),
         ("Paint a room.", "Task 1: Buy paint.\nTask 2: Tape the edges.")], []),
    "runs on into a list of new tasks": ("Input: (none)\nOutput: Day one: the harbour.\n\n"
                                         "Task 2: Write a poem.\nTask 3: Name a color.",
                                         [("", "Day one: the harbour.")], []),
    # a lone "\r" line end: the first example's output held the second example
    "lone CR line ends": ("Input: A long wet weekend.\rOutput: Visit the museum.\rExample 2\r"
                          "Input: A short dry weekend.\rOutput: Walk the cliffs.",
                          [("A long wet weekend.", "Visit the museum."),
                           ("A short dry weekend.", "Walk the cliffs.")], []),
    "runs into the next task": ("Input: (none)\nOutput: Day one: the harbour.\n###\nTask 2: "
                                "Write a poem.\nOutput: x", [("", "Day one: the harbour.")], []),
    # a no-break space after a marker or before a colon, a full-width colon after a label:
    # each example was unparseable
    "no-break spaces and full-width colons": (
        "Input：A long wet weekend.\nOutput\u00a0: Visit the museum.\nExample 2\n"
        "1.\u00a0Input: A short dry weekend.\n   Output：Walk the cliffs.",
        [("A long wet weekend.", "Visit the museum."),
         ("A short dry weekend.", "Walk the cliffs.")], []),
    # each example in a fence of its own: the closing fence ended each output
    "a fence around each example": ("```\nInput: A long wet weekend.\nOutput: Visit the museum.\n"
                                    "```\nExample 2\n```text\nInput: (none)\nOutput:\n```python\n"
                                    "print('cliffs')\n```\n```",
                                    [("A long wet weekend.", "Visit the museum."),
                                     ("", "```python\nprint('cliffs')\n```")], []),
    # "no input" in markdown emphasis was an input
    "emphasised no input": ("Input: _(none)_\nOutput: Visit the lighthouse.\nExample 2\n"
                            "Input: __N/A__\nOutput: _(no output)_",
                            [("", "Visit the lighthouse.")], ["placeholder_output"]),
    # "no input" said as a sentence was kept as the input
    "no input as a sentence": ("Input: There is no input for this task.\nOutput: Visit the "
                               "lighthouse.\nExample 2\nInput: This task does not require any "
                               "input.\nOutput: Walk the cliffs.",
                               [("", "Visit the lighthouse."), ("", "Walk the cliffs.")], []),
}


@pytest.mark.parametrize("name", list(INSTANCE_ANSWERS))
def test_instance_layouts_through_the_engine(tmp_path, name):
    text, expected, dropped = INSTANCE_ANSWERS[name]
    with FakeOpenAI(script={"generate": [f" {NEW[0]}"], "classify": [" No"],
                            "instances": [text]}, repeat_last=False) as server:
        # completions: the prompt ends with "Example 1\n", so the answer starts inside it
        run_dir, finished, _ = run_engine(tmp_path, server, 1)
    [task] = machine(run_dir)
    assert [(i["input"], i["output"]) for i in json.loads(task["instances"])] == expected
    assert [r["reason"] for r in rejections(run_dir, "instance")] == dropped
    assert all(r["task_id"] == task["id"] for r in rejections(run_dir, "instance"))
    rows = exported(run_dir, "alpaca", tmp_path)
    assert [(r["input"], r["output"]) for r in rows] == expected
    assert_accounted(run_dir)


CHAT_ANSWERS = {
    # the task repeated first lost the whole answer; the closing remark joined the last output
    "task first, remarks last": (
        "No", f"Task: {NEW[0]}\n\nExample 1\nInput: (none)\nOutput: Saturday: the harbour.\n\n"
              "Example 2\nInput: two children\nOutput: The aquarium.\n\nThese examples show "
              "plans for different visitors. Let me know if you need more examples!",
        [("", "Saturday: the harbour."), ("two children", "The aquarium.")]),
    # a number alone under its label was an example's number: an example with an empty input
    "numbers under labels": ("No", "Example 1\nInput:\n144\nOutput:\n12\n\nExample 2\nInput:\n"
                                   "81\nOutput: 9", [("144", "12"), ("81", "9")]),
    # lettered and circled pairs: the first input joined no example, and the next example's
    # "b) Input: ..." line ran into the first output
    "lettered pairs": ("No", "a) Input: two children\n   Output: The aquarium.\n"
                             "b) Input: (none)\n   Output: Saturday: the harbour.",
                       [("two children", "The aquarium."), ("", "Saturday: the harbour.")]),
    "circled pairs": ("No", "① Input: two children\nOutput: The aquarium.\n\n② Input: "
                            "(none)\nOutput: Saturday: the harbour.",
                      [("two children", "The aquarium."), ("", "Saturday: the harbour.")]),
    "keycap pairs": ("No", "1\ufe0f\u20e3 Input: two children\nOutput: The aquarium.\n"
                           "2\ufe0f\u20e3 Input: (none)\nOutput: Saturday: the harbour.",
                     [("two children", "The aquarium."), ("", "Saturday: the harbour.")]),
    # roman pairs: the second example's "ii) Input: ..." line ran into the first output
    "roman pairs": ("No", "i) Input: two children\n   Output: The aquarium.\n"
                          "ii) Input: (none)\n   Output: Saturday: the harbour.",
                    [("two children", "The aquarium."), ("", "Saturday: the harbour.")]),
    "roman pairs, output first": ("Yes", "(I) Class label: Positive\nInput: I loved it.\n"
                                         "(II) Class label: Negative\nInput: It rained.",
                                  [("I loved it.", "Positive"), ("It rained.", "Negative")]),
    # a lone "\r" line end: a table, and blocks
    "table, lone CR line ends": ("No", "| Input | Output |\r|---|---|\r| two children | The "
                                       "aquarium. |\r| (none) | Saturday: the harbour. |",
                                 [("two children", "The aquarium."),
                                  ("", "Saturday: the harbour.")]),
    "output first, lone CR line ends": ("Yes", "Class label: Positive\rInput: I loved it.\r\r"
                                               "Class label: Negative\rInput: It rained.",
                                        [("I loved it.", "Positive"),
                                         ("It rained.", "Negative")]),
    # a table: each row an example (escaped pipes and inline code stay in the cell's text)
    "table": ("No", "Sure, here are examples:\n\n| Input | Output |\n|-------|--------|\n"
                    "| two children | The aquarium. |\n| (none) | Saturday: the harbour. |\n"
                    "| a list of `a \\| b` pipes | Run `a \\| b` in the harbour office. |\n\n"
                    "These examples show plans for different visitors.",
              [("two children", "The aquarium."), ("", "Saturday: the harbour."),
               ("a list of `a | b` pipes", "Run `a | b` in the harbour office.")]),
    "table, output first": ("Yes", "| Class label | Input |\n| --- | --- |\n| Positive | I "
                                   "loved this village. |\n| Negative | It rained all day. |",
                            [("I loved this village.", "Positive"),
                             ("It rained all day.", "Negative")]),
    # two-column tables whose columns are not named Input/Output: each was rejected as a
    # table with no Input column
    "table, sentence and mood": ("Yes", "| Sentence | Mood |\n|---|---|\n| I loved this "
                                        "village. | Positive |\n| It rained all day. | "
                                        "Negative |",
                                 [("I loved this village.", "Positive"),
                                  ("It rained all day.", "Negative")]),
    "table, #, text and category": ("Yes", "Here are examples:\n\n| # | Text | Category |\n"
                                           "|:-:|---|---|\n| 1 | The harbour ferry was late "
                                           "again. | **Complaint** |\n| 2 | Thanks for the tour! "
                                           "| Praise |",
                                    [("The harbour ferry was late again.", "Complaint"),
                                     ("Thanks for the tour!", "Praise")]),
    "table, labels first": ("Yes", "| Mood | Sentence |\n|---|---|\n| Positive | I loved this "
                                   "village by the sea. |\n| Negative | It rained all day and "
                                   "the museum was shut. |",
                            [("I loved this village by the sea.", "Positive"),
                             ("It rained all day and the museum was shut.", "Negative")]),
    "table, word and part of speech": ("Yes", "| Word | Part of speech |\n|---|---|\n| harbour "
                                              "| noun |\n| sail | verb |",
                                       [("harbour", "noun"), ("sail", "verb")]),
    "table, question and answer": ("No", "| Question | Answer |\n|---|---|\n| Where do the "
                                         "ferries leave from? | The north pier. |\n| When does "
                                         "the museum open? | At nine. |",
                                   [("Where do the ferries leave from?", "The north pier."),
                                    ("When does the museum open?", "At nine.")]),
    "table, text and summary": ("No", "| Text | Summary |\n|---|---|\n| The village has a "
                                      "harbour, a museum and two bakeries. | A small harbour "
                                      "village. |",
                                [("The village has a harbour, a museum and two bakeries.",
                                  "A small harbour village.")]),
    "table, English and French": ("No", "| English | French |\n|---|---|\n| The harbour | Le "
                                        "port |\n| The museum | Le musée |",
                                  [("The harbour", "Le port"), ("The museum", "Le musée")]),
    "table, summary first": ("No", "| Summary | Original text |\n|---|---|\n| Rain. | It "
                                   "rained all weekend in the village. |",
                             [("It rained all weekend in the village.", "Rain.")]),
    # a lettered or roman line starting another task: it ran into the output, and the next
    # task's example became this task's
    "runs on into a lettered task": ("No", "Input: (none)\nOutput: Day one: the harbour.\n\n"
                                           "b) Instruction: Write a poem about rain.\nInput: "
                                           "(none)\nOutput: Rain taps the roof.",
                                     [("", "Day one: the harbour.")]),
    "runs on into a roman task": ("No", "i) Input: two children\n   Output: The aquarium.\n"
                                        "(ii) Task: Write a poem about rain.\nInput: (none)\n"
                                        "Output: Rain taps the roof.",
                                  [("two children", "The aquarium.")]),
    "runs on into a capital-lettered task": ("No", "Example 1\nInput: two children\nOutput: The"
                                                   " aquarium.\nB. **Instruction:** Name a "
                                                   "colour.\nOutput: Red.",
                                             [("two children", "The aquarium.")]),
    "runs on into a circled task": ("No", "Input: (none)\nOutput: Day one: the harbour.\n"
                                          "ⓑ Instruction: Name a colour.\nOutput: Red.",
                                    [("", "Day one: the harbour.")]),
    # circled-letter pairs: the pairs were read, but "ⓑ Input:" ran into the first output
    "circled-letter pairs": ("No", "ⓐ Input: two children\nOutput: The aquarium.\nⓑ Input: "
                                   "(none)\nOutput: Saturday: the harbour.",
                             [("two children", "The aquarium."),
                              ("", "Saturday: the harbour.")]),
    # roman-looking marks that are no numeral or start no run are an output's text: they cut
    # the output into made-up examples
    "roman marks out of a run": ("No", "Input: a loudspeaker\nOutput: Check the wiring as "
                                       "in section\nxii) Input: the power line, then the "
                                       "speaker line.\n\nExample 2\nInput: a lamp\nOutput: "
                                       "Check the bulb:\niiii) Input: the socket\nvix) Output: "
                                       "the fuse",
                                 [("a loudspeaker", "Check the wiring as in section\nxii) "
                                   "Input: the power line, then the speaker line."),
                                  ("a lamp", "Check the bulb:\niiii) Input: the socket\nvix) "
                                   "Output: the fuse")]),
    # the whole answer in a fence, a sentence around it: the fences were an example of their
    # own (unparseable) and the end of the last output, "I hope this helps!" after it
    "in a fence, chatter around it": (
        "No", "Sure! Here are two examples:\n\n```\nExample 1\nInput: two children\nOutput: The "
              "aquarium.\n\nExample 2\nInput: (none)\nOutput: Saturday: the harbour.\n```\n\n"
              "I hope this helps!",
        [("two children", "The aquarium."), ("", "Saturday: the harbour.")]),
    "chatter after the last example": (
        "No", "Example 1\r\nInput: N/A\r\nOutput: The aquarium.\r\n\r\nI hope these help! Is "
              "there anything else you need?", [("", "The aquarium.")]),
    # JSON that is one example, or a list under another key: unparseable
    "JSON, one example": ("No", '{"input": "two children", "output": "The aquarium."}',
                          [("two children", "The aquarium.")]),
    "JSON, another key": ("No", 'Here you go:\n```json\n{"data": [{"Input": null, "Output": '
                                '"Saturday: the harbour."}]}\n```',
                          [("", "Saturday: the harbour.")]),
    # labels in quotes or with a final dot were labels of their own
    "quoted labels": ("Yes", 'Class label: "Positive"\nInput: I loved it.\n\nClass label：'
                             "Negative.\nInput：It rained.\n\nClass label: “U.S.”\nInput: "
                             "Washington.",
                      [("I loved it.", "Positive"), ("It rained.", "Negative"),
                       ("Washington.", "U.S.")]),
    "quoted labels, JSON": ("Yes", '[{"label": "\\"Positive\\"", "input": "I loved it."}]',
                            [("I loved it.", "Positive")]),
    # two inputs under one label were one input
    "inputs under a label": ("Yes", "Class label: Positive\nInput: I loved this village.\n"
                                    "Input: Best weekend all year.\n\nClass label: Negative\n"
                                    "Input: It rained all day.",
                             [("I loved this village.", "Positive"),
                              ("Best weekend all year.", "Positive"),
                              ("It rained all day.", "Negative")]),
}


@pytest.mark.parametrize("name", list(CHAT_ANSWERS))
def test_chat_instance_layouts_through_the_engine(tmp_path, name):
    classification, text, expected = CHAT_ANSWERS[name]
    with FakeOpenAI(script={"generate": [f"1. {NEW[0]}"], "classify": [classification],
                            "instances": [text]}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1, api="chat",
                                          structured_output="off")
    [task] = machine(run_dir)
    assert [(i["input"], i["output"]) for i in json.loads(task["instances"])] == expected
    assert rejections(run_dir, "instance") == []
    assert [(r["input"], r["output"]) for r in exported(run_dir, "alpaca", tmp_path)] == expected
    assert_accounted(run_dir)


def test_tables_whose_columns_cannot_be_told_apart_are_rejected_by_name(tmp_path):
    """A two-column table is read as examples only when its columns say which is the input
    and which the output (or, for a classification task, which holds the labels); any other
    table is rejected naming its columns and why, and a table inside an output stays the
    output's."""
    ambiguous = "| Country | Capital |\n|---|---|\n| France | Paris |"
    mood = "| Sentence | Mood |\n|---|---|\n| I loved it. | Positive |"  # not classification
    three = ("| Text | Mood | Reason |\n|---|---|---|\n| I loved it. | Positive | It says "
             "loved. |")
    long_cells = ("| Review | Comment |\n|---|---|\n| I loved the harbour and the museum and "
                  "the bakery. | The reviewer enjoyed every part of the visit to the village. |")
    in_output = ("Input: the ferry times\nOutput:\n| Question | Answer |\n|---|---|\n"
                 "| When? | At nine. |")
    generate = [f"1. {n}" for n in (*NEW, "Describe how a lighthouse lens focuses light.")]
    with FakeOpenAI(script={"generate": generate, "classify": ["No", "No", "No", "Yes", "No"],
                            "instances": [ambiguous, mood, three, long_cells, in_output]},
                    repeat_last=False) as server:
        run_dir, _, _ = run_engine(tmp_path, server, 1, api="chat", structured_output="off")
    [task] = machine(run_dir)
    assert [(i["input"], i["output"]) for i in json.loads(task["instances"])] == [
        ("the ferry times", "| Question | Answer |\n|---|---|\n| When? | At nine. |")]
    got = [(r["reason"], r["raw"], r["detail"]) for r in rejections(run_dir, "instance")]
    assert [g[:2] for g in got] == [("unparseable", ambiguous), ("unparseable", mood),
                                    ("unparseable", three), ("unparseable", long_cells)]
    assert "columns: Country, Capital" in got[0][2] and "which is the input" in got[0][2]
    assert "columns: Sentence, Mood" in got[1][2]
    assert "3 columns" in got[2][2]
    assert "short class labels" in got[3][2] and "'Class label: ...'" in got[3][2]
    assert_accounted(run_dir)


def test_titled_and_fenced_chat_lists_through_the_engine(tmp_path):
    """Titles were kept in the instructions; fenced JSON with a sentence around it was
    unparseable; ten items numbered from 1 lost items 1-8 as repeats of the examples."""
    titled = (f"Here are new tasks:\n\n1. **Trip Planning**: {NEW[0]}\n2. **Baking** - {NEW[1]}\n"
              + "".join(f"{n}. Write a short poem about the colour number {n}.\n"
                        for n in range(3, 11)))
    fenced = ('Here they are in JSON:\n\n```json\n{"tasks": [{"instruction": "' + NEW[2] + '"}, '
              '{"instruction": "' + NEW[3] + '"}]}\n```\n\nLet me know if you want more!')
    expected = [NEW[0], NEW[1], *(f"Write a short poem about the colour number {n}."
                                  for n in range(3, 11)), NEW[2], NEW[3]]
    with FakeOpenAI(script={"generate": [titled, fenced]}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, len(expected), api="chat",
                                          structured_output="off", threshold=0.95)
    assert finished.reason == "target"
    assert [t["instruction"] for t in machine(run_dir)] == expected
    assert rejections(run_dir) == []
    assert_accounted(run_dir)


@pytest.mark.parametrize("answer, detail", [
    ("Here is a lovely poem about the sea.", "expected 'Input: ...' then 'Output: ...'"),
    # JSON holding no examples was said as text "without 'Input:'/'Output:' labels"
    ('{"task": "trip", "notes": {"days": 2}}', "a JSON object (keys 'task', 'notes') with no "
     "examples; expected a list of objects with 'input' and 'output'"),
])
def test_an_answer_without_usable_instances_rejects_the_task_with_the_layout(tmp_path, answer,
                                                                             detail):
    with FakeOpenAI(script={"generate": [f" {NEW[0]}", f" {NEW[1]}"], "classify": [" No"],
                            "instances": [answer, "Input: x\nOutput: y"]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1)
    [rejected] = rejections(run_dir)
    assert rejected["reason"] == "no_valid_instances"
    assert "unparseable 1" in rejected["detail"]
    [dropped] = rejections(run_dir, "instance")
    assert detail in dropped["detail"]
    assert [t["instruction"] for t in machine(run_dir)] == [NEW[1]]
    assert_accounted(run_dir)


@pytest.mark.parametrize("answer, is_cls", [
    ("Classification: Yes", True), ("Yes, because the labels are fixed.", True),
    ("**No**", False), ("No.", False),
    # the task repeated first, then a lone "\r" line end: it was no answer
    (f"Task: {NEW[0]}\rClassification: Yes", True),
    ("The task names its labels.\r</think>\rYes", True),
    # hedged, casual and Chinese verdicts were unknown_classification: the candidate lost
    ("Definitely yes.", True), ("Probably not.", False), ("Nope", False), ("是的", True),
])
def test_classification_answers_in_the_forms_models_give(tmp_path, answer, is_cls):
    instances = "Class label: Positive\nInput: Great!\nClass label: Negative\nInput: Awful." \
        if is_cls else "Input: (none)\nOutput: A fine day out."
    with FakeOpenAI(script={"generate": [f"9. {NEW[0]}"], "classify": [answer],
                            "instances": [instances]}, repeat_last=False) as server:
        run_dir, _, _ = run_engine(tmp_path, server, 1, api="chat", structured_output="off")
    [task] = machine(run_dir)
    assert bool(task["is_classification"]) is is_cls
    assert_accounted(run_dir)


def test_an_unclear_classification_is_asked_again_when_cut_then_rejected(tmp_path):
    with FakeOpenAI(script={"generate": [f" {NEW[0]}", f" {NEW[1]}"],
                            "classify": [{"text": " It", "finish_reason": "length"},
                                         " It depends", " No"]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1)
        asked = [body["max_tokens"] for _, kind, body in server.log if kind == "classify"]
    assert asked == [3, 32, 3]  # the cut answer was asked again with room to finish
    [rejected] = rejections(run_dir)
    assert rejected["reason"] == "unknown_classification"
    assert "It depends" in rejected["detail"] and rejected["candidate"] == NEW[0]
    assert [t["instruction"] for t in machine(run_dir)] == [NEW[1]]
    assert_accounted(run_dir)


def test_a_label_outside_the_tasks_labels_is_dropped(tmp_path):
    instruction = "Classify the mood of the harbour diary entry as calm, stormy or foggy."
    with FakeOpenAI(script={"generate": [f" {instruction}"], "classify": [" Yes"],
                            "instances": [" Calm\nInput: Still water.\nClass label: Sunny\n"
                                          "Input: Bright.\nClass label: Stormy\nInput: Waves."]},
                    repeat_last=False) as server:
        run_dir, _, _ = run_engine(tmp_path, server, 1)
    [task] = machine(run_dir)
    assert [i["output"] for i in json.loads(task["instances"])] == ["Calm", "Stormy"]
    assert [r["reason"] for r in rejections(run_dir, "instance")] == ["label_not_in_task"]


def test_cjk_instructions_are_counted_by_the_unicode_tokenizer(tmp_path):
    zh = ["请为一个下雨的周末安排三个室内活动。", "用一句话解释为什么天空是蓝色的。"]
    with FakeOpenAI(script={"generate": ["\n".join(f"{9 + n}. {t}" for n, t in enumerate(zh))]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path / "unicode", server, 2, api="chat",
                                          structured_output="off", tokenizer="unicode",
                                          filter_non_ascii=False)
    assert [t["instruction"] for t in machine(run_dir)] == zh


def test_labels_a_chinese_model_translates_are_read(tmp_path):
    """"任务 9：", "输入：", "输出：", "类别标签：", "示例 2" (the prompt's labels in Chinese), "无"
    as the input and "是" as the verdict: the list was unparseable, the examples too."""
    zh = ["请为一个下雨的周末安排三个室内活动。", "把下面的评论分为正面或负面。"]
    generation = f"任务 9：{zh[0]}\n任务 10：{zh[1]}"
    with FakeOpenAI(script={"generate": [generation], "classify": ["否", "是"],
                            "instances": ["示例 1\n输入：无\n输出：去博物馆。\n\n示例 2\n"
                                          "输入：两个孩子\n输出：在家搭积木。",
                                          "类别标签：正面\n输入：太好了！\n类别标签：负面\n"
                                          "输入：太糟了。"]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 2, api="chat",
                                          structured_output="off", tokenizer="unicode",
                                          filter_non_ascii=False)
    tasks = machine(run_dir)
    assert [(t["instruction"], bool(t["is_classification"])) for t in tasks] == [
        (zh[0], False), (zh[1], True)]
    assert [(i["input"], i["output"]) for i in json.loads(tasks[0]["instances"])] == [
        ("", "去博物馆。"), ("两个孩子", "在家搭积木。")]
    assert [(i["input"], i["output"]) for i in json.loads(tasks[1]["instances"])] == [
        ("太好了！", "正面"), ("太糟了。", "负面")]
    assert rejections(run_dir) == [] and rejections(run_dir, "instance") == []
    rows = exported(run_dir, "alpaca", tmp_path)
    assert [(r["instruction"], r["input"]) for r in rows][:2] == [(zh[0], ""), (zh[0], "两个孩子")]
    assert_accounted(run_dir)


def test_surplus_is_never_started_and_finished_work_is_kept(tmp_path):
    with FakeOpenAI() as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 5, concurrency=8,
                                          prompts_per_round=8)
    conn = db(run_dir)
    assert finished.reason == "target"
    surplus = conn.execute("SELECT COUNT(*) FROM rejections WHERE reason = 'surplus'").fetchone()
    assert surplus[0] > 0  # a round of 8 prompts gives more candidates than 5 tasks need
    # a surplus candidate was never sent for classification or instances
    refs = {r[0] for r in conn.execute("SELECT task_ref FROM prompts WHERE task_ref IS NOT NULL")}
    assert not refs & {r[0] for r in conn.execute(
        "SELECT task_id FROM rejections WHERE reason = 'surplus'")}
    assert len(machine(run_dir)) >= 5
    assert_accounted(run_dir)


def test_structured_output_is_detected_once_and_recorded(tmp_path):
    for mode, expected in (("json", "json_schema"), ("reject", "text"), ("ignore", "text")):
        with FakeOpenAI(structured=mode) as server:
            run_dir, finished, events = run_engine(tmp_path / mode, server, 5, api="chat")
            formats = [("response_format" in body) for _, _, body in server.log]
        assert finished.reason == "target", mode
        store = RunStore(run_dir, readonly=True)
        assert store.get_meta("structured_output") == expected
        store.close()
        if mode == "json":
            assert all(formats[i] for i, (_, kind, _) in enumerate(server.log)
                       if kind != "classify")
        else:  # asked once (or until the first answer showed it was ignored), then plain text
            assert formats.count(True) <= 2 and not formats[-1]
        assert_accounted(run_dir)


def test_a_refusal_in_a_classification_answer_never_becomes_a_label(tmp_path):
    refusal = ("Example 1\nInput: (none)\nOutput: I'm sorry, but I can't help with that.\n\n"
               "Example 2\nInput: (none)\nOutput: I'm sorry, but I can't help with that.")
    with FakeOpenAI(script={"generate": [f" {NEW[0]}", f" {NEW[1]}"],
                            "classify": [" Yes", " Yes"],
                            "instances": [refusal, " Calm\nInput: Still water."]},
                    repeat_last=False) as server:
        run_dir, _, _ = run_engine(tmp_path, server, 1)
    [rejected] = [r for r in rejections(run_dir) if r["reason"] == "no_valid_instances"]
    assert rejected["candidate"] == NEW[0] and "refusal 2" in rejected["detail"]
    [task] = machine(run_dir)
    assert json.loads(task["instances"]) == [{"input": "Still water.", "output": "Calm"}]
    assert_accounted(run_dir)


def test_a_reasoning_model_s_thinking_is_never_read_as_its_answer(tmp_path):
    """Qwen3/DeepSeek-R1 style: "<think>...</think>" before each answer (or only the closing tag,
    the template having opened it), a list inside the thinking that must not become tasks, and
    answers cut off inside the thinking, inline or as vLLM's reasoning_content with no content.
    The cut ones are rejected as truncated with the fix, once each: never retried."""
    musing = ("<think>\nThe user wants new tasks. Maybe:\n1. Write a poem about cats.\n"
              "2. Summarize the news.\nInput: none\nOutput: x\nLet me write them.\n</think>\n\n")
    generate = [
        {"text": musing + f"1. {NEW[0]}\n2. {NEW[1]}"},
        {"text": "<think>\nI should list tasks such as\n1. Draft an email to a landlord",
         "finish_reason": "length"},
        {"text": None, "reasoning": "Hmm, tasks about travel, and cooking, and", "finish_reason":
         "length"},
        {"text": f"Okay, tasks.\n3. Bake a cake.\n</think>\n9. {NEW[2]}"},
    ]
    cut_short = {"text": "<THINK>It could be a label task, I am not sure whether",
                 "finish_reason": "length"}
    # NEW[0]: thinks, then answers; NEW[1]: cut while thinking, and again with more tokens
    classify = [{"text": "<think>\nIs it a classification? No.\n</think>\n\nNo"},
                cut_short, cut_short, "No"]
    instances = [{"text": musing + "Input: A rainy day.\nOutput: Visit the aquarium."},
                 {"text": musing + "Input: (none)\nOutput: Sourdough rises slowly."}]
    with FakeOpenAI(script={"generate": generate, "classify": classify,
                            "instances": instances}, repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 2, api="chat",
                                          structured_output="off")
        sent = dict(server.by_kind)
    assert finished.reason == "target"
    got = {t["instruction"]: json.loads(t["instances"]) for t in machine(run_dir)}
    assert set(got) == {NEW[0], NEW[2]}  # nothing from the thinking
    assert got[NEW[0]] == [{"input": "A rainy day.", "output": "Visit the aquarium."}]
    cut = [r for r in rejections(run_dir) if r["reason"] == "truncated"]
    assert len(cut) == 2 and all("only the model's reasoning" in r["detail"] for r in cut)
    assert cut[1]["raw"].startswith("<think>Hmm, tasks about travel")  # the reasoning is kept
    unclear = [r for r in rejections(run_dir) if r["reason"] == "unknown_classification"]
    assert [(r["candidate"], r["detail"][:40]) for r in unclear] == [
        (NEW[1], "the answer is only the model's reasoning")]
    conn = db(run_dir)
    # no reasoning-only answer was asked again as malformed; the cut classification was asked
    # once more with more tokens, by design
    assert conn.execute("SELECT COUNT(*) FROM retries").fetchone()[0] == 0
    assert sent["classify"] == 4
    assert sent["generate"] == conn.execute(
        "SELECT COUNT(*) FROM prompts WHERE kind = 'generate'").fetchone()[0] == 4
    assert_accounted(run_dir)
    rows = exported(run_dir, "alpaca", tmp_path)
    assert not any("think" in json.dumps(r).lower() for r in rows)


def test_reasoning_apart_with_blank_content_is_named_as_reasoning_only(tmp_path):
    """A server that returns the thinking as reasoning_content and the content as the blank
    lines after it ("\n\n"): the answer was rejected as unparseable "(empty answer)", the
    reasoning lost; it is the reasoning, named with the fix, as with a null content."""
    generate = [{"text": "\n\n", "reasoning": "Tasks about travel, and baking, and",
                 "finish_reason": "length"}, f"9. {NEW[0]}"]
    with FakeOpenAI(script={"generate": generate, "classify": ["No"],
                            "instances": ["Input: (none)\nOutput: The harbour."]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 1, api="chat",
                                          structured_output="off")
    assert finished.reason == "target"
    [cut] = rejections(run_dir)
    assert cut["reason"] == "truncated" and "only the model's reasoning" in cut["detail"]
    assert cut["raw"] == "<think>Tasks about travel, and baking, and"
    assert [t["instruction"] for t in machine(run_dir)] == [NEW[0]]
    assert_accounted(run_dir)


def test_a_thinking_model_s_json_answers_keep_structured_output_on(tmp_path):
    """Structured output is detected from the first answers: JSON after a <think> part is JSON."""
    tasks = json.dumps({"tasks": [{"instruction": NEW[0]}, {"instruction": NEW[1]}]})
    with FakeOpenAI(script={"generate": [f"<think>\nJSON it is.\n</think>\n{tasks}"],
                            "classify": ["<think>no labels</think>\nNo"]},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 2, api="chat")
    assert finished.reason == "target"
    assert {t["instruction"] for t in machine(run_dir)} == {NEW[0], NEW[1]}
    store = RunStore(run_dir, readonly=True)
    assert store.get_meta("structured_output") == "json_schema"
    store.close()
    assert_accounted(run_dir)


def test_the_last_rounds_reserve_for_the_share_of_candidates_that_fail(tmp_path):
    """Every other instance answer is unusable: each reservation becomes a task half the time.
    Counting reservations as tasks ended the run with a chain of ever smaller rounds, each
    started once the last one's failures were known (13-14 rounds here, 8-9 now); expecting the
    share seen so far reserves enough at once. No request more is paid for, the target is met,
    and every candidate is accounted for."""
    bad = "Input: <noinput>\nOutput: <No Output>"
    with FakeOpenAI(latency=0.02, script={"instances": [{}, bad] * 1000}) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 120, concurrency=16,
                                          prompts_per_round=0)
    assert finished.accepted >= 120
    conn = db(run_dir)
    rounds = conn.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
    requests = conn.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
    assert rounds <= 10, rounds
    assert requests <= 560, requests  # 541 when every reservation counted as a task
    assert_accounted(run_dir)


def test_the_last_rounds_are_sized_for_the_falling_yield_of_the_latest_rounds(tmp_path):
    """Rounds 1-4 of a --concurrency 1024 run against the fake fleet (answered prompts,
    accepted): the yield falls as the pool fills. Round 6, created once round 4 is final, is
    sized for the latest rounds' yield and its fall (round 6 then accepted 0.99 per prompt),
    not the run's average (2.0), which asked for half of what was needed."""
    from tui_helpers import new_run

    store, config = new_run(tmp_path / "run", "http://127.0.0.1:9/v1", target=10_000,
                            concurrency=1024)
    engine = Engine(store, config)
    rounds = [(1024, 2955), (1007, 1924), (1024, 1594), (1024, 1369)]
    prompts = accepted = 0
    for number, (p, a) in enumerate(rounds, start=1):
        prompts, accepted = prompts + p, accepted + a
        engine._totals[number] = (prompts, accepted)
    engine._committed = accepted  # 7,842: 2,158 still needed, nothing reserved
    per_prompt = engine._recent_yield(4)
    assert 0.95 < per_prompt < 1.05  # 1369/1024 times (1.337/1.557) squared
    assert engine._round_size(6) == 1024  # 2,158 / 0.99 asks for more than a full round
    engine._committed = 10_000 - 500
    assert engine._round_size(6) == math.ceil(500 / per_prompt)
    store.close()


def test_a_burst_of_failures_early_on_does_not_make_the_run_overshoot(tmp_path):
    """The first 100 classification answers are nonsense, then the endpoint is fine: the share
    of started candidates that became tasks, learnt in the burst, made the next rounds reserve
    more than twice what they needed (300 tasks asked for, 478 made). A run now reserves at
    most 5% of its target beyond it."""
    with FakeOpenAI(latency=0.02, script={"classify": ["Hmm"] * 100},
                    repeat_last=False) as server:
        run_dir, finished, _ = run_engine(tmp_path, server, 300, concurrency=64,
                                          prompts_per_round=0, max_fruitless_requests=0)
    assert 300 <= finished.accepted <= 315, finished.accepted
    assert_accounted(run_dir)
