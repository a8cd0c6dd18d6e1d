"""Reading what models write: instruction lists, classification answers and instances.

Every parser returns what it read *and* what it set aside, each fragment with a
`RejectionReason`, so a run can account for every piece of a paid answer.

Instruction lists (`parse_instruction_list`) accept the layouts base and chat models write:
* numbered items `9. ...`, `9) ...`, `(9) ...`, `9: ...`, a number without its dot when it is the
  next number (`10 Suggest ...`), `Task 9:` / `**Task 9:**` / `### Task 9` headers, any index
  (a model that numbers from 1 or skips a number still gives its items); enclosed numbers
  (`⑨`, `⑴`, `❾`), keycaps (`9️⃣`, `1️⃣0️⃣`), letters (`a)`, `(b)`, `C.`, `ⓐ`, `Ⓐ`, `⒜`, in a run
  from a) and
  roman numerals (`ii.`, `(iv)`, `IV)`, in a run from i); the items are the markers of one
  kind, and markers of another kind under an item are its sub-list (`9. Pick one:` then
  `a) red`, `b) blue`);
* a markdown table, one row per item (an `Instruction` column, `#` and `Input` columns read);
* bulleted items (`-`, `*`, `•`) when there is no numbered item, and `Instruction:` label lines
  when there is neither;
* items run together on one line (`... tides. 10. Draft ...`, `... tides. ⑩ Draft ...`);
* the value on the line after its number (`10.` then `Give ...`); `###`, `---` separators;
* `Instruction:` / `**Instruction:**` labels; an `Input:` / `Output:` part under an item is not
  part of the instruction, and an item that is only such a label is not an instruction;
* a preamble ("Sure! Here are ...") and an epilogue ("Let me know ...") are never items;
* a model that repeats the prompt's examples before its new items: the repeats are set aside
  as `repeated_example`, the new items are kept;
* a refusal ("I'm sorry, but I can't ...") is set aside as `refusal`;
* a response cut by the token limit keeps its complete items; only the cut one is `truncated`;
* JSON answers (structured output, or a chat model that answers in JSON anyway);
* the list in one code fence, with a sentence around it (`_unfenced`).

Instances (`parse_instances`) accept `Example N` blocks, plain `Input:`/`Output:` pairs,
pairs under any list marker (`1. Input: ... Output: ...`, `- Input: ...`, `a) Input: ...`,
`ii) Input: ...` in a run of valid numerals, `① Input: ...`), both labels on one line, a
markdown table (`| Input | Output |`, `| Class label | Input |`, two other columns when they can
be told apart: `| Sentence | Mood |` for a classification task, `| Question | Answer |`; a row
with more cells than its header is rejected), and JSON; the
output-first layout reads `Class label: ...` then `Input: ...`. An output ends at a separator
line, at the next example, and at the start of another task, in the forms models use (also
under a lettered or roman marker, `b) Instruction: ...`).
A misspelled or missing label sets the example aside with the layout that was expected; it never
becomes an example with an empty input. The examples in one code fence are read as unfenced, a
fence around each example is no part of its fields, "I hope this helps!" after the last example
is not its output's, and a class label loses its quotes and a lone final dot.

Every entry point reads "\\r\\n" and a lone "\\r" as a line end, a no-break space in the layout
(an indent, after a marker) as a space and a full-width colon after a label ("Input：") as ":"
(`normalize_layout`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from selfinstruct_tui.engine.filters import RejectionReason as R
from selfinstruct_tui.engine.placeholders import is_refusal, normalize_input
from selfinstruct_tui.engine.records import json_type_name
from selfinstruct_tui.engine.seeds import short_text


@dataclass(frozen=True)
class Fragment:
    """A piece of a model's answer that was set aside: its raw text, why, and a detail."""

    text: str
    reason: R
    detail: str


@dataclass(frozen=True)
class ListItem:
    """One instruction read from a list. `number` is the model's own index, when it gave one."""

    instruction: str
    raw: str
    number: int | None = None
    input: str = ""


@dataclass
class ParsedList:
    items: list[ListItem] = field(default_factory=list)
    discarded: list[Fragment] = field(default_factory=list)


@dataclass(frozen=True)
class RawInstance:
    input: str
    output: str
    raw: str


@dataclass
class ParsedInstances:
    instances: list[RawInstance] = field(default_factory=list)
    discarded: list[Fragment] = field(default_factory=list)


# -- shared pieces ----------------------------------------------------------------------------

_MD = r"[*_`]*"
# After a label's colon: emphasis closing the label, never backticks (an output may start with a
# code fence) nor the emphasis of the content itself.
_EMPH = r"(?:[*_]+(?=\s|$))?"
# Chat templates' control tokens that leak into text when a server does not strip them.
_SPECIAL_TOKEN = re.compile(
    r"<\|(?:im_end|im_start|eot_id|end_of_text|endoftext|end|assistant|user|system)\|>|</s>|"
    r"<eos>|<end_of_turn>|<start_of_turn>|\[/?INST\]", re.IGNORECASE)
_SEPARATOR = re.compile(r"^[ \t]*(?:#{1,6}|-{3,}|\*{3,}|_{3,}|={3,}|~{3,})[ \t]*$")
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+\S")
_PREAMBLE = re.compile(
    r"^\W*(?:sure|certainly|of course|okay|ok|absolutely|great|here (?:are|is)|below (?:are|is)|"
    r"the following)\b", re.IGNORECASE)
_EPILOGUE = re.compile(
    r"^\W*(?:let me know|i hope|hope (?:this|these|that|you)|feel free|these (?:tasks|instructions|"
    r"are|should|cover|span|range|include|vary)|each (?:task|instruction) (?:is|was|has|should|can|"
    r"tests|covers)|all (?:of )?(?:these|the) (?:tasks|instructions)|this list|note:|i['’]ve |"
    r"i have |enjoy|happy |good luck|if you (?:need|want|"
    r"would|'d)|would you like|do you want|please let|i can (?:also|provide|generate|write))",
    re.IGNORECASE)


