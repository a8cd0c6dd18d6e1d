"""The parsers on the layouts real base and chat models write (issue: real models and endpoints).

Each case is an answer as a model wrote it; the assertions name what is kept and, for what is set
aside, the reason. The same answers run through the real engine in test_real_answers.py.
"""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import strategies as st

from selfinstruct_tui.engine.filters import RejectionReason as R
from selfinstruct_tui.engine.filters import clean_instances, label_matches, task_labels
from selfinstruct_tui.engine.parsing import (
    parse_classification,
    parse_instances,
    parse_instruction_list,
    until_next_task,
)
from selfinstruct_tui.engine.placeholders import (
    is_no_input,
    normalize_input,
    placeholder_output,
    unusable_input,
)
from selfinstruct_tui.engine.seeds import Instance

EXAMPLES = [f"Example task number {n} about topic {n}." for n in range(1, 9)]


def items(parsed):
    return [i.instruction for i in parsed.items]


def reasons(parsed):
    return [f.reason for f in parsed.discarded]


# -- instruction lists: completions continuations ---------------------------------------------

@pytest.mark.parametrize("text, expected", [
    # a number without its dot must not glue two tasks together
    (" Write a poem about rain.\n10 Suggest three names for a cat.\n11. Sort the list.",
     ["Write a poem about rain.", "Suggest three names for a cat.", "Sort the list."]),
    # a list that starts on a new line: item 9 is empty, item 10 is "Give ..."
    ("\n10. Give three tips for sleep.\n11. Name a color.",
     ["Give three tips for sleep.", "Name a color."]),
    # the value on the line after its number
    (" Write a haiku.\n10.\nGive three tips for sleep.\n11.\n\nName two rivers.",
     ["Write a haiku.", "Give three tips for sleep.", "Name two rivers."]),
    # ### separators and Instruction: labels (Alpaca-style)
    (" Write a haiku about snow.\n###\n10. Instruction: Give three tips.\n###\n"
     "11. Instruction: Name two rivers.",
     ["Write a haiku about snow.", "Give three tips.", "Name two rivers."]),
    # a wrong index still gives the items
    (" Write a haiku.\n12. Name a fruit.\n12. Name a vegetable.\n20) Name a tree.",
     ["Write a haiku.", "Name a fruit.", "Name a vegetable.", "Name a tree."]),
    # a number that starts a sentence is not an index
    (" 3 ways to save money on groceries, listed.\n10. Name a fruit.",
     ["3 ways to save money on groceries, listed.", "Name a fruit."]),
    # "3.5" and "10:30" are not list markers
    (" Convert 3.5 hours\n10:30 is the time to use.\n10. Name a fruit.",
     ["Convert 3.5 hours 10:30 is the time to use.", "Name a fruit."]),
    # the items run together on one line, numbered on from the prompt's 9
    (" Write a haiku. 10. Name a fruit. 11. Sort the list.",
     ["Write a haiku.", "Name a fruit.", "Sort the list."]),
    # ... and on a line of their own item
    (" Write a haiku.\n10. Name a fruit! 11. Sort the list? 12. Name two rivers.",
     ["Write a haiku.", "Name a fruit!", "Sort the list?", "Name two rivers."]),
    # a number that does not go on from the item's is its text, as is one after no sentence end
    (" Describe the 3 steps. 2. Then list them.\n10. Explain why 2023. Was a big year.",
     ["Describe the 3 steps. 2. Then list them.", "Explain why 2023. Was a big year."]),
    (" Sum the numbers 10. 12. 14 and report.\n10. Name a fruit.",
     ["Sum the numbers 10. 12. 14 and report.", "Name a fruit."]),
    # after a closing quote, and the next number alone at the end (an empty item, not text)
    (' Write a story that ends with "The End." 10. Describe a sunset. 11',
     ['Write a story that ends with "The End."', "Describe a sunset."]),
])
def test_completions_lists(text, expected):
    assert items(parse_instruction_list(text, first_number=9)) == expected


def test_markdown_a_chat_model_puts_in_its_list_is_not_kept_in_the_instructions():
    """`Draft` lost its first backtick to the list marker and kept the second; a sub-bullet
    joined its item as " - Include ..."; inline code elsewhere keeps its marks."""
    text = ("1. **Write a limerick** about a forgetful octopus.\n"
            "2. **Explain** how tides are caused by the moon.\n   - Include the role of the sun.\n"
            "3. `Draft` a polite email declining a meeting invitation.\n"
            "4. Explain what `ls -la` prints, line by line.")
    assert items(parse_instruction_list(text)) == [
        "Write a limerick about a forgetful octopus.",
        "Explain how tides are caused by the moon. Include the role of the sun.",
        "Draft a polite email declining a meeting invitation.",
        "Explain what `ls -la` prints, line by line."]


@pytest.mark.parametrize("text, first, expected", [
    # numbered sub-steps indented under an item (completions: the item is the prompt's 9)
    (" Plan meals for a week. Include:\n   1. Breakfast for two people\n   2. Lunch for a "
     "picnic\n10. Name a fruit.\n11. Explain viruses:\n    1) how they spread\n"
     "    2) how they are treated\n12. Sort the list.", 9,
     ["Plan meals for a week. Include: 1. Breakfast for two people 2. Lunch for a picnic",
      "Name a fruit.", "Explain viruses: 1) how they spread 2) how they are treated",
      "Sort the list."]),
    # the sub-steps' numbers are the list's own next ones: the indentation tells
    ("1. Plan meals for a week. Include:\n\n   1. Breakfast for two people\n"
     "   2. Lunch for a picnic\n\n2. Name a fruit.\n3. Sort the list.", None,
     ["Plan meals for a week. Include: 1. Breakfast for two people 2. Lunch for a picnic",
      "Name a fruit.", "Sort the list."]),
    # unindented: a list that restarts at 1 after "...:" and comes back to the item's next number
    ("1. Pack for a camping trip. Bring:\n1. Shelter for rain\n2. Food for three days\n"
     "3. Warm clothing\n2. Name a fruit.", None,
     ["Pack for a camping trip. Bring: 1. Shelter for rain 2. Food for three days 3. Warm "
      "clothing", "Name a fruit."]),
    (" Pack for a camping trip. Bring:\n1. Shelter for rain\n2. Food for three days\n"
     "10. Name a fruit.", 9,
     ["Pack for a camping trip. Bring: 1. Shelter for rain 2. Food for three days",
      "Name a fruit."]),
    # numbered steps and sub-bullets under bulleted items
    ("- Plan meals for a week:\n  1. Breakfast for two people\n  2. Lunch for a picnic\n"
     "- Name a fruit.\n- Describe a sunset:\n  - its colours\n  - its mood", None,
     ["Plan meals for a week: 1. Breakfast for two people 2. Lunch for a picnic",
      "Name a fruit.", "Describe a sunset: its colours its mood"]),
    # an item ending in ":" followed by the list's next number is no nested list
    ("1. Name the planets:\n2. Name a fruit.\n3. Sort the list.", None,
     ["Name the planets:", "Name a fruit.", "Sort the list."]),
])
def test_a_list_nested_in_an_item_is_part_of_its_instruction(text, first, expected):
    """Sub-steps were separate tasks ("Lunch for a picnic") and left their item cut at
    "Include:"."""
    parsed = parse_instruction_list(text, first_number=first)
    assert items(parsed) == expected
    assert not parsed.discarded


def test_a_cut_one_line_list_keeps_its_complete_items():
    parsed = parse_instruction_list(" Write a limerick. 10. Compare cats and dogs. 11",
                                    first_number=9, truncated=True)
    assert items(parsed) == ["Write a limerick.", "Compare cats and dogs."]
    assert [(f.reason, f.text) for f in parsed.discarded] == [(R.TRUNCATED, "11.")]


