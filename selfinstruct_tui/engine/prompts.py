"""Prompts (this project's own text) and the parsers for the model's answers.

Completions mode (base models) keeps the paper's setting: few-shot prompts that the model continues.
Chat mode (chat models) asks for the same thing in messages and is parsed the same way.
The few-shot examples inside the classification and instance prompts come from the bundled seeds.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from selfinstruct_tui.engine.seeds import Instance, SeedTask, bundled_seeds_path, load_seeds

# The generation prompt shows 8 numbered examples; the model continues at 9 and stops before 16.
STOP_NUMBER = 16

GENERATION_HEADER = (
    "Below is a numbered list of different tasks that people ask a capable assistant to do. "
    "The tasks vary in topic, wording, format and difficulty; some come with an input to work "
    "on and some do not.\n"
)

CHAT_GENERATION_SYSTEM = (
    "You invent new task instructions for training a helpful, text-only assistant."
)

CLASSIFY_HEADER = (
    "For each task, say whether it is a classification task: a task whose answer is always one "
    "of a small, fixed set of labels (such as Yes/No, a sentiment, or a category).\n\n"
)

INSTANCE_HEADER = (
    "Write examples for each task. An example is an input and the output a careful expert would "
    "give for it. A task that needs no input gets 'Input: (none)'. Give up to five varied "
    "examples per task.\n\n"
)

LABEL_HEADER = (
    "Each task below sorts its input into one of a few class labels. For each task, go through "
    "its possible labels; under each label, write an input that belongs to it.\n\n"
)

NO_INPUT = "(none)"


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    stop: tuple[str, ...]


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]


# -- few-shot examples from the bundled seed set ---------------------------------------------

@functools.cache
def fewshot_pool() -> tuple[tuple[SeedTask, ...], tuple[SeedTask, ...], tuple[SeedTask, ...]]:
    """(classification, with-input, without-input) seed examples, chosen deterministically."""
    tasks = sorted(load_seeds(bundled_seeds_path()), key=lambda t: t.id)
    cls = tuple(t for t in tasks if t.is_classification)
    with_input = tuple(
        t for t in tasks if not t.is_classification and any(i.input for i in t.instances))
    without = tuple(
        t for t in tasks if not t.is_classification and not any(i.input for i in t.instances))
    return cls, with_input, without


def _classification_examples() -> list[tuple[str, bool]]:
    cls, with_input, without = fewshot_pool()
    yes = [t.instruction for t in cls[:5]]
    no = [t.instruction for t in with_input[:4] + without[:3]]
    # Interleave, and end on "No": most tasks are not classification, and small models copy the
    # label of the last example.
    out: list[tuple[str, bool]] = []
    for i in range(max(len(yes), len(no))):
        if i < len(yes):
            out.append((yes[i], True))
        if i < len(no):
            out.append((no[i], False))
    return out


def _instance_examples() -> list[SeedTask]:
    _, with_input, without = fewshot_pool()
    return list(with_input[:3] + without[:1])


def _label_examples() -> list[SeedTask]:
    cls, _, _ = fewshot_pool()
    return list(cls[:3])


# -- instruction generation ------------------------------------------------------------------

def generation_completion(instructions: list[str]) -> CompletionRequest:
    lines = [GENERATION_HEADER]
    for number, instruction in enumerate(instructions, start=1):
        lines.append(f"{number}. {_one_line(instruction)}\n")
    lines.append(f"{len(instructions) + 1}.")
    stop = ("\n\n", f"\n{STOP_NUMBER}", f"{STOP_NUMBER}.", f"{STOP_NUMBER} .")
    return CompletionRequest("".join(lines), stop)


def generation_chat(instructions: list[str], new_count: int) -> ChatRequest:
    listed = "".join(f"{n}. {_one_line(i)}\n" for n, i in enumerate(instructions, start=1))
    user = (
        f"Here are some example tasks:\n{listed}\n"
        f"Write {new_count} new tasks, different from these and from each other. Vary the topic, "
        "the verb, the length and the format; mix tasks that need an input with tasks that do "
        "not; keep each task to one or two sentences. Leave out tasks that need images, audio, "
        "files or actions in the world. Answer with the numbered list only, numbered from "
        f"{len(instructions) + 1}."
    )
    return ChatRequest(({"role": "system", "content": CHAT_GENERATION_SYSTEM},
                        {"role": "user", "content": user}))


_ITEM_RE = re.compile(r"(?m)^[ \t]*(?:\*\*)?(\d{1,3})[ \t]*[.)][ \t]*")
_LEAD_RE = re.compile(r"^(?:\*\*)?(?:task|instruction)\s*\d*\s*:\s*(?:\*\*)?\s*", re.IGNORECASE)


def clean_instruction(text: str) -> str:
    text = re.sub(r"\s+", " ", text.replace("**", "")).strip()
    text = _LEAD_RE.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    if text:
        text = text[0].upper() + text[1:]
    return text


def parse_instruction_list(text: str, first_number: int | None = None) -> list[str]:
    """Split a numbered list into instructions.

    In completions mode the prompt ends with "9." so the response starts mid-item: pass
    `first_number` and the text is read as if it started with that number.
    """
    if first_number is not None and not _ITEM_RE.match(text):
        text = f"{first_number}. {text.lstrip()}"
    matches = list(_ITEM_RE.finditer(text))
    items = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        item = clean_instruction(text[match.end():end])
        if item:
            items.append(item)
    return items


# -- classification ----------------------------------------------------------------------------

def classification_completion(instruction: str) -> CompletionRequest:
    parts = [CLASSIFY_HEADER]
    for example, is_cls in _classification_examples():
        parts.append(f"Task: {_one_line(example)}\nClassification: {'Yes' if is_cls else 'No'}\n\n")
    parts.append(f"Task: {_one_line(instruction)}\nClassification:")
    return CompletionRequest("".join(parts), ("\n", "Task:"))


def classification_chat(instruction: str) -> ChatRequest:
    shots = "".join(
        f"Task: {_one_line(e)}\nClassification: {'Yes' if c else 'No'}\n\n"
        for e, c in _classification_examples())
    user = f"{shots}Task: {_one_line(instruction)}\nClassification:"
    system = CLASSIFY_HEADER.strip() + " Answer with Yes or No only."
    return ChatRequest(({"role": "system", "content": system}, {"role": "user", "content": user}))


def parse_classification(text: str) -> bool | None:
    word = re.sub(r"[^a-z]", " ", text.lower()).split()
    if not word:
        return None
    if word[0] == "yes":
        return True
    if word[0] == "no":
        return False
    return None


# -- instances ---------------------------------------------------------------------------------

def _input_text(value: str) -> str:
    # Inputs keep their line breaks (code, lists); the parser splits on the field markers.
    return value.strip() if value.strip() else NO_INPUT


def _instance_shots() -> str:
    parts = []
    for task in _instance_examples():
        parts.append(f"Task: {_one_line(task.instruction)}\n")
        for n, inst in enumerate(task.instances[:5], start=1):
            parts.append(f"Example {n}\nInput: {_input_text(inst.input)}\nOutput: {inst.output}\n")
        parts.append("\n")
    return "".join(parts)


def _label_shots() -> str:
    parts = []
    for task in _label_examples():
        parts.append(f"Task: {_one_line(task.instruction)}\n")
        for inst in task.instances[:5]:
            parts.append(f"Class label: {_one_line(inst.output)}\nInput: {_input_text(inst.input)}\n")
        parts.append("\n")
    return "".join(parts)


def instances_completion(instruction: str, is_classification: bool) -> CompletionRequest:
    if is_classification:
        prompt = f"{LABEL_HEADER}{_label_shots()}Task: {_one_line(instruction)}\nClass label:"
        return CompletionRequest(prompt, ("\nTask", "\n\n\n"))
    prompt = f"{INSTANCE_HEADER}{_instance_shots()}Task: {_one_line(instruction)}\nExample 1\n"
    return CompletionRequest(prompt, ("\nTask", "Example 6"))


def instances_chat(instruction: str, is_classification: bool) -> ChatRequest:
    if is_classification:
        system = LABEL_HEADER.strip() + (
            " Use exactly this format: 'Class label: ...' on one line, 'Input: ...' on the next.")
        user = f"{_label_shots()}Task: {_one_line(instruction)}"
    else:
        system = INSTANCE_HEADER.strip() + (
            " Use exactly this format: 'Example N', then 'Input: ...', then 'Output: ...'.")
        user = f"{_instance_shots()}Task: {_one_line(instruction)}"
    return ChatRequest(({"role": "system", "content": system}, {"role": "user", "content": user}))


def _clean_field(value: str) -> str:
    value = value.strip()
    if value.lower() in {"(none)", "none", "n/a", "<noinput>", "no input", "(no input)", "-"}:
        return ""
    return value


_EXAMPLE_RE = re.compile(r"(?im)^[ \t]*(?:\*\*)?example[ \t]*\d*[ \t]*[.:]?(?:\*\*)?[ \t]*$")
_INPUT_RE = re.compile(r"(?im)^[ \t]*(?:\*\*)?input[ \t]*\d*[ \t]*:(?:\*\*)?")
_OUTPUT_RE = re.compile(r"(?im)^[ \t]*(?:\*\*)?output[ \t]*\d*[ \t]*:(?:\*\*)?")
_LABEL_RE = re.compile(r"(?im)^[ \t]*(?:\*\*)?class[ \t]+label[ \t]*:(?:\*\*)?")
# Small models run on into the next task ("Task 2", "Task: ..."): nothing after it belongs here.
_NEXT_TASK_RE = re.compile(r"(?im)^[ \t]*(?:\*\*)?task\b[ \t]*(?:\d+|:)")


def _until_next_task(text: str) -> str:
    match = _NEXT_TASK_RE.search(text)
    return text[: match.start()] if match else text


def parse_input_first(text: str, starts_in_example: bool = False) -> list[Instance]:
    """Blocks of 'Example N / Input: ... / Output: ...'. A block without 'Output:' is dropped."""
    if starts_in_example:
        text = "Example 1\n" + text
    text = _until_next_task(text)
    blocks = _EXAMPLE_RE.split(text)
    if len(blocks) == 1:  # no "Example" headers: read consecutive Input/Output pairs
        blocks = re.split(r"(?im)(?=^[ \t]*input[ \t]*\d*[ \t]*:)", text)
    instances = []
    for block in blocks:
        out_match = _OUTPUT_RE.search(block)
        if not out_match:
            continue
        head, output = block[: out_match.start()], block[out_match.end():]
        in_match = _INPUT_RE.search(head)
        inp = head[in_match.end():] if in_match else ""
        instances.append(Instance(_clean_field(inp), output.strip()))
    return instances


def parse_output_first(text: str, starts_in_label: bool = False) -> list[Instance]:
    """Blocks of 'Class label: X / Input: ...'; the label is the output."""
    if starts_in_label:
        text = "Class label:" + text
    text = _until_next_task(text)
    starts = [m for m in _LABEL_RE.finditer(text)]
    instances = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        block = text[match.end():end]
        in_match = _INPUT_RE.search(block)
        if not in_match:
            continue
        label = block[: in_match.start()].strip()
        inp = block[in_match.end():].strip()
        instances.append(Instance(_clean_field(inp), label))
    return instances


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())