def normalize_line_ends(text: str) -> str:
    """The text with each "\\r\\n" and lone "\\r" (old Mac tool chains) made "\\n", as every
    parser reads lines; U+2028 and U+0085 stay text. Each public entry point calls it once."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


# Unicode spaces a model (or a tool chain that turned HTML into text) writes where the layout has a
# space: no-break, narrow no-break, figure, en/em/thin spaces; the ideographic space (U+3000) only
# after a marker, as CJK text indents its paragraphs with it.
_UNICODE_SPACES = "\u00a0\u2000-\u200a\u202f"
_MAYBE_LAYOUT_SPACE = re.compile(f"[{_UNICODE_SPACES}\u3000]")
_LAYOUT_SPACE = re.compile(
    f"^[ \t{_UNICODE_SPACES}]*[{_UNICODE_SPACES}][ \t{_UNICODE_SPACES}]*|"  # an indent
    f"(?<=[.):：\\]*#•\\-])[{_UNICODE_SPACES}\u3000]|"  # after a marker or a label's colon
    f"[{_UNICODE_SPACES}](?=[:：])", re.MULTILINE)  # before a colon ("Input\u00a0:", French)
_AS_SPACE = {code: " " for code in (0xa0, *range(0x2000, 0x200b), 0x202f, 0x3000)}
# A full-width colon after a label in Latin letters ("Input：", "**Task 9**：", "Class label："),
# at a line's start or an inline "Output："; CJK text's own "注意：" is not a label's.
_WIDE_COLON_LABEL = re.compile(
    r"(^[ \t]*[^\w\n]{0,8}(?:\d{1,3}[.)][ \t]*)?[*_`]*[ \t]*[A-Za-z][A-Za-z0-9 #()\t-]{0,30}?"
    r"[*_`]*[ \t]*|\b(?:input|output|label|answer|response)[*_`]*[ \t]*)：",
    re.MULTILINE | re.IGNORECASE)


# The prompt's labels as Chinese models translate them, at a line's start before a colon:
# "任务 9：", "输入：", "输出：", "类别标签：", "示例 2：" (the English label, its number kept).
_CJK_LABELS = {"任务": "Task", "指令": "Instruction", "输入": "Input", "输出": "Output",
               "类别标签": "Class label", "标签": "Class label", "示例": "Example",
               "例子": "Example"}
_MAYBE_CJK_LABEL = re.compile("|".join(_CJK_LABELS))
_CJK_LABEL = re.compile(
    r"^([ \t]*(?:\d{1,3}[.)][ \t]*)?[*_]*[ \t]*)(" + "|".join(_CJK_LABELS) +
    r")[ \t]*(\d{0,3})[ \t]*([*_]*)[ \t]*[：:][ \t]*", re.MULTILINE)


_CJK_EXAMPLE = re.compile(r"^([ \t]*(?:#{1,6}[ \t]*)?[*_]*[ \t]*)(?:示例|例子)[ \t]*(\d{1,3})"
                          r"([ \t]*[*_]*[ \t]*)$", re.MULTILINE)  # "示例 2" alone on its line


def _english_label(match: re.Match[str]) -> str:
    number = f" {match.group(3)}" if match.group(3) else ""
    return f"{match.group(1)}{_CJK_LABELS[match.group(2)]}{number}{match.group(4)}: "


def normalize_layout(text: str) -> str:
    """`normalize_line_ends`, then the layout's spaces and colons in the forms the parsers
    read: a Unicode space (no-break, narrow no-break, ...) in an indent, after a list marker's
    or a label's mark (".", ")", ":", "*", "-", ...) or before a colon is a space (elsewhere in
    the text it stays); a full-width colon
    after a label in Latin letters ("Input：", "Task 9：") is ": ", and a label in Chinese at
    a line's start ("任务 9：", "输入：", "类别标签：") is the prompt's English one. Each public
    entry point calls it once."""
    text = normalize_line_ends(text)
    if text.isascii():  # no Unicode space, wide colon or Chinese label: ~0.1 us, not ~20
        return text
    if _MAYBE_LAYOUT_SPACE.search(text):
        text = _LAYOUT_SPACE.sub(lambda m: m.group().translate(_AS_SPACE), text)
    if "：" in text or ":" in text and _MAYBE_CJK_LABEL.search(text):
        text = _CJK_LABEL.sub(_english_label, text)
    if "示例" in text or "例子" in text:
        text = _CJK_EXAMPLE.sub(r"\1Example \2\3", text)
    if "：" in text:
        text = _WIDE_COLON_LABEL.sub(r"\1: ", text)  # (the wide colon holds its own space)
    return text


def _cut_special_tokens(text: str) -> str:
    match = _SPECIAL_TOKEN.search(text)
    return text[: match.start()] if match else text


# Reasoning models think before they answer: "<think>...</think>" then the answer (DeepSeek-R1,
# Qwen3, QwQ), or only the closing tag, ending its line, when the chat template opened the block in
# the prompt. An endpoint that returns the reasoning apart (reasoning_content) gets the same form
# from the client when no answer came (`llm.read_answer`).
_THINK_OPEN = re.compile(r"^\s*<(think|thinking)>", re.IGNORECASE)
_THINK_CLOSE = {"think": re.compile(r"</think>", re.IGNORECASE),
                "thinking": re.compile(r"</thinking>", re.IGNORECASE)}
_TEMPLATE_CLOSE = re.compile(r"</(?:think|thinking)>[ \t]*(?:\n|$)", re.IGNORECASE)
_ANY_OPEN = re.compile(r"<(?:think|thinking)>", re.IGNORECASE)
# A later block of thinking on lines of its own (interleaved, or after the first), up to its end
# or the end of the answer.
_LATER_BLOCK = re.compile(r"^[ \t]*<(think|thinking)>.*?(?:</\1>[ \t]*|\Z)",
                          re.IGNORECASE | re.MULTILINE | re.DOTALL)


def reasoning_only_detail(setting: str) -> str:
    """Why an answer that is all reasoning is rejected, and the fix (`setting`: the stage's
    max_tokens setting)."""
    return ("the answer is only the model's reasoning, with no answer after it: turn the "
            "model's thinking off (--extra-body, also on resume) or give this stage more tokens "
            f"in a new run ({setting} in the config file)")


def split_reasoning(text: str) -> tuple[str, bool]:
    """(the answer without the model's reasoning, whether the text was reasoning only).

    Reasoning is a block that opens the answer (`<think>` or `<thinking>`, any case) up to its
    closing tag; without an opening tag, the text up to a closing tag that ends its line (the
    chat template opened it) unless a `<think>` comes before it (text about the tags); and any
    later block on lines of its own. A closing tag inside a line of ordinary text is text.
    Line ends are made "\\n" (`normalize_line_ends`)."""
    return _split_reasoning(normalize_line_ends(text))


def _split_reasoning(text: str) -> tuple[str, bool]:
    """`split_reasoning` of a text whose line ends are "\\n"."""
    opened = _THINK_OPEN.match(text)
    if opened is not None:
        close = _THINK_CLOSE[opened.group(1).lower()].search(text, opened.end())
        if close is None:
            return "", True
        text = text[close.end():]
    else:
        close = _TEMPLATE_CLOSE.search(text)
        if close is not None and _ANY_OPEN.search(text, 0, close.start()) is None:
            text = text[close.end():]
    if "<" in text:
        text = _LATER_BLOCK.sub("", text)
    return text, False


def _answer_part(text: str, setting: str) -> tuple[str, Fragment | None]:
    """(the answer without control tokens and reasoning, its line ends "\\n"; None), or ("", the
    rejected fragment) when the text is reasoning only (`setting`: the stage's max_tokens
    setting)."""
    cut = _cut_special_tokens(normalize_layout(text))
    answer, reasoning_only = _split_reasoning(cut)
    if reasoning_only:
        return "", Fragment(cut.strip()[:2000], R.TRUNCATED, reasoning_only_detail(setting))
    return answer, None


def is_reasoning_only(text: str) -> bool:
    """The answer is all reasoning: its <think> block never ended (cut off, or no answer)."""
    return _split_reasoning(_cut_special_tokens(normalize_line_ends(text)))[1]


_WHITESPACE = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w]+")
_CODE_FENCE = re.compile(r"^```[\w-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def one_line(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _norm_key(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


@functools.lru_cache(maxsize=4096)
def _example_key(text: str) -> str:
    """`_norm_key` of a prompt's example instruction: the pool's tasks recur in prompt after
    prompt, and their keys were a tenth of reading a generation answer."""
    return _norm_key(text)


def strip_code_fence(text: str) -> str:
    """The text without surrounding whitespace and, when it is one fenced block (```json ...
    ```), without the fence."""
    stripped = text.strip()
    match = _CODE_FENCE.match(stripped)
    return match.group(1) if match else stripped


_FENCED = re.compile(r"^[ \t]*```[\w-]*[ \t]*\n(.*?)\n?[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)


def json_text(text: str, layout: re.Pattern[str] | None = None) -> str:
    """The JSON of an answer: the whole text, or the one fenced block holding JSON (`{` or
    `[` first) when a sentence comes before or after it ("Here are the tasks in JSON:", "Let
    me know ..."), as chat models on endpoints that ignore `response_format` write it; else
    the text stripped (see `strip_code_fence`). `layout`: a line of the text layout outside
    that block (a numbered item, an `Input:` label) means the block is part of a text answer
    (an output that is JSON), and the whole text is returned."""
    body = strip_code_fence(text)
    if body[:1] in ("{", "["):
        return body
    blocks = [m for m in _FENCED.finditer(text) if m.group(1).lstrip()[:1] in ("{", "[")]
    if len(blocks) != 1:
        return body
    block = blocks[0]
    outside = text[:block.start()] + text[block.end():]
    if layout is not None and any(layout.match(line) for line in outside.split("\n")):
        return body
    return block.group(1).strip()


def _unfenced(text: str, layout: Callable[[str], object]) -> str:
    """The answer without a code fence around its whole layout: chat models put the list or
    the examples in one fenced block (```, ```markdown, ```text), with or without a sentence
    before or after it, and a cut answer's block never closes. When the answer has one or two
    fence lines, a line of the layout (`layout(line)` true) between them and none outside (a
    code block under an item or in an output is that one's), the fence lines are made blank
    lines, so the block is read as the answer and the text around it as paragraphs of their
    own (a preamble, a remark, or the start of a completion's first item); else the text as it
    is."""
    if "```" not in text:
        return text
    lines = text.split("\n")
    fences = [n for n, line in enumerate(lines) if line.lstrip().startswith("```")]
    if not 1 <= len(fences) <= 2:
        return text
    start, end = fences[0], fences[1] if len(fences) == 2 else len(lines)
    if not any(layout(line) for line in lines[start + 1:end]) or any(
            layout(line) for line in lines[:start] + lines[end + 1:]):
        return text
    for n in fences:
        lines[n] = ""
    return "\n".join(lines)


def _list_layout(line: str) -> bool:
    """A line of an instruction list: a numbered, lettered or bulleted item, a label, a
    table's rule."""
    return bool(_LIST_LAYOUT.match(line) or _BULLET.match(line) or _LETTERED.match(line)
                or _TABLE_RULE.match(line))


def _instances_layout(line: str) -> bool:
    """A line of an instance answer: a label, an example's header, a table's rule."""
    return bool(_INSTANCE_LAYOUT.match(line) or _TABLE_RULE.match(line))


# -- list markers -----------------------------------------------------------------------------

# One notion of a list item's marker, whatever a model numbers its items with: digits ("9.",
# "(9)", "９．"), an enclosed number ("⑨", "⑴", "⒐", "❾", "㉑"), keycap emoji ("9️⃣", "1️⃣0️⃣",
# "🔟"), a letter ("a)", "(b)", "C.", "d.", "ⓐ") or a roman numeral ("iv.", "(ii)", "IV)"), which
# are markers only in a run that goes a, b, c ... or i, ii, iii ... (`_lettered_markers`).
# `marker_kind` names which; a list's items share one kind, and markers of another kind under an
# item are its sub-list.
_ENCLOSED = "\u2460-\u249b\u24ea-\u24ff\u2776-\u2793\u3251-\u325f\u32b1-\u32bf"
_KEYCAPS = "(?:\\d\ufe0f?\u20e3)+|\U0001f51f"
_SYMBOL_INDEX = rf"[{_ENCLOSED}]|{_KEYCAPS}"
# letters in a circle or in brackets ("ⓐ", "Ⓐ", "⒜"): a style of lettered marker of their own
_CIRCLED_LETTERS = "\u249c-\u24e9"
_CIRCLED_LETTER = re.compile(f"[{_CIRCLED_LETTERS}]")
# a letter, or a roman numeral of one case from 2 to 39 ("iv", "XII"; not "vix" or "iiii"; a
# list's run checks its place)
_LETTERS_INDEX = (r"[A-Za-z]|(?=[ivx]{2})x{0,3}(?:ix|iv|vi{0,3}|i{1,3})?|"
                  r"(?=[IVX]{2})X{0,3}(?:IX|IV|VI{0,3}|I{1,3})?")
# any marker at the start of an instance answer's line: "1.", "(3)", "a)", "iv.", "①", "9️⃣", a
# bullet
_ANY_MARK = (rf"\(?\d{{1,2}}[.):]|\((?:{_LETTERS_INDEX})\)|(?:{_LETTERS_INDEX})[.)]|"
             rf"{_SYMBOL_INDEX}|[{_CIRCLED_LETTERS}]|[-*•+]")
_LETTERED = re.compile(
    rf"^[ \t]*{_MD}[ \t]*(?:(?:\((?P<paren>{_LETTERS_INDEX})\)|(?P<letter>{_LETTERS_INDEX})"
    rf"(?P<end>[.)])){_MD}[ \t]+|(?P<circled>[{_CIRCLED_LETTERS}])[.)]?{_MD}[ \t]*)"
    rf"{_MD}[ \t]*(?P<rest>\S.*)$")
# the first of each circled style: ⒜ (parenthesized), Ⓐ (circled capital), ⓐ (circled small)
_CIRCLED_BASES = (0x249c, 0x24b6, 0x24d0)


def _roman(value: int) -> str:
    """`value` (1-39) as a lower-case roman numeral: 4 "iv", 12 "xii"."""
    ones = ("", "i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix")
    return "x" * (value // 10) + ones[value % 10]


_ROMAN_VALUES = {_roman(value): value for value in range(1, 40)}


def marker_value(index: str) -> int:
    """The number a marker's index stands for: "9" and "９" 9, "⑨" 9, "1️⃣0️⃣" 10, "🔟" 10."""
    if index == "\U0001f51f":
        return 10
    if "\u20e3" in index:
        return int("".join(ch for ch in index if ch.isdecimal()))
    if index.isdecimal():  # "①".isdigit() is true too
        return int(index)
    return int(unicodedata.numeric(index))


_Run = list[tuple[int, int, str]]  # (line index, place, the text after the marker)


def _lettered_markers(lines: list[str], circled: bool = True) -> dict[int, tuple[str, int, str]]:
    """{line index: (kind, "letter", "roman" or "circled"; the marker's place, 1 for a or i;
    the text after it)} for the lines that start a lettered item: only in a run of two or more
    that goes a, b, c ... or i, ii, iii ... (skipping up to two, as numbers may) in one style
    ("a)", "(a)", "a.", upper or lower case; "ⓐ", "Ⓐ", "⒜", a kind of their own) at one indent
    (`circled`: False when the text has no circled letter, to skip that look), so a sentence
    that starts "A. Lincoln" or
    "I. M. Pei" or options inline ("a) red b) blue") is text, also inside a run ("V. S.
    Naipaul" after "I."). "i", "v" and "x" are letters and numerals: the run decides (a, b,
    ... i is letters, i, ii is roman; a line both runs claim goes to the longer run, a tie to
    the letters, and the other run is no run)."""
    closed: list[tuple[str, _Run]] = []
    runs: dict[tuple[str, int, str], _Run] = {}

    def close(kind: str, run: _Run | None) -> None:
        if run is not None and len(run) >= 2:
            closed.append((kind, run))

    for n, line in enumerate(lines):
        match = _LETTERED.match(line) if "." in line or ")" in line or circled and \
            _CIRCLED_LETTER.search(line) else None
        if match is None:
            continue
        indent, rest = _indent(line), match.group("rest")
        sign = match.group("circled")
        if sign is not None:
            base = max(b for b in _CIRCLED_BASES if ord(sign) >= b)
            style, places = chr(base), [("circled", ord(sign) - base + 1)]
        else:
            token = match.group("paren") or match.group("letter")
            style = ("(" if match.group("paren") else match.group("end")) + (
                "A" if token.isupper() else "a")
            value = _ROMAN_VALUES.get(token.lower())
            places = [("letter", ord(token.lower()) - ord("a") + 1)] if len(token) == 1 else []
            if value is not None:
                places.append(("roman", value))
        for kind, place in places:
            key = (kind, indent, style)
            run = runs.get(key)
            if run is not None and run[-1][1] < place <= run[-1][1] + 3:  # a skip of up to two
                run.append((n, place, rest))
                continue
            if place == 1:  # a new run; any other marker is text ("V. S. Naipaul", "i)"
                close(kind, runs.pop(key, None))  # under "a)"), and the run goes on after it
                runs[key] = [(n, place, rest)]
    for (kind, _, _), run in runs.items():
        close(kind, run)
    found: dict[int, tuple[str, int, str]] = {}
    for kind, run in sorted(closed, key=lambda c: (-len(c[1]), c[0] != "letter")):
        if not any(n in found for n, _, _ in run):
            found.update({n: (kind, place, rest) for n, place, rest in run})
    return found


# -- instruction lists ------------------------------------------------------------------------

# "9.", "9)", "(9)", "9:" (not "3.5" or "10:30"); "Task 9:", "**Task 9**", "### Task 9 -";
# "⑨", "9️⃣" (group "sym"); the mark after the emphasis ends ("**9**:", "**Task 9** -").
_NUMBERED = re.compile(
    rf"^[ \t]*(?:#{{1,6}}[ \t]*)?{_MD}[ \t]*(?:"
    rf"(?:\(?(\d{{1,3}})(?:[ \t]*[.):．、）：]|(?=[*_]+[ \t]*[.):](?:[ \t]|$)))|"
    rf"\[(?=\d{{1,3}}\])(\d{{1,3}})\]|(\d{{1,3}})[ \t]+[-–—]"
    rf"(?=[ \t]+[A-Z\"'“*]))(?=[ \t*_`\"'“]|$|[^\W\d_])"
    rf"|(?:new[ \t]+)?(?:task|instruction|prompt|item)[ \t]*#?[ \t]*(\d{{1,3}})[ \t]*[:.)\-–—]?"
    rf"|(?P<sym>{_SYMBOL_INDEX})[ \t]*[.):．、）：]?"
    rf")[ \t]*{_MD}(?:(?<=[*_])[ \t]*[:.)\-–—](?=[ \t]|$))?[ \t]*{_MD}[ \t]*(?P<rest>.*)$",
    re.IGNORECASE)
_BARE_NUMBER = re.compile(rf"^[ \t]*{_MD}(\d{{1,3}})[ \t]+{_MD}(?=[A-Za-z\"'“])(.*)$")
_LONE_NUMBER = re.compile(r"^[ \t]*[*_]*\(?(\d{1,3})[*_]*[ \t]*$")
_BULLET = re.compile(r"^[ \t]*[-*•+·][ \t]+(.*)$")
_LABEL = re.compile(
    rf"^[ \t]*(?:[-*•][ \t]+)?{_MD}[ \t]*(instruction|task|input|output|response|answer|context)"
    rf"[ \t]*{_MD}[ \t]*:[ \t]*{_EMPH}[ \t]*(.*)$", re.IGNORECASE)
_INLINE_LABEL = re.compile(rf"(?:\s|\|){_MD}(?:(?:example|sample)[ \t]+)?(input|output)[ \t]*"
                           rf"{_MD}[ \t]*:", re.IGNORECASE)
# A note in brackets that ends an item's line: "*(No input)*", "(Input: "I love Mondays!")",
# "[Requires input: a paragraph]"; group "input": the input it gives
_NOTE = re.compile(
    r"[ \t]*[*_]*[(\[][ \t]*(?:no[ \t-]*input(?:[ \t]+(?:needed|required))?\.?|"
    r"(?P<needs>(?:requires|with|needs)[ \t]+(?:an[ \t]+)?)?(?:(?:example|sample)[ \t]+)?input"
    r"[ \t]*:[ \t]*"
    r"(?P<input>[^)\]\n]*?))[ \t]*[)\]][*_]*[ \t]*$", re.IGNORECASE)
_LEAD = re.compile(
    rf"^{_MD}[ \t]*(?:new[ \t]+)?(?:task|instruction)[ \t]*\d*[ \t]*:[ \t]*{_MD}[ \t]*",
    re.IGNORECASE)


@dataclass
class _Item:
    number: int | None
    lines: list[str] = field(default_factory=list)
    implicit: bool = False  # completions: the text before the first marker continues item N
    indent: int = 0  # columns before its marker: a list indented deeper is nested in it
    heading: bool = False  # its marker line is a markdown heading ("### 9. Creative Writing")

    @property
    def has_content(self) -> bool:
        return any(line.strip() for line in self.lines)

    @property
    def raw(self) -> str:
        return "\n".join(self.lines).strip()


_STRONG = re.compile(r"\*\*|__")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
# a sub-bullet under an item: its text joins the instruction as a sentence, not as " - ..."
_SUB_BULLET = re.compile(r"(?m)^[ \t]+[-*•+][ \t]+")


def clean_instruction(text: str) -> str:
    """One line, without markdown emphasis, sub-bullet marks, `Task:` / `Instruction:` prefixes
    or wrapping quotes (inline code keeps its marks)."""
    # (each pattern only where its marks are: most instructions have none)
    if "\n" in text or text[:1] in (" ", "\t"):
        text = _SUB_BULLET.sub("", text)
    if "**" in text or "__" in text:
        if "`" in text:
            text = _CODE_SPAN.sub(lambda m: m.group().replace("_", "\0"), text)  # `__init__`
        text = _STRONG.sub("", text).replace("\0", "_")
    if text.count("`") == 1:  # the other half of `Draft` went with the list marker
        text = text.replace("`", "")
    text = one_line(text)
    if ":" in text:
        text = _LEAD.sub("", text).strip()
    text = text.strip("*_` ")
    if len(text) >= 2 and text[0] in "\"'`“‘" and text[-1] in "\"'`”’":
        text = text[1:-1].strip()
    if text:
        text = text[0].upper() + text[1:]
    return text


# "1.", "2)", "(3)", "a)", "iv.", "(ii)", "①": how a sub-step is numbered
_STEP = re.compile(rf"[ \t]*(?:\(?\d{{1,2}}[.)]|\((?:{_LETTERS_INDEX})\)|(?:{_LETTERS_INDEX})[.)]|"
                   rf"{_SYMBOL_INDEX}|[{_CIRCLED_LETTERS}])")


def _indent(line: str) -> int:
    """Columns of leading white space (a tab is 4)."""
    if line[:1] not in (" ", "\t"):
        return 0
    return len(line[:len(line) - len(line.lstrip(" \t"))].expandtabs(4))


def _returns_to(later: list[tuple[int, str] | None], number: int, parent: int | None) -> bool:
    """The numbered markers `later` go on from `number` and then come back to `parent` (or
    the text ends): the run up to there is a list nested in the item before `parent`."""
    for hit in later:
        if hit is None:
            continue
        if hit[0] != number + 1:
            return hit[0] == parent
        number += 1
    return True


def _numbered(line: str) -> tuple[int, str] | None:
    match = _NUMBERED.match(line)
    if not match:
        return None
    index = match.group("sym") or next(g for g in match.groups()[:4] if g)
    return marker_value(index), match.group("rest")


def marker_kind(line: str) -> str | None:
    """The kind of the list marker that starts `line`: "digits", "enclosed" (①, ⑴, ❾),
    "keycap" (9️⃣, 🔟), or None (no numbered marker; letters and roman numerals count only in
    a run, see `_lettered_markers`)."""
    match = _NUMBERED.match(line)
    if match is None:
        return None
    sym = match.group("sym")
    return "digits" if sym is None else _symbol_kind(sym)


def _symbol_kind(sym: str) -> str:
    """"keycap" (9️⃣, 🔟) or "enclosed" (①, ⑴, ❾): the kind of a `_SYMBOL_INDEX`."""
    return "keycap" if sym[-1] in "\u20e3\U0001f51f" else "enclosed"


# A title before an item's instruction: "**Limerick Writing**: Compose ...", "**Poetry** - ...",
# "**Travel Planning:** Suggest ...", or bold on a line of its own; at most 6 words, no sentence
# end (a bold first sentence is the instruction's).
_TITLE = re.compile(
    r"^[ \t]*(?:\*\*|__)?(?P<title>[^*_\n.!?]{1,60}?)(?P<inner>[ \t]*[:\-–—])?[ \t]*(?:\*\*|__)"
    r"[ \t]*(?P<sep>[:\-–—](?=[ \t]|$))?[ \t]*(?P<rest>.*)$")


def _without_title(lines: list[str], heading: bool) -> list[str]:
    """An item's instruction lines without a title before the instruction (`_TITLE`, or the
    text of a markdown heading's line "### 9. Creative Writing" when lines follow)."""
    if not lines:
        return lines
    later = any(line.strip() for line in lines[1:])
    if heading and later and len(lines[0].split()) <= 6 and not lines[0].rstrip().endswith(
            (".", "!", "?")):
        return lines[1:]
    first = lines[0]
    match = _TITLE.match(first) if "**" in first or "__" in first else None  # its bold marks
    if match is None or len(match.group("title").split()) > 6:
        return lines
    rest = match.group("rest")
    if match.group("inner") or match.group("sep"):
        return [rest, *lines[1:]] if rest.strip() or later else lines
    return lines[1:] if not rest.strip() and later else lines


def _split_item(lines: list[str], heading: bool = False) -> tuple[str, str, str | None]:
    """(instruction, input, label-only description) of one item's lines; `heading`: the
    item's first line was a markdown heading's."""
    section = "instruction"
    parts: dict[str, list[str]] = {"instruction": [], "input": [], "output": []}
    seen: list[str] = []
    fenced = by_fence = False
    for line in lines:
        if line.lstrip().startswith("```"):
            # a code block under the instruction is its input ("Explain what this does:"); the
            # text after it is the instruction's again
            if section == "instruction" and not fenced and not parts["input"]:
                section, by_fence = "input", True
            elif fenced and by_fence:
                section, by_fence = "instruction", False
            fenced = not fenced
            continue
        if fenced:
            parts[section].append(line)
            continue
        note = _NOTE.search(line) if section == "instruction" and (
            "(" in line or "[" in line) else None  # (cheap looks first: most lines have none)
        if note is not None:
            line = line[: note.start()]
            # "(Requires input: a paragraph)" describes the input the instances will give
            given = "" if note.group("needs") else (note.group("input") or "").strip().strip(
                "\"'“”")
            if given and not parts["input"]:
                parts["input"].append(given)
        match = _LABEL.match(line) if ":" in line else None
        if match:
            name = match.group(1).lower()
            section = ("instruction" if name in ("instruction", "task") else
                       "input" if name in ("input", "context") else "output")
            seen.append(name)
            line = match.group(2)
        if section == "instruction" and ":" in line:
            inline = _INLINE_LABEL.search(line)
            if inline:
                parts["instruction"].append(line[: inline.start()])
                section = "input" if inline.group(1).lower() == "input" else "output"
                seen.append(inline.group(1).lower())
                line = line[inline.end():]
        parts[section].append(line)
    instruction = clean_instruction("\n".join(_without_title(parts["instruction"], heading)))
    label_only = None
    if not instruction and seen:
        label_only = f"only an {seen[0].capitalize()}: part, no instruction"
    return instruction, "\n".join(parts["input"]).strip(), label_only


def parse_instruction_list(text: str, *, first_number: int | None = None,
                           examples: tuple[str, ...] | list[str] = (),
                           truncated: bool = False) -> ParsedList:
    """Read a list of new instructions from a model's answer.

    `first_number`: completions mode, where the prompt ends with "9." and the answer continues
    that item. `examples`: the prompt's example instructions, to set aside repeats of them.
    `truncated`: the answer hit the token limit (finish_reason "length"); its last item is cut.
    A reasoning model's <think> part is left out (`split_reasoning`).
    """
    text, thinking = _answer_part(text, "generation_max_tokens")
    if thinking is not None:
        return ParsedList(discarded=[thinking])
    json_list = _parse_json_list(text, truncated)
    if json_list is not None:
        return _finish_list(json_list, [], examples, text)
    text = _unfenced(text, _list_layout)
    table = _parse_table_list(text, truncated)
    if table is not None:
        return _finish_list(table, [], examples, text)
    # each line's "9." marker, read once
    lines, dotted = _split_inline_numbers(text.split("\n"), first_number)
    bare = _bare_markers(lines, dotted, first_number)
    sub = _one_kind_of_marker(lines, dotted, bare, digits=first_number is not None,
                              circled=_CIRCLED_LETTER.search(text) is not None)
    bullets = [_indent(line) for line in lines if _BULLET.match(line) and not _LABEL.match(line)]
    numbers = [_indent(line) for line, hit in zip(lines, dotted, strict=True) if hit]
    # numbered sub-steps under bulleted items do not make a numbered list
    numbered_mode = bool(bare) or bool(numbers) and not (bullets and min(bullets) < min(numbers))
    bullet_mode = not numbered_mode and bool(bullets)
    label_mode = not numbered_mode and not bullet_mode and any(
        (m := _LABEL.match(line)) and m.group(1).lower() in ("instruction", "task")
        for line in lines)

    items: list[_Item] = []
    outside: list[str] = []
    cur: _Item | None = None
    expected = first_number
    first = next((n for n, line in enumerate(lines) if line.strip()), 0)
    if first_number is not None and first not in bare and _item_start(
            lines[first] if lines else "", dotted[first] if lines else None, numbered_mode,
            bullet_mode, label_mode, first_number, False) is None:
        cur = _Item(first_number, implicit=True)
        expected = first_number + 1
    in_section = False
    blank_pending = False
    sub_next: int | None = None  # the next number of a list nested in the current item

    def finish() -> None:
        nonlocal cur, sub_next
        if cur is not None and (cur.has_content or not cur.implicit):
            items.append(cur)
        cur = None
        sub_next = None

    def nested(n: int, line: str) -> bool:
        """The line belongs to a list nested in the current item ("Include:" and its steps
        or sub-bullets), which is part of the instruction: a marker indented deeper than the
        item's, or, unindented, a numbered list that starts at 1 after the item's text ends
        with ":" and goes on in order. A number the list itself goes on with (a skip of up to
        two) is the next item unless it is indented under an open nested list."""
        nonlocal sub_next
        if cur is None or not cur.has_content or in_section:
            return False
        if n in sub:  # a marker of another kind than the list's: the item's own sub-list
            return True
        if bullet_mode:
            return _BULLET.match(line) is not None and _indent(line) > cur.indent
        hit = dotted[n]
        if not numbered_mode or hit is None or not _STEP.match(line):
            return False
        number = hit[0]
        follows = expected is not None and expected <= number <= expected + 2
        if _indent(line) > cur.indent:
            step = sub_next is not None or not follows
        elif not follows:
            step = number == sub_next or number == 1 and cur.lines[-1].rstrip().endswith(":")
        else:  # "2." after "1. Shelter" under item 1: nested if the numbers come back to 2
            step = number == sub_next and _returns_to(dotted[n + 1:], number, expected)
        if step:
            sub_next = number + 1
        return step

    fenced = False  # inside a code block: its lines ("# a comment", "1. x") are its own
    for n, line in enumerate(lines):
        if fenced or line.lstrip().startswith("```"):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            (cur.lines if cur is not None else outside).append(line)
            blank_pending = False
            continue
        if not line.strip():
            if cur is not None and cur.has_content:
                blank_pending = True
            continue
        if nested(n, line):
            cur.lines.append(line)  # type: ignore[union-attr]  # nested() checked it
            blank_pending = False
            continue
        start = _item_start(line, dotted[n], numbered_mode, bullet_mode, label_mode, expected,
                            in_section)
        if start is None and n in bare:
            start = _bare_start(line)
        if start is not None:
            finish()
            index, rest = start
            cur = _Item(index, indent=_indent(line), heading=line.lstrip().startswith("#"))
            if index is not None:
                expected = index + 1
            in_section = False
            blank_pending = False
            if label_mode:
                cur.lines.append(line)
            elif rest.strip():
                cur.lines.append(rest)
            continue
        if _SEPARATOR.match(line) or _HEADING.match(line):
            finish()
            blank_pending = False
            continue
        if cur is None:
            outside.append(line)
            continue
        label = _LABEL.match(line)
        if blank_pending:
            blank_pending = False
            if not label and cur.has_content:
                finish()  # a paragraph after the item: commentary or an epilogue
                outside.append(line)
                continue
        if cur.has_content and not label and not in_section and _EPILOGUE.match(line):
            finish()
            outside.append(line)
            continue
        if label and label.group(1).lower() not in ("instruction", "task"):
            in_section = True
        cur.lines.append(line)
    cut = cur  # an item still open when the text ends is the one a token limit cuts
    finish()
    parsed: list[tuple[_Item, bool]] = [(item, truncated and item is cut) for item in items]
    return _finish_list(None, parsed, examples, text, outside)


def _one_kind_of_marker(lines: list[str], dotted: list[tuple[int, str] | None],
                        bare: set[int], digits: bool, circled: bool = True) -> set[int]:
    """Make the list's items the markers of one kind (`marker_kind`, letters, roman
    numerals or circled letters; `circled`: the text may hold circled letters): the kind of
    the first marker at the least indent, or digits when `digits` (completions: the prompt
    numbered the list) and there are any. Lettered markers
    (`_lettered_markers`) of that kind are put in `dotted`; markers of other kinds are taken
    out of `dotted` and `bare`, and their line indexes returned: they are the sub-list of the
    item they are under ("9. Pick one:" then "a) red", "b) blue", or "i. red")."""
    lettered = _lettered_markers(lines, circled=circled)
    kinds: dict[int, str] = {n: "digits" for n in bare}
    for n, hit in enumerate(dotted):
        if hit is not None:
            kinds[n] = marker_kind(lines[n]) or "digits"
    for n, (kind, _, _) in lettered.items():
        kinds.setdefault(n, kind)
    if not kinds:
        return set()
    least = min(_indent(lines[n]) for n in kinds)
    top = kinds[min(n for n in kinds if _indent(lines[n]) == least)]
    if digits and "digits" in kinds.values():
        top = "digits"
    sub = {n for n, kind in kinds.items() if kind != top}
    for n in sub:
        dotted[n] = None
    bare -= sub
    if top in ("letter", "roman", "circled"):
        for n, (kind, place, rest) in lettered.items():
            if kind == top:
                dotted[n] = (place, rest)
    return sub


# "... the moon. 10. Draft an email": a number after a sentence's end, before a capital; an
# enclosed number or keycap the same way ("... the moon. ⑩ Draft an email"; also after a CJK
# sentence end, spaces optional: "写一首诗。②解释潮汐。")
_MAYBE_INLINE = re.compile(  # a cheap look first: most lines have none (one branch: faster)
    rf"[.!?。！？](?:[\"'”’]?[ \t]+\d|"
    rf"[\"'”’」]?[ \t]*(?:[{_ENCLOSED}\U0001f51f]|\d\ufe0f?\u20e3))")
_INLINE_NUMBER = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'”’]))[ \t]+(\d{1,3})(?:[.)][ \t]+(?=[A-Z\"'“*])|[.)]?[ \t]*$)"
    rf"|(?:(?<=[.!?。！？])|(?<=[.!?。！？][\"'”’」]))[ \t]*(?P<sym>{_SYMBOL_INDEX})[.)]?[ \t]*"
    r"(?=[A-Z\"'“*「]|[^\W\d_a-z]|$)")