def test_input_and_output_lines_are_never_instructions():
    text = (" Summarize the paragraph.\nInput: <noinput>\nOutput: A summary.\n"
            "10. Output: this is not a task\n11. Name a fruit.")
    parsed = parse_instruction_list(text, first_number=9)
    assert items(parsed) == ["Summarize the paragraph.", "Name a fruit."]
    assert parsed.items[0].input == ""  # "<noinput>" is no input
    assert reasons(parsed) == [R.NOT_AN_INSTRUCTION]
    assert "Output: this is not a task" in parsed.discarded[0].text


def test_input_under_a_task_is_its_input_not_part_of_the_instruction():
    text = "9. Sort the steps into order.\nInput:\n1. Mix\n2. Preheat\n10. Name a fruit."
    parsed = parse_instruction_list(text)
    assert items(parsed) == ["Sort the steps into order.", "Name a fruit."]
    assert parsed.items[0].input == "1. Mix\n2. Preheat"


# -- instruction lists: chat layouts ------------------------------------------------------------

def test_task_headers_bold_labels_preamble_and_epilogue():
    text = ("Sure! Here are 7 new tasks:\n\n**Task 9:**\n**Instruction:** Write a haiku about "
            "autumn.\n**Input:** None\n\n**Task 10:**\n**Instruction:** Summarize the article."
            "\n**Input:** The article text.\n\n### Task 11\nName three rivers in Asia.\n\n"
            "Let me know if you'd like more tasks!")
    parsed = parse_instruction_list(text)
    assert items(parsed) == ["Write a haiku about autumn.", "Summarize the article.",
                             "Name three rivers in Asia."]
    assert [i.number for i in parsed.items] == [9, 10, 11]
    assert [i.input for i in parsed.items] == ["", "The article text.", ""]
    assert parsed.discarded == []


def test_bullets_when_there_are_no_numbers():
    text = ("Here are some new tasks:\n- Write a haiku about autumn.\n* Summarize the given "
            "paragraph in one sentence.\n• Name three rivers in Asia.\n\nHope this helps!")
    assert items(parse_instruction_list(text)) == [
        "Write a haiku about autumn.", "Summarize the given paragraph in one sentence.",
        "Name three rivers in Asia."]


def test_instruction_labels_without_numbers():
    text = ("Instruction: Write a haiku.\nInput: None\n\nInstruction: Name two rivers.\n"
            "Input: <noinput>")
    assert items(parse_instruction_list(text)) == ["Write a haiku.", "Name two rivers."]


def test_epilogue_on_the_line_after_the_last_item():
    text = "9. Write a haiku.\n10. Name a fruit.\nLet me know if you need more!"
    assert items(parse_instruction_list(text)) == ["Write a haiku.", "Name a fruit."]


def test_repeated_examples_are_set_aside_and_the_new_items_kept():
    listed = "".join(f"{n}. {e}\n" for n, e in enumerate(EXAMPLES, start=1))
    text = listed + "9. Brand new task about cats.\n10. Another new task about dogs.\n" \
        "11. A third new task about owls."
    parsed = parse_instruction_list(text, examples=EXAMPLES)
    assert items(parsed) == ["Brand new task about cats.", "Another new task about dogs.",
                             "A third new task about owls."]
    assert reasons(parsed) == [R.REPEATED_EXAMPLE] * 8


def test_a_single_repeated_example_is_recognised_by_its_text():
    text = f"9. {EXAMPLES[3]}\n10. A new task about owls."
    parsed = parse_instruction_list(text, examples=EXAMPLES)
    assert items(parsed) == ["A new task about owls."]
    assert parsed.discarded[0].detail == "repeats example 4 of the prompt"


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, I cannot generate more tasks.",
    "As an AI language model, I cannot do that.",
])
def test_refusals_are_not_tasks(text):
    for first in (None, 9):
        parsed = parse_instruction_list((" " if first else "") + text, first_number=first)
        assert parsed.items == []
        assert reasons(parsed) == [R.REFUSAL]


def test_unparseable_answer_is_recorded_whole():
    parsed = parse_instruction_list("The weather is nice today and I like tea.")
    assert parsed.items == [] and reasons(parsed) == [R.UNPARSEABLE]
    assert "weather" in parsed.discarded[0].text
    assert "9. <instruction>" in parsed.discarded[0].detail


def test_truncated_list_keeps_its_complete_items():
    text = " Write a haiku.\n10. Name a fruit.\n11. Explain how the tides wo"
    parsed = parse_instruction_list(text, first_number=9, truncated=True)
    assert items(parsed) == ["Write a haiku.", "Name a fruit."]
    assert reasons(parsed) == [R.TRUNCATED]
    assert parsed.discarded[0].text == "Explain how the tides wo"


def test_truncation_inside_an_epilogue_cuts_no_item():
    text = "9. Write a haiku.\n10. Name a fruit.\n\nI hope these tasks are use"
    parsed = parse_instruction_list(text, truncated=True)
    assert items(parsed) == ["Write a haiku.", "Name a fruit."] and parsed.discarded == []


def test_json_answers_and_a_cut_json_answer():
    text = '```json\n{"tasks": [{"instruction": "Write a haiku."}, {"instruction": ""}]}\n```'
    parsed = parse_instruction_list(text)
    assert items(parsed) == ["Write a haiku."] and reasons(parsed) == [R.NOT_AN_INSTRUCTION]
    cut = '{"tasks": [{"instruction": "Write a haiku."}, {"instruction": "Name a fr'
    parsed = parse_instruction_list(cut, truncated=True)
    assert items(parsed) == ["Write a haiku."] and reasons(parsed) == [R.TRUNCATED]


def test_leaked_chat_control_tokens_end_the_answer():
    text = "9. Write a haiku.<|im_end|>\n<|im_start|>user\n10. Not part of the answer."
    assert items(parse_instruction_list(text)) == ["Write a haiku."]


@pytest.mark.parametrize("last, expected", [
    ("Draft an email to a landlord. I hope this helps!", "Draft an email to a landlord."),
    ("Draft an email. Let me know if you need more tasks!", "Draft an email."),
    ("Draft an email. Is there anything else I can do?", "Draft an email."),
    # an instruction's own sentence stays
    ("Write a welcome note. Feel free to be creative.",
     "Write a welcome note. Feel free to be creative."),
    ("Explain why people say 'I hope this helps'.", "Explain why people say 'I hope this helps'."),
])
def test_an_assistant_s_words_on_the_last_item_s_line_are_not_its_instruction(last, expected):
    """"10. Draft an email. I hope this helps!" kept the chatter in the task."""
    parsed = parse_instruction_list(f"9. Write a poem about the sea.\n10. {last}")
    assert items(parsed) == ["Write a poem about the sea.", expected]


# -- classification -----------------------------------------------------------------------------

@pytest.mark.parametrize("answer, expected", [
    (" Yes", True), ("Yes", True), ("Classification: Yes", True), ("**Yes**", True),
    ("Yes, because the labels are fixed.", True), ("True", True),
    ("This is a classification task.", True),
    (" No", False), ("no.", False), ("Answer: No", False),
    ("It is not a classification task.", False),
    ("Maybe", None), ("", None), ("It depends on the input.", None),
    # chat models' wordings: the task repeated first, "Classification task:", "The answer is"
    ("Task: Sort the reviews.\nClassification: No", False), ("Classification task: Yes", True),
    ("The answer is: No", False), ("I would classify this as: No", False),
    ("The answer is Yes.", True), ("y", True), ("N.", False),
    # no answer: the question's options repeated, "N/A"
    ("Yes/No", None), ("Yes or No", None), ("Classification: N/A", None),
    ("No, no labels here.", False), ("Yes, yes.", True),
    # casual, hedged and Chinese verdicts were no answer; "No idea" was a "No"
    ("Nope", False), ("Yep!", True), ("Definitely yes.", True), ("Probably not.", False),
    ("是", True), ("是的，这是分类任务。", True), ("否", False), ("不是。", False),
    ("No idea.", None), ("Probably", None), ("Not sure", None), ("Yesterday", None),
])
def test_classification_answers(answer, expected):
    assert parse_classification(answer) is expected


