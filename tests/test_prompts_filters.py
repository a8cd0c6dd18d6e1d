"""Parsing the model's answers, and every rejection reason of the filters."""

from __future__ import annotations

import pytest

from selfinstruct_tui.engine import prompts as P
from selfinstruct_tui.engine.filters import FilterSettings, RejectionReason, check_instruction, \
    clean_instances
from selfinstruct_tui.engine.parsing import parse_classification, parse_instances, \
    parse_instruction_list
from selfinstruct_tui.engine.seeds import Instance


def test_completion_prompt_numbers_examples_and_stops_at_16():
    req = P.generation_completion([f"Task number {i}." for i in range(8)])
    assert req.prompt.endswith("8. Task number 7.\n9.")
    assert "\n16" in req.stop and "16." in req.stop


def test_parse_completion_continuation():
    text = " Write a poem about rain.\n10. Sort the list of numbers.\n11.   **List** three fruits "
    parsed = parse_instruction_list(text, first_number=9)
    assert [i.instruction for i in parsed.items] == [
        "Write a poem about rain.", "Sort the list of numbers.", "List three fruits"]
    assert [i.number for i in parsed.items] == [9, 10, 11]


def test_parse_chat_list_with_markdown_and_prefixes():
    text = ("Sure! Here are new tasks:\n9. **Task:** explain tides to a child.\n"
            "10) \"Summarize the email in one line.\"\n\n11. Instruction: rank the cities\n"
            "by population.")
    assert [i.instruction for i in parse_instruction_list(text).items] == [
        "Explain tides to a child.", "Summarize the email in one line.",
        "Rank the cities by population."]


def test_parse_classification():
    assert parse_classification(" Yes") is True
    assert parse_classification("no.") is False
    assert parse_classification("Maybe") is None


def pairs(parsed):
    return [Instance(i.input, i.output) for i in parsed.instances]


def test_parse_input_first_instances():
    text = ("Input: (none)\nOutput: A haiku.\n\nExample 2\nInput: 3, 1, 2\nOutput: 1, 2, 3\n"
            "\nExample 3\nInput: broken without output\n")
    parsed = parse_instances(text, output_first=False, starts_in_example=True)
    assert pairs(parsed) == [Instance("", "A haiku."), Instance("3, 1, 2", "1, 2, 3")]
    assert [f.reason for f in parsed.discarded] == [RejectionReason.MISSING_OUTPUT]


def test_instances_stop_where_the_model_runs_on_into_another_task():
    text = "Input: (none)\nOutput: Blue is calm.\n\nTask 2\nWrite a story about a dog.\nOutput: x"
    assert pairs(parse_instances(text, output_first=False)) == [Instance("", "Blue is calm.")]
    text = " Positive\nInput: Great!\nTask: Rate this.\nClass label: Negative\nInput: Bad."
    assert pairs(parse_instances(text, output_first=True, starts_in_example=True)) == [
        Instance("Great!", "Positive")]
    # the reference's stop ("Task:"): "\nTask" also stopped at an output's "Task 1: ..." line
    for output_first in (False, True):
        stop = P.instances_completion("Sort words.", output_first).stop
        assert "\nTask:" in stop and "\nTask" not in stop


def test_parse_output_first_instances():
    text = " Positive\nInput: I love it.\nClass label: Negative\nInput: Awful.\n"
    assert pairs(parse_instances(text, output_first=True, starts_in_example=True)) == [
        Instance("I love it.", "Positive"), Instance("Awful.", "Negative")]


def test_few_shot_examples_come_from_the_bundled_seeds():
    req = P.classification_completion("Is it raining?")
    assert req.prompt.count("Classification: Yes") >= 3
    assert req.prompt.rstrip().endswith("Task: Is it raining?\nClassification:")
    assert "Example 1" in P.instances_completion("Sort words.", False).prompt
    assert P.instances_completion("Label it.", True).prompt.endswith("Class label:")


@pytest.mark.parametrize("instruction, reason", [
    ("Sort it now", RejectionReason.TOO_SHORT),
    ("word " * 151, RejectionReason.TOO_LONG),
    ("Draw a cat in the style of Picasso.", RejectionReason.BLACKLISTED_WORD),
    ("Summarize the attached files for me.", RejectionReason.BLACKLISTED_WORD),
    ("Tell me how to go to the station from here.", RejectionReason.BLACKLISTED_WORD),
    ("Write a program that sorts numbers quickly.", RejectionReason.WRITE_A_PROGRAM),
    ("- List three fruits you like.", RejectionReason.STARTS_WITH_PUNCTUATION),
    ("Écris un poème sur la mer.", RejectionReason.STARTS_WITH_NON_ASCII),
])
def test_each_heuristic_filter(instruction, reason):
    rejection = check_instruction(instruction.strip(), FilterSettings())
    assert rejection is not None and rejection.reason == reason


def test_passing_instruction_and_non_ascii_switch():
    assert check_instruction("Give three tips for better sleep.", FilterSettings()) is None
    assert check_instruction("Écris un poème sur la mer.",
                             FilterSettings(reject_non_ascii_start=False)) is None
    # whole words only: "profile" contains "file" but is fine
    assert check_instruction("Improve my profile summary for a job site.", FilterSettings()) is None


def test_instance_filters():
    kept, dropped, rejection = clean_instances([
        Instance("a", ""),            # empty output
        Instance("same", "same"),     # input equals output
        Instance("Question:", "x"),   # ends with ':'
        Instance("q", "answer:"),     # ends with ':'
        Instance("q", "fine"),
        Instance("q", "fine"),        # exact duplicate
    ])
    assert rejection is None and kept == [Instance("q", "fine")]
    assert [d.reason for d in dropped] == [
        RejectionReason.EMPTY_OUTPUT, RejectionReason.INPUT_EQUALS_OUTPUT,
        RejectionReason.ENDS_WITH_COLON, RejectionReason.ENDS_WITH_COLON,
        RejectionReason.DUPLICATE_INSTANCE]
    _, _, rejection = clean_instances([Instance("2+2", "4"), Instance("2+2", "5")])
    assert rejection.reason == RejectionReason.CONFLICTING_OUTPUTS
    _, dropped, rejection = clean_instances([Instance("x", "")])
    assert rejection.reason == RejectionReason.NO_VALID_INSTANCES
    assert "empty output 1" in rejection.detail


def test_a_quoted_text_cut_in_a_detail_says_so():
    """Details quote the text they are about, cut to a length. The cut was silent: a quote of
    60 characters ended mid-word inside its quotes ('... the long', for '... the longest
    river'), read as the whole input or label. A cut quote ends with an ellipsis; a short one
    is whole."""
    long_input = "Name the country that holds the longest river of the continent and its source."
    _, _, rejection = clean_instances([Instance(long_input, "Egypt"),
                                       Instance(long_input, "Uganda")])
    assert rejection.reason == RejectionReason.CONFLICTING_OUTPUTS
    assert f"{long_input[:59]}…'" in rejection.detail
    _, _, rejection = clean_instances([Instance("2+2", "4"), Instance("2+2", "5")])
    assert "input '2+2' has" in rejection.detail
    long_label = "Mostly positive, although the second half of the review is negative"
    _, dropped, _ = clean_instances(
        [Instance("Great phone.", long_label), Instance("Bad phone.", "negative")],
        is_classification=True,
        instruction="Classify the review as positive or negative.")
    assert [d.reason for d in dropped] == [RejectionReason.LABEL_NOT_IN_TASK]
    assert f"label '{long_label[:39]}…' is not" in dropped[0].detail