def _split_inline_numbers(lines: list[str], first_number: int | None
                          ) -> tuple[list[str], list[tuple[int, str] | None]]:
    """(lines, their `_numbered` markers): lines that run several numbered items together
    ("Write a limerick. 10. Explain the tides. 11. Draft an email.", "① Write a limerick. ②
    Explain the tides.", as small models write a list) split where the numbers go on from the
    line's own: its "9." or "①" marker, the item before it, or `first_number` (completions),
    with a marker of the same kind (`marker_kind`).
    Only the run of consecutive numbers splits, so "3 steps. 2. Then ..." or a year stays in
    its instruction; the next number alone at the line's end ("... a flat. 18", "... ③") starts
    an empty item (a cut answer's complete items are kept, the empty one is the cut one)."""
    out: list[str] = []
    markers: list[tuple[int, str] | None] = []  # each line's `_numbered`, computed once
    last = first_number
    last_from: str | None = None  # the line whose marker gave `last` (None: `first_number`)
    for line in lines:
        marked = _numbered(line)
        base, source = (marked[0], line) if marked else (last, last_from)
        cuts: list[int] = []
        if base is not None and _MAYBE_INLINE.search(line):
            kind = marker_kind(source) if source is not None else "digits"
            for match in _INLINE_NUMBER.finditer(line):
                sym = match.group("sym")
                index = marker_value(sym) if sym else int(match.group(1))
                if index != base + 1 or (_symbol_kind(sym) if sym else "digits") != kind:
                    break
                base = index
                cuts.append(match.start())
        if cuts:
            starts = [0, *cuts]
            pieces = [line[a:b].strip() if a else line[a:b].rstrip()
                      for a, b in zip(starts, [*cuts, len(line)], strict=True)]
            out.extend(pieces)
            markers.extend(_numbered(piece) for piece in pieces)
        else:
            out.append(line)
            markers.append(marked)
        if base is not None:
            last, last_from = base, source
    return out, markers