# -- instances ----------------------------------------------------------------------------------

def pairs(parsed):
    return [(i.input, i.output) for i in parsed.instances]


@pytest.mark.parametrize("text, expected", [
    ("Input: (none)\nOutput: A haiku.\n\nExample 2\nInput: 3, 1, 2\nOutput: 1, 2, 3",
     [("", "A haiku."), ("3, 1, 2", "1, 2, 3")]),
    # numbered pairs
    ("1. Input: 3, 1, 2\n   Output: 1, 2, 3\n2. Input: b, a\n   Output: a, b",
     [("3, 1, 2", "1, 2, 3"), ("b, a", "a, b")]),
    # bullets, both labels on one line
    ("- Input: 2+2 Output: 4\n- Input: 3+3 | Output: 6", [("2+2", "4"), ("3+3", "6")]),
    # bold labels, Example headers with colons
    ("**Example 1:**\n**Input:** x\n**Output:** y\n\n**Example 2:**\n**Input:** z\n"
     "**Output:** w", [("x", "y"), ("z", "w")]),
    # an output's own numbered list and code fence stay in it
    ("Input: (none)\nOutput: 1. First step\n2. Second step\n\n```python\nprint(1)\n```",
     [("", "1. First step\n2. Second step\n\n```python\nprint(1)\n```")]),
    # separators end an output; parsing goes on after them
    ("Input: a\nOutput: b\n###\nInput: c\nOutput: d\n---\nInput: e\nOutput: f",
     [("a", "b"), ("c", "d"), ("e", "f")]),
])
def test_input_first_layouts(text, expected):
    parsed = parse_instances(text, output_first=False)
    assert pairs(parsed) == expected and parsed.discarded == []


@pytest.mark.parametrize("next_task", [
    "Task 2\nWrite a story.", "Task: Write a story.", "## Task\nWrite a story.",
    "**Task 3:** Write a story.", "Instruction: Write a story.", "3. Instruction: Write a story.",
    "### Instruction:\nWrite a story.",
])
def test_an_output_never_runs_into_another_task(next_task):
    text = f"Input: (none)\nOutput: Blue is calm.\n\n{next_task}\nOutput: x"
    assert pairs(parse_instances(text, output_first=False)) == [("", "Blue is calm.")]


def test_a_misspelled_label_never_becomes_an_empty_input():
    text = "Example 1\nInptu: the cat sat\nOutput: The cat sat down.\nExample 2\nInput: dog\n" \
           "Ouput: Dogs bark."
    parsed = parse_instances(text, output_first=False)
    assert parsed.instances == []
    assert reasons(parsed) == [R.UNLABELED_INPUT, R.MISSING_OUTPUT]
    assert "Inptu" in parsed.discarded[0].detail
    assert "expected 'Input: ...' then 'Output: ...'" in parsed.discarded[1].detail


def test_an_answer_with_no_examples_shows_the_expected_layout():
    parsed = parse_instances("Here is a nice poem about the sea.", output_first=True)
    assert reasons(parsed) == [R.UNPARSEABLE]
    assert "expected 'Class label: ...' then 'Input: ...'" in parsed.discarded[0].detail


def test_output_first_layouts():
    text = " Positive\nInput: I love it.\nClass label: Negative\nInput: Awful.\nClass label: X\n"
    parsed = parse_instances(text, output_first=True, starts_in_example=True)
    assert pairs(parsed) == [("I love it.", "Positive"), ("Awful.", "Negative")]
    assert reasons(parsed) == [R.MISSING_INPUT]
    bold = "**Class label:** Positive\n**Input:** I love it.\n\n1. Class label: Negative " \
        "Input: Awful."
    assert pairs(parse_instances(bold, output_first=True)) == [
        ("I love it.", "Positive"), ("Awful.", "Negative")]


def test_a_cut_answer_loses_only_the_cut_example():
    text = "Input: a\nOutput: b\nExample 2\nInput: c\nOutput: d is cu"
    parsed = parse_instances(text, output_first=False, truncated=True)
    assert pairs(parsed) == [("a", "b")] and reasons(parsed) == [R.TRUNCATED]


def test_json_instances():
    text = '{"instances": [{"input": "N/A", "output": "Hi"}, {"input": "x"}]}'
    parsed = parse_instances(text, output_first=False)
    assert pairs(parsed) == [("", "Hi")] and reasons(parsed) == [R.MISSING_OUTPUT]
    labeled = '{"instances": [{"label": "Yes", "input": "Is it raining?"}]}'
    assert pairs(parse_instances(labeled, output_first=True)) == [("Is it raining?", "Yes")]
    # a class label without an input is missing_input, as in the text layout; a null input
    # is "no input", as "Input: (none)" is (it was taken as "" whether missing or null)
    unlabeled = ('{"instances": [{"label": "No"}, {"label": "Yes", "input": null}, '
                 '{"label": "No", "input": "Is it dry?"}]}')
    parsed = parse_instances(unlabeled, output_first=True)
    assert pairs(parsed) == [("", "Yes"), ("Is it dry?", "No")]
    assert reasons(parsed) == [R.MISSING_INPUT]


# Layouts real chat models write that lost examples or put commentary into the data.
CHAT_INSTANCE_ANSWERS = {
    # the prompt's own "Task: ..." line repeated first: the whole answer was cut at line 0
    "task repeated first": ("Task: Convert Celsius to Fahrenheit.\n\nExample 1\nInput: 0 C\n"
                            "Output: 32 F\n\nExample 2\nInput: 100 C\nOutput: 212 F", False,
                            [("0 C", "32 F"), ("100 C", "212 F")], []),
    "bold task repeated first": ("**Task:** Label the review.\n\nClass label: Positive\n"
                                 "Input: Loved it.\nClass label: Negative\nInput: Awful.",
                                 True, [("Loved it.", "Positive"), ("Awful.", "Negative")], []),
    # closing remarks about the examples were part of the last output (or input)
    "closing remarks": ("Example 1\nInput: 0 C\nOutput: 32 F\n\nExample 2\nInput: 100 C\n"
                        "Output: 212 F\n\nThese examples show how to convert between the "
                        "scales. Let me know if you need more!", False,
                        [("0 C", "32 F"), ("100 C", "212 F")], []),
    "closing remarks, output first": ("Class label: Negative\nInput: It broke after a week.\n\n"
                                      "Each input clearly reflects the sentiment of its label.",
                                      True, [("It broke after a week.", "Negative")], []),
    "closing note": ("Input: x + 1 = 2\nOutput: x = 1\n\nNote: these examples use small "
                     "numbers.", False, [("x + 1 = 2", "x = 1")], []),
    # ... but an output's own last paragraph is the output's
    "an email's last lines": ("Input: (none)\nOutput: Dear Jo,\n\nI hope you are well.\n\n"
                              "Let me know if you need anything else.\n\nBest,\nAnna", False,
                              [("", "Dear Jo,\n\nI hope you are well.\n\nLet me know if you "
                                    "need anything else.\n\nBest,\nAnna")], []),
    # several inputs under one label were one input holding "Input: ..." lines
    "inputs under one label": ("Class label: Positive\nInput: I loved this blender.\nInput: "
                               "Best purchase all year.\n- Input: Works great.\n\nClass label: "
                               "Negative\nInput 1: It broke.\nInput 2: Awful.", True,
                               [("I loved this blender.", "Positive"),
                                ("Best purchase all year.", "Positive"),
                                ("Works great.", "Positive"), ("It broke.", "Negative"),
                                ("Awful.", "Negative")], []),
    # a number alone under its label was read as the next example's number
    "numbers on the next line": ("Example 1\nInput:\n144\nOutput:\n12\n\nExample 2\nInput:\n"
                                 "81\nOutput: 9", False, [("144", "12"), ("81", "9")], []),
    "a column of numbers": ("Input: the first primes\nOutput:\n2\n3\n5\n7\n\n2.\nInput: two "
                            "even numbers\nOutput:\n2\n4", False,
                            [("the first primes", "2\n3\n5\n7"), ("two even numbers", "2\n4")],
                            []),
    # an "Example: ..." line or "Examples include:" in an output cut it
    "example lines in an output": ("Input: simile\nOutput: A simile compares two things.\n"
                                   "Example: She is as brave as a lion.\n\nExample 2\nInput: "
                                   "energy\nOutput: Examples include:\n- Solar\n- Wind", False,
                                   [("simile", "A simile compares two things.\nExample: She is "
                                               "as brave as a lion."),
                                    ("energy", "Examples include:\n- Solar\n- Wind")], []),
    # labels with a word more, a preamble (a dropped "example"), Windows line ends
    "label variants": ("Sure! Here are two examples:\r\n\r\nExample 1\r\nInput text: Hello"
                       "\r\nOutput (in French): Bonjour\r\n\r\nExample 2\r\nInput: Thanks\r\n"
                       "Expected output: Merci\r\n## Task\r\nInput: x\r\nOutput: y", False,
                       [("Hello", "Bonjour"), ("Thanks", "Merci")], []),
    # JSON in a fence with a sentence around it was unparseable
    "fenced JSON between sentences": ('Sure! Here they are:\n\n```json\n{"instances": [{"input": '
                                      '"0 C", "output": "32 F"}]}\n```\n\nLet me know!', False,
                                      [("0 C", "32 F")], []),
    # ... but a JSON output in a fence is an output
    "a fenced JSON output": ('Input: a list of three numbers\nOutput:\n```json\n[1, 2, 3]\n```',
                             False, [("a list of three numbers", "```json\n[1, 2, 3]\n```")],
                             []),
}