def _bare_start(line: str) -> tuple[int, str] | None:
    with_text = _BARE_NUMBER.match(line)
    if with_text:
        return int(with_text.group(1)), with_text.group(2)
    alone = _LONE_NUMBER.match(line)
    return (int(alone.group(1)), "") if alone else None


def _bare_markers(lines: list[str], dotted_lines: list[tuple[int, str] | None],
                  first_number: int | None) -> set[int]:
    """Indexes of lines that start an item with a number but no dot ("10 Suggest ...", or "12"
    alone on its line): only where the number continues the list's sequence, so "3 ways to
    save money" inside an item is not an index."""
    found: set[int] = set()
    expected = first_number + 1 if first_number is not None else None
    numbers: list[tuple[int, int]] = []
    for n, (line, dotted) in enumerate(zip(lines, dotted_lines, strict=True)):
        if dotted is not None:
            expected = dotted[0] + 1
            continue
        match = _BARE_NUMBER.match(line) or _LONE_NUMBER.match(line)
        if match is None:
            continue
        number = int(match.group(1))
        numbers.append((n, number))
        if number == expected:
            found.add(n)
            expected = number + 1
    # With nothing to go by (chat, no dotted line): a run of consecutive numbers, in order.
    for (n1, a), (n2, b) in zip(numbers, numbers[1:], strict=False):
        if b == a + 1:
            found.update((n1, n2))
    return found


def _item_start(line: str, hit: tuple[int, str] | None, numbered: bool, bullet: bool,
                label_mode: bool, expected: int | None,
                in_section: bool) -> tuple[int | None, str] | None:
    """`hit`: the line's numbered marker (`_numbered`)."""
    if numbered:
        # Inside an item's Input:/Output: part only the next numbers (a skip of up to two)
        # start an item: a numbered list inside an input, which restarts at 1, is not one.
        if hit is not None and (not in_section or expected is None
                                or expected <= hit[0] <= expected + 2):
            return hit
        bare = _BARE_NUMBER.match(line)
        if bare and expected is not None and int(bare.group(1)) == expected:
            return int(bare.group(1)), bare.group(2)
        return None
    if bullet:
        if _LABEL.match(line):
            return None
        match = _BULLET.match(line)
        if match and not (in_section and line[:1] in " \t"):
            marked = _numbered(match.group(1))  # "- 9. Write ...": the number is no text
            return (marked[0], marked[1]) if marked else (None, match.group(1))
        return None
    if label_mode:
        match = _LABEL.match(line)
        if match and match.group(1).lower() in ("instruction", "task"):
            return None, match.group(2)
    return None


def _finish_list(json_items: ParsedList | None, parsed: list[tuple[_Item, bool]],
                 examples: tuple[str, ...] | list[str], text: str,
                 outside: list[str] | None = None) -> ParsedList:
    result = ParsedList()
    if json_items is not None:
        candidates = [(ListItem(i.instruction, i.raw, i.number, i.input), None)
                      for i in json_items.items]
        result.discarded.extend(json_items.discarded)
    else:
        candidates = []
        for item, cut in parsed:
            instruction, inp, label_only = _split_item(item.lines, item.heading)
            listed = ListItem(instruction, item.raw, item.number, normalize_input(inp))
            if cut:
                result.discarded.append(Fragment(
                    item.raw or (f"{item.number}." if item.number is not None else "(empty)"),
                    R.TRUNCATED, "the answer hit max_tokens inside this item"))
                continue
            if label_only is not None:
                result.discarded.append(Fragment(item.raw, R.NOT_AN_INSTRUCTION, label_only))
                continue
            if not instruction:
                if item.implicit:
                    continue
                result.discarded.append(Fragment(item.raw or f"{item.number}.",
                                                 R.NOT_AN_INSTRUCTION, "an empty list item"))
                continue
            if item.implicit and _PREAMBLE.match(instruction) and instruction.endswith(":"):
                result.discarded.append(Fragment(item.raw, R.NOT_AN_INSTRUCTION,
                                                 "a preamble, not a task"))
                continue
            candidates.append((listed, None))
        if candidates and json_items is None:  # "10. Draft an email. I hope this helps!"
            last = candidates[-1][0]
            said = _TRAILING_CHATTER.search(last.instruction)
            if said is not None:
                candidates[-1] = (dataclasses.replace(
                    last, instruction=last.instruction[:said.start()]), None)
    example_keys = {_example_key(e): n for n, e in enumerate(examples, start=1)}
    numbers = {c.number for c, _ in candidates if c.number is not None}
    n_examples = len(examples)
    # A model that restates the numbered examples (1..n) before its new items: most of its
    # items 1..n are the examples (a chat model numbering its own new items from 1 is not).
    restated = n_examples > 0 and set(range(1, n_examples + 1)) <= numbers and any(
        n > n_examples for n in numbers) and 2 * sum(
        1 for c, _ in candidates if c.number is not None and c.number <= n_examples
        and _norm_key(c.instruction) in example_keys) > n_examples
    for listed, _ in candidates:
        key = _norm_key(listed.instruction)
        if is_refusal(listed.instruction):
            result.discarded.append(Fragment(listed.raw, R.REFUSAL, "the model declined"))
        elif (restated and listed.number is not None and listed.number <= n_examples) or \
                key in example_keys:
            which = example_keys.get(key, listed.number)
            result.discarded.append(Fragment(listed.raw, R.REPEATED_EXAMPLE,
                                             f"repeats example {which} of the prompt"))
        else:
            result.items.append(listed)
    if not result.items and not result.discarded:
        whole = text.strip()
        if is_refusal(whole) or any(is_refusal(line) for line in outside or []):
            result.discarded.append(Fragment(whole[:2000], R.REFUSAL, "the model declined"))
        else:
            result.discarded.append(Fragment(
                whole[:2000] or "(empty answer)", R.UNPARSEABLE,
                "no list items; expected numbered lines such as '9. <instruction>'"))
    return result


# An assistant's words to the user on the last item's own line, after its last sentence: "...
# the moon. I hope this helps!", "Let me know if you need more tasks." (not "Feel free to ...",
# which an instruction may say)
_TRAILING_CHATTER = re.compile(
    r"(?<=[.!?])\s+(?:(?:i )?hope (?:this|these|that|it) (?:helps?|is helpful|are helpful|will "
    r"help)\b|let me know if you(?:['’]d| would)? (?:like|need|want)\b|is there anything else\b)"
    r"[^\n]*$", re.IGNORECASE)

# a line of a text list outside a fenced JSON block: the block is an item's, not the answer
_LIST_LAYOUT = re.compile(rf"{_NUMBERED.pattern}|{_LABEL.pattern}", re.IGNORECASE)
_JSON_INSTRUCTION = re.compile(r'"(?:instruction|task)"\s*:\s*"((?:[^"\\]|\\.)*)("?)')


def _parse_json_list(text: str, truncated: bool) -> ParsedList | None:
    """A JSON answer: {"tasks": [...]}, {"instructions": [...]} or a list; items are strings or
    objects with "instruction" (and "input"). None when the text is not JSON-shaped."""
    body = json_text(text, _LIST_LAYOUT)
    if body[:1] not in ("{", "[") or body[:1] == "[" and body[1:].lstrip()[:1] not in (
            '"', "{", "]"):  # "[9] Write ...": a list marker, not a JSON list
        return None
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return _salvage_json(body, truncated)
    values = data
    if isinstance(data, dict):
        values = next((data[k] for k in ("tasks", "instructions", "items", "new_tasks")
                       if isinstance(data.get(k), list)), None)
        if values is None:  # {"new_instructions": [...]}: the one list it holds
            lists = [v for v in data.values() if isinstance(v, list)]
            values = lists[0] if len(lists) == 1 else None
        if values is None:
            values = [data] if "instruction" in data else None
    if not isinstance(values, list):
        return None
    result = ParsedList()
    for value in values:
        raw = json.dumps(value, ensure_ascii=False)
        detail = "a JSON item without an instruction"
        instruction, inp = "", ""
        if isinstance(value, str):
            instruction = clean_instruction(value)
        elif isinstance(value, dict):
            key = next((k for k in (_json_key(value, "instruction"), _json_key(value, "task"))
                        if k is not None and value[k] not in (None, "")), None)
            given = value[key] if key is not None else None
            if isinstance(given, str):
                instruction = clean_instruction(given)
            elif given is not None:  # a list, an object, a number: no instruction's text
                detail = (f"a JSON item whose {key!r} is a {json_type_name(given)}, not text")
            in_key = _json_key(value, "input")
            inp = (json_field_text(value[in_key]) if in_key is not None else None) or ""
        if not instruction:
            result.discarded.append(Fragment(raw, R.NOT_AN_INSTRUCTION, detail))
            continue
        result.items.append(ListItem(instruction, raw, None, normalize_input(inp)))
    return result


def _salvage_json(body: str, truncated: bool) -> ParsedList:
    """Complete "instruction" strings of a JSON answer that does not parse (often: cut off)."""
    result = ParsedList()
    for match in _JSON_INSTRUCTION.finditer(body):
        if not match.group(2):
            result.discarded.append(Fragment(match.group(0), R.TRUNCATED,
                                             "the JSON answer ends inside this item"))
            continue
        try:
            value = json.loads(f'"{match.group(1)}"')
        except json.JSONDecodeError:
            continue
        instruction = clean_instruction(value)
        if instruction:
            result.items.append(ListItem(instruction, match.group(0)))
    if truncated and result.items and not any(f.reason is R.TRUNCATED for f in result.discarded):
        # The cut fell after the last instruction string: that item may still be complete.
        pass
    if not result.items and not result.discarded:
        result.discarded.append(Fragment(body[:2000], R.UNPARSEABLE,
                                         "JSON that does not parse and holds no instruction"))
    return result


# -- classification -----------------------------------------------------------------------------

_CLS_LEAD = re.compile(
    r"^(?:classification(?: task)?|is (?:it )?(?:a )?classification(?: task)?|(?:the )?answer"
    r"(?: is)?|output|label|response|result|final answer|i would (?:classify|say)(?: this| it)?"
    r"(?: as)?|(?:so|thus|therefore),? (?:the answer is|it is))\s*[:\-–—?]?\s*", re.IGNORECASE)
# "Task: <the task repeated>" then "Classification: No": the labelled line is the answer
_CLS_LINE = re.compile(r"^\W*classification(?: task)?\W*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_CLS_MARKUP = re.compile(r"[*_`#>\"']")
# A hedge before the verdict ("Definitely yes.", "Probably not."): after one, "not" is a no
_CLS_HEDGE = re.compile(r"^(?:definitely|certainly|absolutely|clearly|surely|probably|"
                        r"most likely|likely|i think|i believe)\b[\s,]*", re.IGNORECASE)
_CLS_YES = ("yes", "true", "y", "yep", "yeah", "yup")
_CLS_NO = ("no", "false", "n", "nope", "nah")
# Chinese models answer the English question in Chinese: 是 / 是的 (yes), 否 / 不是 (no)
_CLS_CJK = re.compile(r"^(?:(是)(?:的)?|(否|不是))(?:[\s,.!，。！：:]|$)")
_LETTERS = re.compile(r"[a-z]+")
_CLS_PHRASES = (
    (re.compile(r"\b(?:not|isn['’]?t|no)\b[^.]{0,20}\bclassification\b", re.I), False),
    (re.compile(r"\b(?:is|it['’]?s)\s+(?:a|an)\s+(?:\w+\s+)?classification\b", re.I), True),
)


_CLS_KEYS = ("is_classification", "classification", "is_classification_task", "answer",
             "result", "output", "label", "response")


def _json_classification(text: str) -> tuple[bool | None] | None:
    """(the value) of a JSON answer: true/false, or a yes/no string read as text; an object's
    value under one of `_CLS_KEYS` (any case), or its only value. None when the text is not
    JSON (the caller reads it as text)."""
    body = json_text(text)
    if body[:1] not in ("{", "[", '"') and body not in ("true", "false", "null"):
        return None
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        key = _json_key(value, *_CLS_KEYS)
        if key is None and len(value) == 1:
            key = next(iter(value))
        value = value[key] if key is not None else None
    if isinstance(value, bool):
        return (value,)
    if isinstance(value, str) and value.strip()[:1] not in ("{", "[", '"'):
        return (parse_classification(value),)
    return (None,)


def parse_classification(text: str) -> bool | None:
    """Yes/No to "is this a classification task?": `Yes`, `Classification: Yes`, `**No**`,
    `Yes, because ...`, `True`, `Nope`, `Definitely yes.`, `Probably not.`, `是` / `否` (after a
    reasoning model's <think> part); None when the answer is
    neither. A JSON answer (`true`, `"No"`, `{"is_classification": false}`, `{"answer":
    "Yes"}`) is read by its value, never as the text of its keys."""
    answer = _split_reasoning(_cut_special_tokens(normalize_layout(text)))[0]
    from_json = _json_classification(answer)
    if from_json is not None:
        return from_json[0]
    cleaned = _CLS_MARKUP.sub("", answer).strip()
    labelled = _CLS_LINE.search(cleaned)
    if labelled is not None and labelled.start() > 0:
        cleaned = labelled.group(1).strip()
    cleaned = _CLS_LEAD.sub("", cleaned).strip()
    cjk = _CLS_CJK.match(cleaned)
    if cjk is not None:
        return cjk.group(1) is not None
    hedged = _CLS_HEDGE.match(cleaned)
    if hedged is not None:
        cleaned = cleaned[hedged.end():]
    words = _LETTERS.findall(cleaned.lower())
    if words[:1] in (["yes"], ["no"]) and {"yes", "no"} <= set(words[:3]):
        return None  # "Yes/No", "Yes or No": the question repeated, no answer
    if words[:2] in (["no", "idea"], ["no", "clue"]):
        return None  # "No idea": not a "No"
    if words:
        # "y"/"n" alone; "N/A" is no answer
        single = len(words[0]) > 1 or re.fullmatch(r"[yn]\W*", cleaned, re.IGNORECASE)
        if words[0] in _CLS_YES and single:
            return True
        if (words[0] in _CLS_NO or hedged is not None and words[0] == "not") and single:
            return False
    for pattern, value in _CLS_PHRASES:
        if pattern.search(cleaned):
            return value
    return None


# -- instances ----------------------------------------------------------------------------------

INPUT_FIRST_LAYOUT = "expected 'Input: ...' then 'Output: ...' for each example"
OUTPUT_FIRST_LAYOUT = "expected 'Class label: ...' then 'Input: ...' for each example"

# "Example 2", "**Example 2:**", "### Example", "Example:" (group 1: its number, 2: text after);
# not "Examples include:"
_EXAMPLE_HEADER = re.compile(
    rf"^[ \t]*(?:#{{1,6}}[ \t]*)?{_MD}[ \t]*example(?![a-z])[ \t]*#?[ \t]*(\d*)[ \t]*"
    rf"[.:)\-–—]?[ \t]*{_MD}[ \t]*(.*)$", re.IGNORECASE)
_LIST_MARK = re.compile(rf"^[ \t]*(?:{_ANY_MARK})[ \t]*(.*)$")
_MULTI_ROMAN = re.compile(r"^[ \t]*\(?(?:[ivx]{2}|[IVX]{2})")
_ROMAN_MARK = re.compile(r"^[ \t]*\(?([ivx]{1,6}|[IVX]{1,6})[.)][ \t]*(.*)$")
_BARE_MARK = re.compile(rf"^[ \t]*(?:\(?\d{{1,2}}[.):]?|(?:{_SYMBOL_INDEX})[.):]?)[ \t]*$")
# "Input:", "Input 2:", "Input text:", "Input (a sentence):"; "Output:", "Expected output:",
# "Output (in French):"
_LABEL_NOTE = r"(?:[ \t]*\([^)\n]{1,40}\))?"
_IN_LABEL = re.compile(
    rf"^[ \t]*{_MD}[ \t]*input(?:[ \t]+text)?[ \t]*\d*{_LABEL_NOTE}[ \t]*{_MD}[ \t]*:[ \t]*"
    rf"{_EMPH}[ \t]?(.*)$", re.IGNORECASE)
_OUT_LABEL = re.compile(
    rf"^[ \t]*{_MD}[ \t]*(?:expected[ \t]+)?(output|response|answer)[ \t]*\d*{_LABEL_NOTE}"
    rf"[ \t]*{_MD}[ \t]*:[ \t]*{_EMPH}[ \t]?(.*)$", re.IGNORECASE)
_CLASS_LABEL = re.compile(
    rf"^[ \t]*{_MD}[ \t]*(?:class[ \t]+label|label)[ \t]*{_MD}[ \t]*:[ \t]*{_EMPH}[ \t]?(.*)$",
    re.IGNORECASE)
_INLINE_OUT = re.compile(rf"(?:\s|\|)[ \t|]*{_MD}output[ \t]*{_MD}[ \t]*:[ \t]*{_EMPH}",
                         re.IGNORECASE)
_INLINE_IN = re.compile(rf"(?:\s|\|)[ \t|]*{_MD}input[ \t]*{_MD}[ \t]*:[ \t]*{_EMPH}",
                        re.IGNORECASE)
# The start of another task, in the forms models run on into: "Task 2", "Task: ...",
# "## Task", "Instruction: ...", "3. Instruction: ...", under any list marker ("b) Instruction:",
# "(iii) Task:", "② Instruction:").
# Searched over the whole answer (re.MULTILINE: ^ and $ at every "\n"); nothing in it crosses a
# line, so it finds the first line that would match on its own.
_NEXT_TASK = re.compile(
    rf"^[ \t]*(?:#{{1,6}}[ \t]*)?(?:(?:\(?\d{{1,3}}[.)]|\((?:{_LETTERS_INDEX})\)|"
    rf"(?:{_LETTERS_INDEX})[.)]|{_SYMBOL_INDEX}|[{_CIRCLED_LETTERS}])[ \t]*)?"
    rf"{_MD}[ \t]*(?:new[ \t]+)?"
    rf"(?:task|instruction)\b[ \t]*(?:#?(\d+)|{_MD}[ \t]*:|{_MD}[ \t]*$)",
    re.IGNORECASE | re.MULTILINE)
# What the instance layout's patterns can start with after spaces and tabs: a mark (separator,
# bare number, list mark, markdown) or "Example" (group 1), or a label word. A line that matches
# none is content; one that starts with a label word is none of the marks or headers. This saves
# trying each pattern on every line (same flags as theirs, so the same case folding).
_MAY_BE_LAYOUT = re.compile(
    rf"^[ \t]*(?:([#\-*_=~(\d•+`{_ENCLOSED}{_CIRCLED_LETTERS}\U0001f51f]|[a-z][.)]|[ivx]+[.)]|"
    r"example)|input|output|"
    r"response|answer|class|label|expected)", re.IGNORECASE)