@pytest.mark.parametrize("name", list(CHAT_INSTANCE_ANSWERS))
def test_chat_instance_layouts(name):
    text, output_first, expected, dropped = CHAT_INSTANCE_ANSWERS[name]
    parsed = parse_instances(text, output_first=output_first)
    assert pairs(parsed) == expected
    assert reasons(parsed) == dropped


@pytest.mark.parametrize("text, expected", [
    ("9. **Limerick Writing**: Compose a limerick about a cat.", "Compose a limerick about a cat."),
    ("9. **Travel Planning:** Suggest a weekend trip.", "Suggest a weekend trip."),
    ("9. **Poetry** - Write a sonnet about love.", "Write a sonnet about love."),
    ("9. **Travel Planning**\n   Suggest a weekend trip to Rome.", "Suggest a weekend trip to Rome."),
    ("### 9. Creative Writing\nWrite a story about a dragon.", "Write a story about a dragon."),
    ("**Task 9: Poem**\nWrite a poem about rain.", "Write a poem about rain."),
    # bold words of the instruction itself stay
    ("9. **Explain** how tides work.", "Explain how tides work."),
    ("9. **Write a haiku about autumn.**", "Write a haiku about autumn."),
    ("9. **Write a short story.**\nIt should be about a robot.",
     "Write a short story. It should be about a robot."),
    ("9. Explain what `__init__` does: give an example.",
     "Explain what `__init__` does: give an example."),
])
def test_a_title_before_an_item_is_not_part_of_its_instruction(text, expected):
    """Chat models title their items; the title was kept ("Limerick Writing: Compose ...")."""
    assert items(parse_instruction_list(text)) == [expected]


def test_notes_after_an_item_are_not_part_of_its_instruction():
    """"*(No input)*" left "... *(No input)"; "(Input: ...)" stayed in the instruction;
    "Example input: ..." left "Example" on its end; an epilogue line without a blank line
    before it joined the last item."""
    text = ("9. Write a haiku about autumn. *(No input)*\n"
            '10. Classify the sentiment of the sentence. (Input: "I love Mondays!")\n'
            "11. Describe the scene. Example input: the ocean at dawn\n"
            "12. Summarize the paragraph. [Requires input: a news paragraph]\n"
            "13. Name a fruit.\nThese cover a range of skills.")
    parsed = parse_instruction_list(text)
    assert [(i.instruction, i.input) for i in parsed.items] == [
        ("Write a haiku about autumn.", ""),
        ("Classify the sentiment of the sentence.", "I love Mondays!"),
        ("Describe the scene.", "the ocean at dawn"), ("Summarize the paragraph.", ""),
        ("Name a fruit.", "")]


@pytest.mark.parametrize("text", [
    "- 9. Write a haiku about autumn.\n- 10. Name a fruit.",  # kept "9." in the text
    "9 - Write a haiku about autumn.\n10 - Name a fruit.",  # unparseable
    "[9] Write a haiku about autumn.\n[10] Name a fruit.",  # "JSON that does not parse"
])
def test_more_list_markers(text):
    assert items(parse_instruction_list(text)) == ["Write a haiku about autumn.", "Name a fruit."]


@pytest.mark.parametrize("text, expected", [
    # lettered lists: a run from a/A in one style is a list (it was unparseable)
    ("a) Write a haiku.\nb) Name a fruit.", ["Write a haiku.", "Name a fruit."]),
    ("(a) Write a haiku.\n(b) Name a fruit.", ["Write a haiku.", "Name a fruit."]),
    ("**A.** Write a haiku.\n**B.** Name a fruit.", ["Write a haiku.", "Name a fruit."]),
    ("a. Write a haiku.\n   It should rhyme.\nb. Name a fruit.",
     ["Write a haiku. It should rhyme.", "Name a fruit."]),
    # ... whose own numbered steps are part of its item
    ("a) Plan a trip:\n   1. Pick a town\n   2. Book a room\nb) Name a fruit.",
     ["Plan a trip: 1. Pick a town 2. Book a room", "Name a fruit."]),
    # enclosed numbers and keycaps (it was unparseable)
    ("① Write a haiku.\n② Name a fruit.", ["Write a haiku.", "Name a fruit."]),
    ("⑴ Write a haiku.\n⑵ Name a fruit.", ["Write a haiku.", "Name a fruit."]),
    ("❾ Write a haiku.\n❿ Name a fruit.", ["Write a haiku.", "Name a fruit."]),
    ("①写一首关于秋天的诗。\n②解释光合作用。", ["写一首关于秋天的诗。", "解释光合作用。"]),
    ("8\ufe0f\u20e3 Write a haiku.\n\U0001f51f Name a fruit.",
     ["Write a haiku.", "Name a fruit."]),
])
def test_lettered_enclosed_and_keycap_markers(text, expected):
    parsed = parse_instruction_list(text)
    assert items(parsed) == expected and not parsed.discarded


def test_markers_of_another_kind_under_an_item_are_its_sub_list():
    """Lettered or circled lines under a numbered item are its options; after a blank line
    they were dropped, unrecorded."""
    for text, first in (
            ("9. Plan a trip:\n\na) Pick a town\nb) Book a room\n\n10. Name a fruit.",
             "Plan a trip: a) Pick a town b) Book a room"),
            ("9. Plan a trip:\n\n① Pick a town\n② Book a room\n10. Name a fruit.",
             "Plan a trip: ① Pick a town ② Book a room"),
            ("9. Plan a trip:\n① Pick a town\n② Book a room\n10. Name a fruit.",
             "Plan a trip: ① Pick a town ② Book a room"),
            # a letter that starts a line of an item's sentence is no marker
            ("9. Explain why\nA. Lincoln is remembered.\n10. Name a fruit.",
             "Explain why A. Lincoln is remembered."),
            ("- Explain why\n  A. Lincoln is remembered.\n- Name a fruit.",
             "Explain why A. Lincoln is remembered.")):
        parsed = parse_instruction_list(text)
        assert items(parsed) == [first, "Name a fruit."] and not parsed.discarded, text