@dataclass
class _Block:
    head: list[str] = field(default_factory=list)
    input: list[str] | None = None
    output: list[str] | None = None
    label: str | None = None
    raw: list[str] = field(default_factory=list)
    open: bool = True  # still being read when the text ended

    def started(self) -> bool:
        """It holds a field or a line of text (a fence line alone is no example's)."""
        return (self.input is not None or self.output is not None or self.label is not None
                or any(h.strip() and not h.lstrip().startswith("```") for h in self.head))


def _next_task(text: str) -> re.Match[str] | None:
    """The first line that starts another task (`_NEXT_TASK`), passing over a numbered list of
    task lines that starts at 1 and runs on line by line ("Task 1: Buy milk", "Task 2: Call
    the bank", blank lines allowed between; the first may follow a label, "Output: Task 1:
    ..."): that is an output's own list (a to-do list, a project plan), which was cut off at
    its first line and kept as a shorter output. A list that starts past 1 ("Task 2: ..."
    after an output) is the model running on into new tasks, and is cut."""
    found = list(_NEXT_TASK.finditer(text))
    listed = 0  # the number of the last task line passed over as a list item
    for n, match in enumerate(found):
        number = int(match.group(1) or 0)
        head = text.rfind("\n", 0, match.start())
        before = text[:max(head, 0)].rstrip().rpartition("\n")[2]  # the last non-blank line
        if number > 1 and (listed == number - 1 or number == 2) and re.search(
                rf"\btask[ \t]*#?{number - 1}\b", before, re.IGNORECASE):
            listed = number
            continue
        end = text.find("\n", match.end())
        after = found[n + 1] if n + 1 < len(found) else None
        if number == 1 and after is not None and after.group(1) == "2" and end >= 0 and \
                not text[end:after.start()].strip():
            listed = 1
            continue
        return match
    return None


def until_next_task(text: str) -> str:
    """The text before the first line that starts another task (`_next_task`). A task line
    before any example (the prompt's own "Task: ..." repeated back, as chat models do) is left
    out, and the examples after it are read. Line ends are made "\\n" (`normalize_line_ends`)."""
    return _until_next_task(normalize_line_ends(text))


def _until_next_task(text: str) -> str:
    match = _next_task(text)
    if match is None:
        return text
    if not any(_INSTANCE_LAYOUT.match(line) for line in text[:match.start()].split("\n")):
        end = text.find("\n", match.end())
        rest = "" if end < 0 else text[end + 1:]
        again = _next_task(rest)
        return rest[: again.start()] if again else rest
    return text[: match.start()]


# A closing paragraph about the examples, which chat models add after the last one ("These
# examples show ...", "Each input reflects its label.", "Let me know if you'd like more
# examples!"): it names the examples, so an output's own last paragraph ("Let me know if you
# need anything else." in an email) is not taken for one; only "I hope this helps!" and "Is
# there anything else ...?", an assistant's words to the user, need not name them.
_CLOSING = re.compile(
    r"^\W*(?:(?:i )?hope (?:this|these|that|it) (?:helps?|is helpful|are helpful|will help)\b|"
    r"is there anything else\b|"
    r"(?:these|the above|all (?:of )?these|each of these|both) (?:\w+ )?(?:examples?|"
    r"inputs?|outputs?|pairs?|instances?|sentences?|texts?)\b|each (?:example|input|output)\b|"
    r"(?:i )?hope (?:these|this|the) (?:\w+ )?examples?\b|let me know if you(?:['’]d| would)? "
    r"(?:like|need|want) (?:\w+ )?(?:more|additional|other|different) (?:\w+ )?(?:examples?|"
    r"inputs?|variations?)|(?:note|explanation)\s*:\s*(?:these|the|each|all) (?:\w+ )?"
    r"(?:examples?|inputs?|outputs?|labels?))", re.IGNORECASE)


def _without_closing_remarks(text: str) -> str:
    """The text without a closing paragraph (`_CLOSING`, after a blank line) below the last
    example's labels, and what follows it."""
    if "\n\n" not in text:
        return text
    lines = text.split("\n")
    last = next((n for n in range(len(lines) - 1, -1, -1) if _INSTANCE_LAYOUT.match(lines[n])),
                -1)
    for n in range(max(1, last + 1), len(lines)):
        if not lines[n - 1].strip() and _CLOSING.match(lines[n]):
            return "\n".join(lines[:n])
    return text


def parse_instances(text: str, *, output_first: bool, truncated: bool = False,
                    starts_in_example: bool = False) -> ParsedInstances:
    """Examples for one task.

    `output_first`: the classification layout ('Class label: X' then 'Input: ...'; the label is
    the output). `starts_in_example`: completions mode, where the prompt ends inside the first
    example ("Example 1\\n" or "Class label:"). `truncated`: the answer hit the token limit, so
    the example it ends in is cut. A reasoning model's <think> part is left out.
    """
    text, thinking = _answer_part(text, "instance_max_tokens")
    if thinking is not None:
        return ParsedInstances(discarded=[thinking])
    if is_refusal(text.strip()):
        return ParsedInstances(discarded=[Fragment(text.strip()[:2000], R.REFUSAL,
                                                   "the model declined")])
    from_json = _parse_json_instances(text, output_first, truncated)
    if from_json is not None:
        return from_json
    text = _without_closing_remarks(_until_next_task(_unfenced(text, _instances_layout)))
    from_table = _parse_table_instances(text, output_first, truncated)
    if from_table is not None:
        return from_table
    lines = text.split("\n")  # as the reader below: line ends were made "\n" (_answer_part)
    if output_first and any(_OUT_LABEL.match(line) for line in lines) and not any(
            _CLASS_LABEL.match(line) for line in lines):
        # A classification task answered in the input-first layout: its outputs are labels.
        output_first = False
    elif starts_in_example and output_first:
        text = "Class label:" + text
        lines[0] = "Class label:" + lines[0]  # (lines stays text's lines)
    layout = OUTPUT_FIRST_LAYOUT if output_first else INPUT_FIRST_LAYOUT
    reader = _InstanceReader(output_first, lines)
    for n, line in enumerate(reader.lines):
        reader.feed(line, n)
    blocks = reader.close()
    result = ParsedInstances()
    for n, block in enumerate(blocks):
        raw = "\n".join(block.raw).strip()
        if n == 0 and len(blocks) > 1 and block.input is None and block.output is None \
                and block.label is None and _PREAMBLE.match(raw):
            continue  # "Sure! Here are five examples:" is no example
        if truncated and block.open:
            result.discarded.append(Fragment(raw, R.TRUNCATED,
                                             "the answer hit max_tokens inside this example"))
            continue
        made = _instance_from(block, output_first, layout, raw)
        if isinstance(made, Fragment):
            result.discarded.append(made)
        else:
            result.instances.append(made)
    if not result.instances and not result.discarded:
        whole = text.strip()
        reason = R.REFUSAL if is_refusal(whole) else R.UNPARSEABLE
        result.discarded.append(Fragment(whole[:2000] or "(empty answer)", reason,
                                         "the model declined" if reason is R.REFUSAL else
                                         f"no examples found; {layout}"))
    return result