def test_letters_are_a_list_only_in_a_run_from_a():
    """"A. Lincoln" alone, "I." (a roman numeral) and a run that does not start at a stay
    unparseable, by name; letters before the prompt's next number (completions) are the
    item's options."""
    listed = parse_instruction_list("A. Write a haiku.\nB. Name a fruit.\nD. Sort the list.")
    assert items(listed) == ["Write a haiku.", "Name a fruit.", "Sort the list."]
    for text in ("A. Lincoln was the 16th president.", "I. M. Pei designed the pyramid.",
                 "b) Write a haiku.\nc) Name a fruit."):
        parsed = parse_instruction_list(text)
        assert items(parsed) == [] and reasons(parsed) == [R.UNPARSEABLE], text
    continued = parse_instruction_list(" Pick the warmer colour:\na) red\nb) blue\n10. Name a "
                                       "fruit.", first_number=9)
    assert items(continued) == ["Pick the warmer colour: a) red b) blue", "Name a fruit."]


ROMAN = ["i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii"]


@pytest.mark.parametrize("form", ["{}. ", "{}) ", "({}) ", "**{}.** ", "{}.\t"])
@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_roman_numeral_lists(form, case):
    """A run of roman numerals from i/I in one style is a list, numbered by their values (it
    was unparseable); "i", "v" and "x" in it are numerals, not letters."""
    text = "\n".join(form.format(case(r)) + f"Name a fruit with {n} letters."
                     for n, r in enumerate(ROMAN, start=1))
    parsed = parse_instruction_list(text)
    assert [(i.number, i.instruction) for i in parsed.items] == [
        (n, f"Name a fruit with {n} letters.") for n in range(1, 13)]
    assert not parsed.discarded


def test_roman_numerals_are_a_list_only_in_a_run_from_i():
    """A run decides: a, b, ... i, j is letters (its "i" is the ninth letter); i, ii, iii is
    roman; "I. M. Pei", "V. S. Naipaul", "I think" and a run that starts past i, changes style
    or case are text. Roman markers under a numbered or lettered item are its sub-list."""
    letters = "\n".join(f"{chr(96 + n)}) Name a fruit with {n} letters." for n in range(1, 11))
    assert [i.number for i in parse_instruction_list(letters).items] == list(range(1, 11))
    for text in ("I. M. Pei designed the pyramid.", "V. S. Naipaul wrote novels.",
                 "I think these are good.\nII. Name a fruit.", "ii. Write a haiku.\niii. Name a "
                 "fruit.", "i. Write a haiku.\nii) Name a fruit.", "i. Write a haiku.\nII. Name "
                 "a fruit.", "i. Write a haiku.\n  ii. Name a fruit."):
        parsed = parse_instruction_list(text)
        assert items(parsed) == [] and reasons(parsed) == [R.UNPARSEABLE], text
    for text, first in (
            ("9. Plan a trip:\n\ni. Pick a town\nii. Book a room\n\n10. Name a fruit.",
             "Plan a trip: i. Pick a town ii. Book a room"),
            ("9. Plan a trip:\n   (i) Pick a town\n   (ii) Book a room\n10. Name a fruit.",
             "Plan a trip: (i) Pick a town (ii) Book a room"),
            ("a) Plan a trip:\ni) Pick a town\nii) Book a room\nb) Name a fruit.",
             "Plan a trip: i) Pick a town ii) Book a room"),
            ("I. Plan a trip:\n   a. Pick a town\n   b. Book a room\nII. Name a fruit.",
             "Plan a trip: a. Pick a town b. Book a room"),
            ("I. Explain why\nV. S. Naipaul wrote novels.\nII. Name a fruit.",
             "Explain why V. S. Naipaul wrote novels."),
            # a roman sub-list under a roman item, indented deeper: its steps (ii. and on were
            # items of their own)
            ("i. Plan a trip:\n   i. Pick a town\n   ii. Book a room\n   iii. Pack\n"
             "ii. Name a fruit.", "Plan a trip: i. Pick a town ii. Book a room iii. Pack"),
            ("I. Plan a trip:\n   (i) Pick a town\n   (ii) Book a room\nII. Name a fruit.",
             "Plan a trip: (i) Pick a town (ii) Book a room")):
        parsed = parse_instruction_list(text)
        assert items(parsed) == [first, "Name a fruit."] and not parsed.discarded, text
    continued = parse_instruction_list(" Pick the warmer colour:\ni. red\nii. blue\n10. Name a "
                                       "fruit.", first_number=9)
    assert items(continued) == ["Pick the warmer colour: i. red ii. blue", "Name a fruit."]


@pytest.mark.parametrize("text, expected", [
    ("① Write a haiku. ② Name a fruit. ③ Sort the list.",
     ["Write a haiku.", "Name a fruit.", "Sort the list."]),
    ("⑨ Write a haiku! ⑩ \"Name\" a fruit? ⑪ **Sort** the list.",
     ["Write a haiku!", "\"Name\" a fruit?", "Sort the list."]),
    ("①写一首关于秋天的诗。②解释光合作用。", ["写一首关于秋天的诗。", "解释光合作用。"]),
    ("1\ufe0f\u20e3 Write a haiku. 2\ufe0f\u20e3 Name a fruit.", ["Write a haiku.", "Name a fruit."]),
    ("9\ufe0f\u20e3 Write a haiku. \U0001f51f Name a fruit.", ["Write a haiku.", "Name a fruit."]),
    # the same guards as digits: a sentence end before, the next number, a capital after
    ("① Compare ③ and ② options. ② Name a fruit.", ["Compare ③ and ② options.", "Name a fruit."]),
    ("① Write a haiku. ③ Name a fruit.", ["Write a haiku. ③ Name a fruit."]),
    ("① Write a haiku. ② name a fruit.", ["Write a haiku. ② name a fruit."]),
    # another kind of marker does not go on from the line's own
    ("① Write a haiku. 2. Name a fruit.", ["Write a haiku. 2. Name a fruit."]),
])
def test_enclosed_and_keycap_items_on_one_line(text, expected):
    """Only digits were split ("1. ... 2. ..."); "① ... ② ..." was one item."""
    parsed = parse_instruction_list(text)
    assert items(parsed) == expected and not parsed.discarded


@hypothesis.settings(max_examples=600, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(
    [".", "!", "?", "。", "！", "？", '"', "”", "」", " ", "\t", "2", "10", "3.5", "①", "②", "⑩",
     "\U0001f51f", "2\ufe0f\u20e3", "3\u20e3", ")", "A", "a", "写", "*", "「"]), max_size=8).map("".join))
def test_the_cheap_look_for_inline_items_misses_none(line):
    """A line the cheap look passes over has no marker the splitter would cut at."""
    from selfinstruct_tui.engine import parsing as p

    if p._MAYBE_INLINE.search(line) is None:
        assert p._INLINE_NUMBER.search(line) is None


def test_a_cut_one_line_enclosed_list_keeps_its_complete_items():
    cut = parse_instruction_list("① Write a haiku. ② Name a fruit. ③", truncated=True)
    assert items(cut) == ["Write a haiku.", "Name a fruit."] and reasons(cut) == [R.TRUNCATED]