class _InstanceReader:
    """Reads an instance answer line by line into blocks, one block per example."""

    def __init__(self, output_first: bool, lines: list[str]) -> None:
        self.output_first = output_first
        self.lines = lines
        self.blocks: list[_Block] = []
        self.cur = _Block()
        self.romans: set[int] | None = None  # lines whose roman marker is in a run, once read

    def _filled(self) -> bool:
        """The example's last field (its output; an output-first example's input) has text:
        an unnumbered "Example: ..." line under it is part of it ("Output: A simile ...",
        then "Example: She is as brave as a lion.")."""
        field = self.cur.input if self.output_first else self.cur.output
        return field is not None and any(part.strip() for part in field)

    def _is_value(self, n: int) -> bool:
        """Line n, a number alone, is the value of the field open above it ("Output:" then
        "12"), not the next example's number: the field is still empty, or it has text and
        the next line with text is no label or header (a column of numbers)."""
        cur = self.cur
        field = (cur.input if self.output_first else
                 cur.output if cur.output is not None else cur.input)
        if field is None:
            return self.output_first and cur.label == ""  # "Class label:", value below
        if not any(part.strip() for part in field):
            return True
        later = next((line for line in self.lines[n + 1:] if line.strip()), None)
        if later is None:  # the last line: "4" ends a column, "3." is a cut example's mark
            return self.lines[n].strip().isdigit()
        return not _INSTANCE_LAYOUT.match(later)

    def _in_run(self, n: int, line: str) -> bool:
        """A roman numeral of two or more letters marking line n's label ("ii) Input: ...")
        is a marker only in a run of the answer's roman-marked labels: one that starts at i,
        or two or more, each going up by one to three from the one before ("i.", "ii)", "iv.";
        "(IV)", "(V)" after the prompt's examples; any style: the label says it is an
        example's). Every other mark is a marker alone; a lone "ii)" or "xii)" is text."""
        if not _MULTI_ROMAN.match(line):
            return True
        if self.romans is None:
            self.romans = set()
            run: list[int] = []
            last = 0
            for k, other in enumerate(self.lines):
                mark = _ROMAN_MARK.match(other)
                if mark is None:
                    continue
                value, rest = _ROMAN_VALUES.get(mark.group(1).lower(), 0), mark.group(2)
                if not value or not (_IN_LABEL.match(rest) or _OUT_LABEL.match(rest)
                                     or _CLASS_LABEL.match(rest)):
                    continue
                if not last < value <= last + 3:  # a new run
                    run = []
                run.append(k)
                last = value
                if len(run) >= 2 or value == 1:
                    self.romans.update(run)
        return n in self.romans

    def _next(self, line: str | None = None) -> None:
        self.cur.open = False
        if self.cur.started():
            self.blocks.append(self.cur)
        self.cur = _Block()
        if line is not None:
            self.cur.raw.append(line)

    def close(self) -> list[_Block]:
        if self.cur.started():
            self.blocks.append(self.cur)  # still open: the text ended inside it
        return self.blocks

    def feed(self, line: str, n: int) -> None:
        """Read line `n` of `lines`."""
        start = _MAY_BE_LAYOUT.match(line)
        if start is None:
            self.cur.raw.append(line)
            self._content(line)
            return
        if start.group(1) is not None:  # a mark or a header; a label word first is neither
            if _SEPARATOR.match(line) or _BARE_MARK.match(line) and not self._is_value(n):
                self._next()
                return
            header = _EXAMPLE_HEADER.match(line)
            if header and (header.group(1) or not header.group(2).strip()
                           or not self._filled()):
                self._next()
                line = header.group(2)
                if not line.strip():
                    return
            listed = _LIST_MARK.match(line)
            if listed and (_IN_LABEL.match(listed.group(1)) or _OUT_LABEL.match(listed.group(1))
                           or _CLASS_LABEL.match(listed.group(1))) and self._in_run(n, line):
                line = listed.group(1)
        self.cur.raw.append(line)
        if self.output_first:
            self._output_first(line)
        else:
            self._input_first(line)

    def _input_first(self, line: str) -> None:
        in_match = _IN_LABEL.match(line)
        cur = self.cur
        if in_match:
            if cur.input is not None or cur.output is not None:
                cur.raw.pop()
                self._next(line)
                cur = self.cur
            rest = " " + in_match.group(1)
            inline = _INLINE_OUT.search(rest)
            if inline:
                cur.input = [rest[: inline.start()]]
                cur.output = [rest[inline.end():]]
            else:
                cur.input = [rest]
            return
        # "Answer:"/"Response:" close an input; inside an output they are part of it.
        out_match = _OUT_LABEL.match(line)
        if out_match and (out_match.group(1).lower() == "output" or cur.output is None):
            if cur.output is not None:
                cur.raw.pop()
                self._next(line)
                cur = self.cur
            cur.output = [out_match.group(2)]
            return
        self._content(line)

    def _content(self, line: str) -> None:
        """A line without a label: it continues what the current example has open."""
        cur = self.cur
        if self.output_first:
            if cur.input is not None:
                cur.input.append(line)
            elif cur.label is not None and not cur.label and line.strip():
                cur.label = line.strip()  # "Class label:" with the value on the next line
            else:
                cur.head.append(line)
        elif cur.output is not None:
            cur.output.append(line)
        elif cur.input is not None:
            cur.input.append(line)
        else:
            cur.head.append(line)

    def _output_first(self, line: str) -> None:
        label = _CLASS_LABEL.match(line)
        in_match = _IN_LABEL.match(line)
        cur = self.cur
        if label:
            if cur.started():
                cur.raw.pop()
                self._next(line)
                cur = self.cur
            rest = " " + label.group(1)
            inline = _INLINE_IN.search(rest)
            if inline:
                cur.label = rest[: inline.start()].strip()
                cur.input = [rest[inline.end():]]
            else:
                cur.label = rest.strip()
            return
        if in_match and cur.input is not None and cur.label:
            # another input under the same label ("under each label, write an input": models
            # often give two): an example of its own with that label
            same = cur.label
            cur.raw.pop()
            self._next(line)
            cur = self.cur
            cur.label = same
        if in_match and cur.input is None:
            cur.input = [in_match.group(1)]
            return
        self._content(line)


def _instance_from(block: _Block, output_first: bool, layout: str,
                   raw: str) -> RawInstance | Fragment:
    head = one_line(" ".join(block.head))
    if output_first:
        if block.label is None:
            return Fragment(raw, R.UNPARSEABLE, f"an input without a class label; {layout}")
        if block.input is None:
            return Fragment(raw, R.MISSING_INPUT, f"a class label without an input; {layout}")
        label = _clean_label(block.label)
        return RawInstance(normalize_input(_clean_field("\n".join(block.input))), label, raw)
    if block.output is None:
        if block.input is None:
            return Fragment(raw, R.UNPARSEABLE, f"text without 'Input:'/'Output:' labels; "
                                                f"{layout}")
        return Fragment(raw, R.MISSING_OUTPUT, f"an input without an output; {layout}")
    if block.input is None and head:
        return Fragment(raw, R.UNLABELED_INPUT,
                        f"text before 'Output:' is not under an 'Input:' label "
                        f"({short_text(head)!r}); {layout}")
    inp = "\n".join(block.input) if block.input is not None else ""
    return RawInstance(normalize_input(_clean_field(inp)), _clean_field("\n".join(block.output)),
                       raw)


_LABEL_QUOTES = ("\"\"", "''", "“”", "‘’", "``")


def _clean_label(text: str) -> str:
    """A class label as one line without what a model wraps it in: markdown emphasis, quotes
    (`"Positive"`, `“Positive”`) and a sentence's final dot when it has no other (`Positive.`;
    `U.S.` keeps its dots), so one label is not two spellings in the pool."""
    label = one_line(text).strip("*_` ")
    while len(label) >= 2 and label[0] + label[-1] in _LABEL_QUOTES:
        label = label[1:-1].strip("*_` ")
    if label.endswith(".") and label.count(".") == 1 and len(label.split()) <= _LABEL_WORDS:
        label = label[:-1].rstrip()
    return label


def _clean_field(value: str) -> str:
    """The field stripped, without a fence line that closes or opens no block of its own: an
    example a model put in a fenced block ("```", "Input: ...", "Output: ...", "```") leaves
    the fence in its last or first field."""
    value = value.strip()
    if "```" not in value:
        return value
    lines = value.split("\n")
    kept = len(lines)
    while kept and lines[kept - 1].strip() == "```":
        kept -= 1
    fences = sum(1 for line in lines[:kept] if line.lstrip().startswith("```"))
    if fences % 2 and kept < len(lines):
        kept, fences = kept + 1, fences + 1  # that one closes the field's own block
    lines = lines[:kept]
    if fences % 2 and lines and lines[0].lstrip().startswith("```"):
        lines.pop(0)
    return "\n".join(lines).strip()


_INSTANCE_LAYOUT = re.compile(
    rf"^[ \t]*(?:(?:{_ANY_MARK})[ \t]*)?{_MD}[ \t]*(?:(?:class[ \t]+)?label|input|"
    rf"(?:expected[ \t]+)?output|response|answer|example[ \t]*#?[ \t]*\d)", re.IGNORECASE)


def json_field_text(value: object) -> str | None:
    """A JSON value of an answer's field as the text of an instance or an instruction: a
    string as it is; a number or true/false as JSON spells it (`1.0`, `true`, never Python's
    `True`); a list or an object as JSON text (`["a", "b"]`, non-ASCII kept), never Python's
    repr. A list of strings is JSON text too, not lines joined: whether the model meant lines
    or a JSON list cannot be told, and JSON text loses neither. None for null (a field that is
    not there is the caller's None too)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _json_key(value: dict, *names: str) -> str | None:
    """The first of `names` that `value` has, in any case ("Output" for "output")."""
    by_lower = {k.lower(): k for k in value if isinstance(k, str)}
    return next((by_lower[n] for n in names if n in by_lower), None)


def _parse_json_instances(text: str, output_first: bool,
                          truncated: bool) -> ParsedInstances | None:
    body = json_text(text, _INSTANCE_LAYOUT)
    if body[:1] not in ("{", "["):
        return None
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        if truncated:
            return ParsedInstances(discarded=[Fragment(body[:2000], R.TRUNCATED,
                                                       "the JSON answer was cut off")])
        return ParsedInstances(discarded=[Fragment(body[:2000], R.UNPARSEABLE,
                                                   "JSON that does not parse")])
    names = ("label", "class_label", "class label", "output") if output_first else ("output",)
    values = data
    if isinstance(data, dict):
        key = _json_key(data, "instances", "examples")
        values = data[key] if key is not None else None
        if values is None:  # {"data": [...]}: the one list it holds
            lists = [v for v in data.values() if isinstance(v, list)]
            values = lists[0] if len(lists) == 1 else None
        if values is None and _json_key(data, *names) is not None:
            values = [data]  # one example, not in a list
    if not isinstance(values, list):
        # JSON, in no shape that holds examples: said as JSON, not as text without labels
        keys = ", ".join(map(repr, list(data)[:5])) if isinstance(data, dict) else ""
        return ParsedInstances(discarded=[Fragment(
            body[:2000], R.UNPARSEABLE,
            f"a JSON {json_type_name(data)}" + (f" (keys {keys})" if keys else "")
            + " with no examples; expected a list of objects with "
            + ("'label' and 'input'" if output_first else "'input' and 'output'"))])
    result = ParsedInstances()
    for value in values:
        raw = json.dumps(value, ensure_ascii=False)
        if not isinstance(value, dict):
            result.discarded.append(Fragment(raw, R.UNPARSEABLE,
                                             "an example that is not an object"))
            continue
        out_key = _json_key(value, *names)
        output = json_field_text(value[out_key]) if out_key is not None else None
        if output is None:
            what = f"whose {out_key!r} is null" if out_key is not None else \
                f"without {names[0]!r}"
            result.discarded.append(Fragment(raw, R.MISSING_OUTPUT, f"an example {what}"))
            continue
        in_key = _json_key(value, "input")
        if in_key is None and output_first:  # as a class label without "Input:" is
            result.discarded.append(Fragment(raw, R.MISSING_INPUT,
                                             "a class label without an 'input'"))
            continue
        inp = json_field_text(value[in_key]) if in_key is not None else None
        # a null input is "no input", as the text layouts' "(none)" is
        output = _clean_label(output) if output_first else output.strip()
        result.instances.append(RawInstance(normalize_input(inp or ""), output, raw))
    if not result.instances and not result.discarded:
        result.discarded.append(Fragment(body[:2000], R.UNPARSEABLE,
                                         "a JSON answer with no examples"))
    return result


# -- markdown tables ----------------------------------------------------------------------------

# A table's rule row: "|---|:--:|", "--- | ---" (a "|" and dashes in each cell)
_TABLE_RULE = re.compile(r"^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+(?:[ \t]*:?-+:?[ \t]*)?$|"
                         r"^[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)+\|?[ \t]*$")
_LINE_BREAK = re.compile(r"<br[ \t]*/?>", re.IGNORECASE)
_EMPHASIS = re.compile(r"[*_`]")


@dataclass
class _Table:
    names: list[str]  # the header's cells, without markdown emphasis
    rows: list[tuple[str, list[str]]]  # (the row's line, its cells)
    start: int  # the index of its header line
    end: int  # the index after its last row

    @property
    def header(self) -> list[str]:
        """The column names in lower case, to match."""
        return [name.lower() for name in self.names]


def _cells(line: str) -> list[str]:
    """A table row's cells: split at each "|" outside inline code; an escaped "\\|" is a "|"
    of the cell's text (in inline code too), inline code keeps its backticks, "<br>" outside
    it is a line break; the pipes that open and close the row make no cells."""
    row = line.strip()
    cells: list[str] = []
    cell: list[str] = []
    i = 0
    ended = False  # the last thing read was a cell's closing "|"
    while i < len(row):
        ended = False
        ch = row[i]
        if ch == "\\" and row[i + 1:i + 2] == "|":
            cell.append("|")
            i += 2
        elif ch == "`":
            run = len(row[i:]) - len(row[i:].lstrip("`"))
            ticks = row[i:i + run]
            close = row.find(ticks, i + run)
            while close >= 0 and row[close + run:close + run + 1] == "`":
                close = row.find(ticks, close + run + 1)
            stop = i + run if close < 0 else close + run
            cell.append(row[i:stop].replace("\\|", "|"))
            i = stop
        elif ch == "|":
            cells.append("".join(cell))
            cell = []
            ended = True
            i += 1
        elif ch == "<" and (br := _LINE_BREAK.match(row, i)):
            cell.append("\n")
            i = br.end()
        else:
            cell.append(ch)
            i += 1
    if not ended:
        cells.append("".join(cell))
    if row.startswith("|"):
        cells = cells[1:]
    return [c.strip() for c in cells]


def _tables(lines: list[str]) -> list[_Table]:
    """The markdown tables in `lines`: a header row, a rule row under it, then the rows that
    follow (lines with a "|", up to a blank line or one without)."""
    found: list[_Table] = []
    n = 1
    while n < len(lines):
        if "|" in lines[n - 1] and "-" in lines[n] and _TABLE_RULE.match(lines[n]):
            header = [_EMPHASIS.sub("", c).strip() for c in _cells(lines[n - 1])]
            end = n + 1
            while end < len(lines) and "|" in lines[end] and lines[end].strip():
                end += 1
            found.append(_Table(header, [(line, _cells(line)) for line in lines[n + 1:end]],
                                n - 1, end))
            n = end + 1
        else:
            n += 1
    return found


def _outside_tables(lines: list[str], tables: list[_Table]) -> list[str]:
    inside = {n for t in tables for n in range(t.start, t.end)}
    return [line for n, line in enumerate(lines) if n not in inside]


def _column(header: list[str], names: re.Pattern[str]) -> int | None:
    return next((n for n, name in enumerate(header) if names.fullmatch(name)), None)


def _content_columns(header: list[str]) -> list[int]:
    """The columns that are not empty-named nor a "#" column (`_NUMBER_COLUMN`)."""
    return [n for n, name in enumerate(header) if name and not _NUMBER_COLUMN.fullmatch(name)]


def _row_cells(line: str, cells: list[str], header: list[str]) -> list[str] | Fragment:
    """The row's cells, one per header cell (missing ones empty), or the row rejected when it
    has more cells than the header: which "|" is the text's cannot be told."""
    if len(cells) > len(header):
        return Fragment(line.strip(), R.UNPARSEABLE,
                        f"a table row with {len(cells)} cells under a header of {len(header)}; "
                        "a '|' in a cell's text is written '\\|'")
    return cells + [""] * (len(header) - len(cells))


def _cut_row(line: str, text: str, truncated: bool) -> bool:
    """The row is the one a token limit cut: the answer was cut and ends in it."""
    return truncated and text.rstrip().endswith(line.strip())


def _answer_tables(text: str, layout: Callable[[str], object]
                   ) -> tuple[list[str], list[_Table]] | None:
    """(the answer's lines, its tables with rows) when the answer is written as tables: None
    when it has none, or has a line of the text layout (`layout(line)` true) outside them (a
    table under an item or in an output is that one's)."""
    if "|" not in text:
        return None
    lines = text.split("\n")
    tables = [t for t in _tables(lines) if t.rows]
    if not tables or any(layout(line) for line in _outside_tables(lines, tables)):
        return None
    return lines, tables


def _readable_rows(table: _Table, text: str, truncated: bool,
                   discarded: list[Fragment]) -> Iterator[tuple[str, list[str]]]:
    """(the row's line stripped, one cell per header cell) for each row of `table` that can
    be read; a row with more cells than the header (`_row_cells`) or the one a token limit
    cut (`_cut_row`) goes to `discarded`, named."""
    for line, found in table.rows:
        cells = _row_cells(line, found, table.header)
        if isinstance(cells, Fragment):
            discarded.append(cells)
        elif _cut_row(line, text, truncated):
            discarded.append(Fragment(line.strip(), R.TRUNCATED,
                                      "the answer hit max_tokens inside this row"))
        else:
            yield line.strip(), cells


_INSTRUCTION_COLUMN = re.compile(
    r"(?:new |generated )?(?:instruction|task|prompt)s?(?: text| description)?")
_NUMBER_COLUMN = re.compile(r"#|no\.?|n|nr\.?|number|num|id|index|task ?#|task (?:no\.?|number)")
_INPUT_COLUMN = re.compile(r"(?:example |sample |optional )?input(?: text)?s?(?: ?\(.*\))?")
_OUTPUT_COLUMN = re.compile(r"(?:expected |example |sample )?(?:output|response|answer)s?"
                            r"(?: ?\(.*\))?")
_LABEL_COLUMN = re.compile(r"(?:class )?label|class|category")
# Two-column tables whose columns are not named Input/Output (`_two_columns`): names that say
# which side of an example a column is ("| Question | Answer |", "| Text | Summary |",
# "| Sentence | Mood |" for a classification task, "| English | French |").
_NOTE_NAME = r"(?: ?\(.*\))?"
_INPUT_NAME = re.compile(
    r"(?:[\w'-]+ ){0,2}(?:input|question|query|prompt|text|sentence|passage|paragraph|phrase|"
    r"word|term|statement|problem|review|comment|tweet|post|message|email|headline|document|"
    r"article|story|description|code|snippet|number|equation|expression|situation|scenario|"
    r"request|premise|claim|dialogue|conversation|context)s?" + _NOTE_NAME +
    r"|(?:original|source|before|given)(?: [\w'-]+){0,2}" + _NOTE_NAME)
_OUTPUT_NAME = re.compile(
    r"(?:[\w'-]+ )?(?:output|response|answer|reply|summary|summaries|translation|result|"
    r"solution|explanation|definition|completion|paraphrase|correction|rewrite|feedback|"
    r"suggestion|recommendation)s?" + _NOTE_NAME +
    r"|(?:rewritten|corrected|revised|improved|edited|simplified|translated|formal|informal|"
    r"polite|paraphrased|summari[sz]ed|fixed|expected|target|after)(?: [\w'-]+){0,2}" +
    _NOTE_NAME)
_LANGUAGE_NAME = re.compile(
    r"(?:english|french|spanish|german|italian|portuguese|dutch|russian|chinese|mandarin|"
    r"japanese|korean|arabic|hindi|turkish|polish|swedish|greek|hebrew|vietnamese|"
    r"indonesian|latin)(?: (?:sentence|text|phrase|word|translation|version)s?)?" + _NOTE_NAME)
_LABEL_NAME = re.compile(
    r"(?:[\w'-]+ )?(?:label|class|category|categories|sentiment|mood|emotion|tone|topic|genre|"
    r"type|kind|classification|polarity|verdict|intent|stance|rating|answer|output|tag|group|"
    r"style|level|grade|prediction|result)s?" + _NOTE_NAME)
_LABEL_WORDS = 5  # a class label is a few words on one line


def _two_columns(table: _Table, output_first: bool) -> tuple[int, int] | str:
    """(input column, output column) of a table with two columns (besides a "#" column) that
    are not named Input/Output, or why it cannot be read: for a classification task
    (`output_first`) the label column is the one named for labels ("Mood", "Category") when
    only one is and its cells are labels (one line, up to `_LABEL_WORDS` words), else the last
    column when its cells are labels, else the first when they are and it is not named for
    inputs ("Review"); for any other task the headers must say
    it: an output name ("Answer", "Summary") beside an input name ("Question", "Text"), or two
    languages ("English", "French": from the first to the second)."""
    header = table.header
    columns = _content_columns(header)
    if len(columns) != 2:
        return f"{len(columns)} columns besides a '#': which are the example cannot be told"
    first, last = columns
    if output_first:
        def labels(column: int) -> bool:
            cells = [_EMPHASIS.sub("", cells[column]).strip() if column < len(cells) else ""
                     for _, cells in table.rows]
            return any(cells) and all("\n" not in c and len(c.split()) <= _LABEL_WORDS
                                      for c in cells)
        named = [c for c in columns if _LABEL_NAME.fullmatch(header[c]) and labels(c)]
        label = named[0] if len(named) == 1 else last if labels(last) else first if labels(
            first) and not _INPUT_NAME.fullmatch(header[first]) else None
        if label is None:
            return "neither column holds short class labels"
        return (first if label == last else last), label
    if _LANGUAGE_NAME.fullmatch(header[first]) and _LANGUAGE_NAME.fullmatch(header[last]):
        return first, last
    outputs = [c for c in columns if _OUTPUT_NAME.fullmatch(header[c])]
    if len(outputs) == 1:
        output = outputs[0]
        other = first if output == last else last
        if _INPUT_NAME.fullmatch(header[other]) or (
                output == last and _OUTPUT_COLUMN.fullmatch(header[output])):
            return other, output
    return "the column names do not say which is the input and which the output"


def _parse_table_list(text: str, truncated: bool) -> ParsedList | None:
    """A generation answer written as a markdown table ("| # | Instruction |", a rule, one row
    per item): each row an item, its number from a "#" column, its input from an "Input"
    column. None when the answer has no table, or list lines outside its tables (a table under
    an item is the item's)."""
    found = _answer_tables(text, lambda line: _LIST_LAYOUT.match(line) or _BULLET.match(line))
    if found is None:
        return None
    lines, tables = found
    result = ParsedList()
    for table in tables:
        column = _column(table.header, _INSTRUCTION_COLUMN)
        if column is None:
            others = _content_columns(table.header)
            column = others[0] if len(others) == 1 else None
        if column is None:
            body = "\n".join(lines[table.start:table.end])
            result.discarded.append(Fragment(
                body[:2000], R.UNPARSEABLE,
                f"a table with no Instruction column (columns: {', '.join(table.names)}); "
                "expected numbered lines such as '9. <instruction>' or a table with an "
                "'Instruction' column"))
            continue
        number_at = _column(table.header, _NUMBER_COLUMN)
        input_at = _column(table.header, _INPUT_COLUMN)
        for raw, cells in _readable_rows(table, text, truncated, result.discarded):
            instruction = clean_instruction(cells[column])
            if not instruction:
                result.discarded.append(Fragment(raw, R.NOT_AN_INSTRUCTION,
                                                 "a table row with no instruction"))
                continue
            index = cells[number_at].strip("*_` .") if number_at is not None else ""
            result.items.append(ListItem(
                instruction, raw, int(index) if index.isdecimal() else None,
                normalize_input(cells[input_at]) if input_at is not None else ""))
    return result


def _parse_table_instances(text: str, output_first: bool,
                           truncated: bool) -> ParsedInstances | None:
    """An instance answer written as a markdown table ("| Input | Output |", or "| Class label
    | Input |" for a classification task), one example per row. None when the answer has no
    table, or has label lines ("Input: ...") outside its tables (a table in an output is the
    output's)."""
    found = _answer_tables(text, lambda line: _IN_LABEL.match(line) or _OUT_LABEL.match(line)
                           or _CLASS_LABEL.match(line))
    if found is None:
        return None
    lines, tables = found
    layout = OUTPUT_FIRST_LAYOUT if output_first else INPUT_FIRST_LAYOUT
    result = ParsedInstances()
    for table in tables:
        outputs, labels = (_column(table.header, _OUTPUT_COLUMN),
                           _column(table.header, _LABEL_COLUMN))
        input_at = _column(table.header, _INPUT_COLUMN)
        output_at = (labels if labels is not None else outputs) if output_first else (
            outputs if outputs is not None else labels)
        if input_at is None or output_at is None:
            read = _two_columns(table, output_first)
            if isinstance(read, str):
                body = "\n".join(lines[table.start:table.end])
                missing = "an Input column" if input_at is None else (
                    "a Class label column" if output_first else "an Output column")
                result.discarded.append(Fragment(
                    body[:2000], R.UNPARSEABLE,
                    f"a table with no {missing[missing.index(' ') + 1:]} (columns: "
                    f"{', '.join(table.names)}; {read}); {layout}, or a table with those "
                    "columns"))
                continue
            input_at, output_at = read
        for raw, cells in _readable_rows(table, text, truncated, result.discarded):
            output = cells[output_at].strip()
            if output_first:
                output = _clean_label(output)
            if not output:
                result.discarded.append(Fragment(
                    raw, R.UNPARSEABLE if output_first else R.MISSING_OUTPUT,
                    f"a table row with no {'class label' if output_first else 'output'}; "
                    f"{layout}"))
                continue
            result.instances.append(RawInstance(normalize_input(cells[input_at]), output, raw))
    return result