LINE_END_ANSWERS = [
    (parse_instruction_list, {}, "Sure:\n\n9. Write a haiku.\n   It rhymes.\n10. Name a fruit."),
    (parse_instruction_list, {}, "| # | Instruction |\n|---|---|\n| 9 | Write a haiku. |"),
    (parse_instruction_list, {}, '{"tasks": [\n"Write a haiku."\n]}'),
    (parse_instruction_list, {}, "a) Write a haiku.\nb) Name a fruit.\n\nEnjoy!"),
    (parse_instruction_list, {"first_number": 9}, " Write a haiku.\n10. Name a fruit."),
    (parse_instruction_list, {}, "Let me see.\n</think>\n9. Write a haiku."),
    (parse_instances, {"output_first": False},
     "Example 1\nInput: rain\nOutput: Museum.\nSecond line.\n\nExample 2\nInput: sun\n"
     "Output: Beach."),
    (parse_instances, {"output_first": False}, "| Input | Output |\n|---|---|\n| rain | Museum. |"),
    (parse_instances, {"output_first": True},
     "Class label: Positive\nInput: Loved it.\nClass label: Negative\nInput: Awful."),
    (parse_instances, {"output_first": False},
     "Input: (none)\nOutput: Day one.\n###\nTask 2: Write a poem.\nOutput: x"),
    (parse_classification, {}, "Task: Sort the reviews.\nClassification: Yes"),
    (parse_classification, {}, "Hmm.\n</think>\nNo"),
]


@pytest.mark.parametrize("ending", ["\r", "\r\n"])
@pytest.mark.parametrize("parse, kwargs, text", LINE_END_ANSWERS)
def test_every_parser_reads_any_line_end_as_a_line_end(parse, kwargs, text, ending):
    """A lone "\r" (old Mac tool chains) was a line end only in the instruction list parser,
    not in a generation table, the instance parser nor the classification parser."""
    assert parse(text.replace("\n", ending), **kwargs) == parse(text, **kwargs)
    assert parse(text, **kwargs) not in (None, parse("", **kwargs))  # the answer is read


def test_roman_and_lettered_instance_markers():
    text = "i. Input: rain\nOutput: Museum.\nii. Input: sun\nOutput: Beach.\niii) Input: x"
    parsed = parse_instances(text, output_first=False)
    assert pairs(parsed) == [("rain", "Museum."), ("sun", "Beach.")]
    assert reasons(parsed) == [R.MISSING_OUTPUT]
    text = "(IV) Class label: Positive\nInput: Loved it.\n(V) Class label: Negative\nInput: Awful."
    assert pairs(parse_instances(text, output_first=True)) == [("Loved it.", "Positive"),
                                                               ("Awful.", "Negative")]
    # only valid numerals in a run are markers: "iiii)", "vix)", a lone "xii)" are the output's
    for mark in ("iiii)", "vix.", "xii)", "(ivx)"):
        text = f"Input: a lamp\nOutput: Check the bulb:\n{mark} Input: the socket"
        assert pairs(parse_instances(text, output_first=False)) == [
            ("a lamp", f"Check the bulb:\n{mark} Input: the socket")]
    text = "i) Input: a\nOutput: b\nii) Input: c\nOutput: d\niv) Input: e\nOutput: f"
    assert pairs(parse_instances(text, output_first=False)) == [("a", "b"), ("c", "d"),
                                                                ("e", "f")]


def test_generation_tables():
    """A table's rows are the items; the header and the rule are not; the # column is the
    item's number, an Input column its input; escaped pipes and inline code stay; a cut table
    loses its last row only."""
    text = ("Here are the tasks:\n\n| No. | **Task** | Input |\n|:---:|:---|---|\n"
            "| 9 | Explain `a \\| b` in a shell. | `ls \\| wc` |\n"
            "| 10 | Name a fruit. | |\n11 | Sort the list. | 3, 1, 2\n\nEnjoy!")
    parsed = parse_instruction_list(text)
    assert [(i.number, i.instruction, i.input) for i in parsed.items] == [
        (9, "Explain `a | b` in a shell.", "`ls | wc`"), (10, "Name a fruit.", ""),
        (11, "Sort the list.", "3, 1, 2")]
    assert not parsed.discarded
    single = "| Instruction |\n| --- |\n| Write a haiku. |\n| Name a fruit. |"
    assert items(parse_instruction_list(single)) == ["Write a haiku.", "Name a fruit."]
    hashed = parse_instruction_list("| # | Task |\n|--|--|\n| 9 | Write a haiku. |")
    assert [(i.number, i.instruction) for i in hashed.items] == [(9, "Write a haiku.")]
    cut = parse_instruction_list("| # | Instruction |\n|---|---|\n| 9 | Name a fruit. |\n"
                                 "| 10 | Explain how the ti", truncated=True)
    assert items(cut) == ["Name a fruit."] and reasons(cut) == [R.TRUNCATED]
    # a table under a numbered item is the item's (its input), not the answer
    listed = "9. Sum each row:\n| a | b |\n|---|---|\n| 1 | 2 |\n10. Name a fruit."
    assert items(parse_instruction_list(listed)) == ["Sum each row: | a | b | |---|---| "
                                                     "| 1 | 2 |", "Name a fruit."]


def test_instance_tables():
    text = ("| # | Input | Expected output |\n|---|---|---|\n| 1 | 2 + 2 | 4 |\n"
            "| 2 | two lines | first<br>second |\n| 3 | `a \\| b` | a pipe |\n"
            "| 4 | no output | |\n| 5 | a | b | c |")
    parsed = parse_instances(text, output_first=False)
    assert pairs(parsed) == [("2 + 2", "4"), ("two lines", "first\nsecond"),
                             ("`a | b`", "a pipe")]
    assert reasons(parsed) == [R.MISSING_OUTPUT, R.UNPARSEABLE]
    labelled = parse_instances("| Input | Label |\n|---|---|\n| Loved it. | Positive |",
                               output_first=True)
    assert pairs(labelled) == [("Loved it.", "Positive")]
    cut = parse_instances("| Input | Output |\n|---|---|\n| a | b |\n| c | d and",
                          output_first=False, truncated=True)
    assert pairs(cut) == [("a", "b")] and reasons(cut) == [R.TRUNCATED]
    # two columns not named Input/Output: the labels' column of a classification task, or
    # headers that say which is which (a sentiment table was unparseable)
    mood = parse_instances("| Sentence | Mood |\n|---|---|\n| Hi | happy |", output_first=True)
    assert pairs(mood) == [("Hi", "happy")]
    unknown = parse_instances("| Country | Capital |\n|---|---|\n| France | Paris |",
                              output_first=False)
    assert reasons(unknown) == [R.UNPARSEABLE]
    assert "no Input column" in unknown.discarded[0].detail
    # a table in an output is the output's
    inside = parse_instances("Input: two fruits\nOutput:\n| Fruit | Colour |\n|---|---|\n"
                             "| Apple | Red |", output_first=False)
    assert pairs(inside) == [("two fruits", "| Fruit | Colour |\n|---|---|\n| Apple | Red |")]


def test_lettered_and_enclosed_instance_markers():
    text = "A. Input: rain\nOutput: Museum.\nB. Input: sun\nOutput: Beach."
    assert pairs(parse_instances(text, output_first=False)) == [("rain", "Museum."),
                                                                ("sun", "Beach.")]
    text = "⑴ Class label: Positive\nInput: Loved it.\n⑵ Class label: Negative\nInput: Awful."
    assert pairs(parse_instances(text, output_first=True)) == [("Loved it.", "Positive"),
                                                               ("Awful.", "Negative")]
    # a lettered line in an output is the output's
    text = "Input: a quiz\nOutput: Which is red?\na) Apple\nb) Pear"
    assert pairs(parse_instances(text, output_first=False)) == [
        ("a quiz", "Which is red?\na) Apple\nb) Pear")]


def test_a_dash_in_an_items_input_is_no_list_marker():
    parsed = parse_instruction_list("9. Compute this:\nInput: 3 - 2 = 1\n10. Name a fruit.")
    assert [(i.instruction, i.input) for i in parsed.items] == [
        ("Compute this:", "3 - 2 = 1"), ("Name a fruit.", "")]


def test_full_width_and_cjk_list_markers_and_any_json_list_key():
    """A run on Chinese seeds: "９．" and "9、" items were unparseable; so was a JSON answer
    under a key of its own."""
    text = "９．写一首关于秋天的诗。\n10、解释光合作用。"
    assert items(parse_instruction_list(text)) == ["写一首关于秋天的诗。", "解释光合作用。"]
    keyed = '{"new_instructions": ["Write a haiku.", "Name a fruit."]}'
    assert items(parse_instruction_list(keyed)) == ["Write a haiku.", "Name a fruit."]


def test_fenced_json_with_a_sentence_around_it_is_read():
    text = ('Here are 7 new tasks in the requested JSON format:\n\n```json\n{"tasks": '
            '[{"instruction": "Write a haiku.", "input": ""}, {"instruction": "Name a fruit."}]}'
            '\n```\n\nLet me know if you want more!')
    assert items(parse_instruction_list(text)) == ["Write a haiku.", "Name a fruit."]
    # a fence inside an item is the item's input, not the answer
    listed = "1. Fix this JSON:\n```json\n{\"a\": 1,}\n```\n2. Name a fruit."
    parsed = parse_instruction_list(listed)
    assert items(parsed) == ["Fix this JSON:", "Name a fruit."]
    assert parsed.items[0].input == '{"a": 1,}'


def test_a_code_block_under_an_item_is_its_input():
    """A `# comment` line in it ended the item as a heading and the rest of the code was
    dropped unrecorded; code without one was flattened into the instruction, fences and all."""
    text = ("10. Write a haiku about autumn.\n11. Explain what the following function does:\n"
            "```python\ndef keep_even(xs):\n    # keep only the even numbers\n"
            "    return [x for x in xs if x % 2 == 0]\n```\nKeep it short.\n12. Name a fruit.")
    parsed = parse_instruction_list(text)
    assert items(parsed) == ["Write a haiku about autumn.",
                             "Explain what the following function does: Keep it short.",
                             "Name a fruit."]
    assert parsed.items[1].input == ("def keep_even(xs):\n    # keep only the even numbers\n"
                                     "    return [x for x in xs if x % 2 == 0]")
    assert not parsed.discarded


def test_new_items_a_chat_model_numbers_from_1_are_not_taken_for_the_examples():
    """Nine or more items numbered from 1 had items 1-8 discarded as repeats of the prompt's 8
    examples, whatever they said."""
    examples = [f"Describe example task number {n} in detail." for n in range(1, 9)]
    new = [f"Write a short poem about the colour number {n}." for n in range(1, 11)]
    text = "".join(f"{n}. {t}\n" for n, t in enumerate(new, start=1))
    assert items(parse_instruction_list(text, examples=examples)) == new
    restated = "".join(f"{n}. {t}\n" for n, t in enumerate(examples + new[:2], start=1))
    parsed = parse_instruction_list(restated, examples=examples)
    assert items(parsed) == new[:2] and reasons(parsed) == [R.REPEATED_EXAMPLE] * 8


# -- placeholders and instance filters ------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "<noinput>", "<no input>", "No input.", "noinput", "None",
                                  "(no input)", "N/A", "(none)", "[none]", "-", "no-input",
                                  "Not applicable", "<No Input>", "'None'", " NULL ",
                                  # said as a sentence
                                  "There is no input for this task.", "There’s no input.",
                                  "This task does not require any input.", "None required.",
                                  "No input is needed for this instruction.",
                                  "(This task requires no input.)"])
def test_no_input_spellings(text):
    assert is_no_input(text) and normalize_input(text) == ""


@pytest.mark.parametrize("text", ["None of the above", "no", "Nothing to add here.",
                                  "noise level", "No further input from the customer was given "
                                  "after the call.", "Input is required by law."])
def test_real_inputs_are_kept(text):
    assert normalize_input(text) == text


@pytest.mark.parametrize("text", ["<No Output>", "N/A", "(none)", "---", "###", "", "<nooutput>",
                                  "[no output]", "..."])
def test_placeholder_outputs(text):
    assert placeholder_output(text) is not None


@pytest.mark.parametrize("text", ["None", "No", "0", "Positive", "N/A is short for not applicable."])
def test_real_outputs(text):
    assert placeholder_output(text) is None


@pytest.mark.parametrize("text", ["https://example.com/article", "www.example.com/a?b=1",
                                  "<Picture Attached>", "[image]", "<insert text here>",
                                  "(see attached file)", "[link to the article]"])
def test_unusable_inputs(text):
    assert unusable_input(text) is not None


def test_instance_filters_name_each_reason():
    kept, dropped, rejection = clean_instances([
        Instance("<Picture Attached>", "A cat."),
        Instance("https://example.com/x", "A summary."),
        Instance("", "<No Output>"),
        Instance("Is it sunny?", "---"),
        Instance("Great movie!", "Positive"),
    ])
    assert rejection is None and kept == [Instance("Great movie!", "Positive")]
    assert [d.reason for d in dropped] == [R.UNUSABLE_INPUT, R.UNUSABLE_INPUT,
                                           R.PLACEHOLDER_OUTPUT, R.PLACEHOLDER_OUTPUT]


@pytest.mark.parametrize("instruction, labels", [
    ("Classify the sentiment of the review as positive, negative or neutral.",
     {"positive", "negative", "neutral"}),
    ("Is the email spam? Answer Yes/No.", {"yes", "no"}),
    ('Label the sentence "formal" or "informal".', {"formal", "informal"}),
    ("Determine whether the statement is true or false.", {"true", "false"}),
    ("Sort the animal into mammal, bird, reptile or fish.",
     {"mammal", "bird", "reptile", "fish"}),
    ("Tell me the topic of the news article.", None),
])
def test_task_labels(instruction, labels):
    assert task_labels(instruction) == labels


def test_a_label_that_is_not_one_of_the_tasks_labels_is_dropped():
    instruction = "Classify the sentiment of the review as positive, negative or neutral."
    kept, dropped, _ = clean_instances(
        [Instance("I loved it.", "Positive"), Instance("Meh.", "Neutral sentiment"),
         Instance("Awful.", "Sarcastic")], is_classification=True, instruction=instruction)
    assert [i.output for i in kept] == ["Positive", "Neutral sentiment"]
    assert [d.reason for d in dropped] == [R.LABEL_NOT_IN_TASK]
    assert label_matches("The answer is negative", {"positive", "negative"})


@pytest.mark.parametrize("text, first, expected", [
    # a number alone on its line, and numbers without dots after a dotted one
    ("11: Rank the planets by size.\n12\nDesign a simple board game.\n13 Suggest five names.",
     None, ["Rank the planets by size.", "Design a simple board game.", "Suggest five names."]),
    # a number without its dot where no line has a dot
    (" Rank the planets by size.\n10 Design a simple board game.", 9,
     ["Rank the planets by size.", "Design a simple board game."]),
    ("9 Write a poem about rain.\n10 Name a fruit please.", None,
     ["Write a poem about rain.", "Name a fruit please."]),
    # a skipped index right after an Input: part still starts an item
    (" Sort it.\nInput: 10\n11. Explain recursion simply.", 9,
     ["Sort it.", "Explain recursion simply."]),
])
def test_numbers_without_dots_and_skipped_indexes(text, first, expected):
    assert items(parse_instruction_list(text, first_number=first)) == expected


def test_a_refusal_as_an_output_is_dropped():
    kept, dropped, rejection = clean_instances([
        Instance("Bonjour", "As an AI language model, I cannot translate text."),
        Instance("Hola", "Hello")])
    assert kept == [Instance("Hola", "Hello")]
    assert [d.reason for d in dropped] == [R.REFUSAL]


def test_a_classification_answer_in_the_input_first_layout_keeps_its_labels():
    text = " Example 1\nInput: The movie was wonderful.\nOutput: Positive\n\nExample 2\n" \
           "Input: I want my money back.\nOutput: Negative"
    parsed = parse_instances(text, output_first=True, starts_in_example=True)
    assert pairs(parsed) == [("The movie was wonderful.", "Positive"),
                             ("I want my money back.", "Negative")]


def test_refusals_in_classification_answers_are_refusals():
    whole = parse_instances(" I'm sorry, but I can't help with that.", output_first=True,
                            starts_in_example=True)
    assert reasons(whole) == [R.REFUSAL]
    kept, dropped, _ = clean_instances(
        [Instance("I'm sorry, but I cannot provide an example.", "Positive"),
         Instance("Great film.", "Positive")], is_classification=True)
    assert kept == [Instance("Great film.", "Positive")] and dropped[0].reason == R.REFUSAL


# -- the instance reader's line screen ------------------------------------------------------------

_BLANKS = ["", " ", "\t", "\xa0", "\u2003"]
_MARKS = ["", "", "#", "## ", "---", "***", "___", "===", "~~~", "1.", "(3)", "12", "٣.", "- ", "* ",
          "• ", "+ ", "**", "__", "`", "9) ", "x", "The ", "a) ", "(b) ", "C. ", "c.", "① ",
          "ii. ", "(iv)", "XII) ", "iV.", "vix.",
          "⑴", "9\ufe0f\u20e3 ", "\U0001f51f", "| "]
_WORDS = ["Input", "ınput", "İnput", "input 2", "OUTPUT", "Response", "answer", "Class label",
          "class  label", "label", "Example", "example #2", "Task 2", "new task", "Instruction",
          "Kelvin", "", "text"]
_ENDS = ["", ":", " : ", "**:", ": value", " x", "\t:"]
# Lines built to sit on every pattern's edge: blanks, a mark, a label word, a colon.
_LAYOUT_LINES = st.tuples(*(st.sampled_from(p) for p in (_BLANKS, _MARKS, _WORDS, _ENDS))).map(
    "".join)


@hypothesis.settings(max_examples=800, deadline=None)
@hypothesis.given(_LAYOUT_LINES | st.text(max_size=12))
def test_the_reader_screens_out_only_lines_no_layout_pattern_matches(line):
    """A line the screen calls content (or "starts with a label word") is one every skipped
    pattern would have turned down: the screen saves work and changes nothing."""
    from selfinstruct_tui.engine import parsing as p

    marks = (p._SEPARATOR, p._BARE_MARK, p._EXAMPLE_HEADER, p._LIST_MARK)
    labels = (p._IN_LABEL, p._OUT_LABEL, p._CLASS_LABEL)
    start = p._MAY_BE_LAYOUT.match(line)
    if start is None:
        assert not any(pattern.match(line) for pattern in marks + labels)
    elif start.group(1) is None:
        assert not any(pattern.match(line) for pattern in marks)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(_LAYOUT_LINES, max_size=6).map("\n".join))
def test_the_next_task_is_found_by_one_search_as_line_by_line(text):
    import re

    from selfinstruct_tui.engine import parsing as p

    one_line = re.compile(p._NEXT_TASK.pattern, re.IGNORECASE)
    lines = text.split("\n")
    first = 0  # a task line before any example's line is the task repeated back: skipped
    for n, line in enumerate(lines):
        if one_line.match(line):
            if not any(p._INSTANCE_LAYOUT.match(earlier) for earlier in lines[:n]):
                first = n + 1
            break
    expected = "\n".join(lines[first:])
    for n, line in enumerate(lines[first:], start=first):
        if one_line.match(line):
            expected = "\n".join(lines[first:n]) + ("\n" if n > first else "")
            break
    assert until_next_task(text) == expected


def _full_key(text):
    """The placeholder key computed in full for every text (what `_key` did before it learned
    to stop early on long texts): the reference the shortcut must agree with."""
    from selfinstruct_tui.engine import placeholders as p

    value = text.strip().lower()
    for _ in range(3):
        value = value.strip(" \t\r\n.\"'`*_")
        match = p._BRACKETED.match(value)
        if not match:
            break
        value = match.group(1)
    return p._INNER_HYPHEN.sub(" ", p._SPACES.sub(" ", value).strip())


_PADS = st.lists(st.sampled_from([" ", "  ", "\n", "\t", "_", "__", "\u2003", "\u00a0", ".", "*",
                                  "'", "(", ")", "<", ">", "[", "]", "-", "x"]), max_size=30)
_SPELLINGS = st.sampled_from(sorted({"no input", "n/a", "not applicable", "no additional input",
                                     "insert output here", "no output", "none", "tbd", "-",
                                     "input not required", "no input needed"}))


@hypothesis.settings(max_examples=1500, deadline=None)
@hypothesis.given(st.tuples(_PADS.map("".join), _SPELLINGS.map(
    lambda w: w.replace(" ", "_ \n")), _PADS.map("".join)).map("".join)
    | st.text(max_size=60) | st.lists(_SPELLINGS, min_size=1, max_size=8).map("  _ ".join))
def test_the_placeholder_key_stops_early_only_where_no_spelling_can_match(text):
    """Long texts skip the key's substitutions; every placeholder decision stays the same."""
    from selfinstruct_tui.engine import placeholders as p

    fast, full = p._key(text), _full_key(text)
    assert (fast in p._NO_INPUT, fast in p._NO_OUTPUT, bool(fast)) == \
        (full in p._NO_INPUT, full in p._NO_OUTPUT, bool(full))


# -- reasoning models ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer, only", [
    ("<think>\nList: 1. Cats.\n</think>\n\n9. Dogs.", "\n\n9. Dogs.", False),
    ("  <thinking>hmm</thinking>Yes", "Yes", False),
    ("the template opened it\n1. Not a task.\n</think>\nNo", "No", False),  # R1 chat template
    # text about the tags: a closing tag inside a line, or after an opening one, is text
    ("9. Explain the <think> and </think> tags.\n10. Bake.", "9. Explain the <think> and </think> "
     "tags.\n10. Bake.", False),
    ("9. Compare </think> with </p> in markup.", "9. Compare </think> with </p> in markup.", False),
    # later blocks on lines of their own go too, an unended one to the end
    ("<think>a</think>\n9. One.\n<think>\n10. musing\n</think>\n11. Two.", "\n9. One.\n\n11. Two.",
     False),
    ("9. One.\n  <thinking>\n10. musing to the end", "9. One.\n", False),
    ("<think>\nStill thinking about 1. Cats", "", True),
    ("<THINK>cut", "", True),
    ("Write about <think> tags in HTML.", "Write about <think> tags in HTML.", False),
    ("9. Plain answer.", "9. Plain answer.", False),
])
def test_a_reasoning_model_s_thinking_is_split_from_its_answer(text, answer, only):
    from selfinstruct_tui.engine.parsing import split_reasoning

    assert split_reasoning(text) == (answer, only)


def test_every_parser_reads_the_answer_after_the_thinking_and_names_a_cut_one():
    thinking = "<think>\nMaybe:\n1. Write a poem.\nInput: x\nOutput: y\nYes.\n</think>\n"
    assert items(parse_instruction_list(thinking + "1. Plan a picnic for six friends.",
                                        examples=EXAMPLES)) == ["Plan a picnic for six friends."]
    parsed = parse_instances(thinking + "Input: rain\nOutput: Museum.", output_first=False)
    assert [(i.input, i.output) for i in parsed.instances] == [("rain", "Museum.")]
    assert parse_classification(thinking + "No") is False
    assert parse_classification("<think>Yes, I think it is a classific") is None
    for parsed in (parse_instruction_list("<think>1. Write a poem about", examples=EXAMPLES),
                   parse_instances("<think>Input: rain", output_first=True)):
        [cut] = parsed.discarded
        assert cut.reason is R.TRUNCATED and "only the model's reasoning" in cut.detail
        assert ("generation_max_tokens" if hasattr(parsed, "items") else
                "instance_max_tokens") in cut.detail  # the stage's own setting
        assert cut.text.startswith("<think>")
        assert not getattr(parsed, "items", None) and not getattr(parsed, "instances", None)
