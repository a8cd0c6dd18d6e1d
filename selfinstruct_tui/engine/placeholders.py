"""Placeholder text in instances: the spellings models and datasets use for "no input", for a
missing output, and for inputs a text-only model cannot see.

One set of rules serves generation, seed files, `dedup`, the exports and `seeds check`, so an
input written as `<noinput>` in one place and `N/A` in another is the same empty input everywhere.

The Self-Instruct data marks a missing input with `<noinput>` (yizhongw/self-instruct, Alpaca);
models also write `No input.`, `None`, `(none)`, `N/A` and more. The paper's filters drop
instances whose output is empty; placeholder outputs (`<No Output>`, a lone `---`) are empty
outputs in disguise.
"""

from __future__ import annotations

import re

# Compared after `_key`: lowercase, surrounding brackets, quotes, emphasis and final dots removed,
# runs of space, '_' and '-' between words turned into one space.
_NO_INPUT = frozenset({
    "", "noinput", "no input", "none", "n/a", "na", "nil", "null", "empty", "blank", "nothing",
    "not applicable", "not needed", "no input needed", "no input required", "no input provided",
    "no input given", "no input necessary", "input not required", "input not needed",
    "no additional input", "-", "--", "—", "–",
    "无", "无输入", "没有", "没有输入", "不需要输入",  # Chinese: none, no input, not needed
})

# "No input" said as a sentence (after `_key`): "There is no input for this task.", "This task
# does not require any input.", "No input is needed.", "None required."
_NO_INPUT_SENTENCE = re.compile(
    r"(?:there is no|there['’]s no|this (?:task|instruction) (?:has|needs|requires|takes) no|"
    r"this (?:task|instruction) does(?: not|n['’]t) (?:need|require|take|have)(?: an| any)?|"
    r"no(?: additional| specific| further)?|none)"
    r"(?: input)?(?: (?:is|was))?(?: (?:needed|required|necessary|provided|given))?"
    r"(?: (?:for|in) this (?:task|instruction|example))?")
_NO_INPUT_WORDS = ("input", "needed", "required", "necessary")

_NO_OUTPUT = frozenset({
    "nooutput", "no output", "n/a", "na", "not applicable", "no answer", "no response", "tbd",
    "todo", "output", "answer", "response", "insert output here", "output here",
})

_SEPARATOR_ONLY = re.compile(r"^[\s\-=*#_~.…—–|`]*$")
_BRACKETED = re.compile(r"^\s*[<\[{(]\s*(.{0,80}?)\s*[>\]})]\s*$", re.DOTALL)
_URL_ONLY = re.compile(r"^\s*[<(\[]?\s*(?:https?://|www\.)\S+\s*[>)\]]?\s*$", re.IGNORECASE)
# A bracketed slot that stands for something the model cannot see or did not fill in.
_ATTACHMENT_WORDS = re.compile(
    r"\b(?:attach\w*|image|img|picture|photo\w*|screenshot|video|audio|recording|file|pdf|"
    r"document|link|url|insert|paste|upload\w*|see below|see above|here)\b", re.IGNORECASE)


_SPACES = re.compile(r"[\s_]+")
_INNER_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")


# The longest placeholder spelling; a key holds every character of the text that is not
# whitespace or '_', so a text with more of those than this is no placeholder.
_LONGEST = max(map(len, _NO_INPUT | _NO_OUTPUT))
_TOO_LONG = re.compile(rf"(?:[^\s_][\s_]*){{{_LONGEST + 1}}}")


def _key(text: str) -> str:
    """The text as the placeholder sets spell it, or, for a text too long to be one of them,
    the text stripped and lowercased only (longer than every spelling, so in neither set and
    not empty): instances are mostly sentences, and the two substitutions below over each of
    them were most of this module's cost per answer."""
    value = text.strip().lower()
    for _ in range(3):  # "(<no input>)", "'None'."
        value = value.strip(" \t\r\n.\"'`*_")  # markdown emphasis too: "_(none)_"
        match = _BRACKETED.match(value)
        if not match:
            break  # another turn would strip and match the same text
        value = match.group(1)
    if len(value) > _LONGEST and _TOO_LONG.search(value):
        return value
    value = _SPACES.sub(" ", value).strip()
    return _INNER_HYPHEN.sub(" ", value)


def is_no_input(text: str) -> bool:
    """True when `text` is empty or one of the usual spellings of "no input", also as a short
    sentence ("There is no input for this task.", "No input is required.")."""
    key = _key(text)
    if key in _NO_INPUT:
        return True
    return (len(key) <= 60 and any(word in key for word in _NO_INPUT_WORDS)
            and _NO_INPUT_SENTENCE.fullmatch(_SPACES.sub(" ", key)) is not None)


def normalize_input(text: str) -> str:
    """The input with surrounding whitespace removed; "" for any "no input" spelling."""
    stripped = text.strip()
    return "" if not stripped or is_no_input(stripped) else stripped


def placeholder_output(text: str) -> str | None:
    """Why `text` is not a real output (a short description), or None when it is one.

    Bare "None" and "No" stay valid outputs: they answer many questions. Bracketed forms such as
    `(none)` or `<No Output>` and lone separators do not.
    """
    stripped = text.strip()
    if not stripped:
        return "empty output"
    if _SEPARATOR_ONLY.match(stripped):
        return f"the output is only {stripped[:20]!r}"
    key = _key(stripped)
    if key in _NO_OUTPUT:
        return f"placeholder output {stripped[:40]!r}"
    if _BRACKETED.match(stripped) and (key in _NO_INPUT or key in _NO_OUTPUT or not key):
        return f"placeholder output {stripped[:40]!r}"
    return None


def unusable_input(text: str) -> str | None:
    """Why `text` cannot be an input for a text-only model, or None when it can.

    An input that is only a URL (the model cannot open it) or a bracketed slot such as
    `<Picture Attached>` or `[insert text here]` (the content is not there).
    """
    stripped = text.strip()
    if not stripped:
        return None
    if _URL_ONLY.match(stripped):
        return f"the input is only a link ({stripped[:60]}); the model cannot open it"
    match = _BRACKETED.match(stripped)
    if match and _ATTACHMENT_WORDS.search(match.group(1)):
        return f"the input is a placeholder ({stripped[:60]}), not content"
    return None


_REFUSAL = re.compile(
    r"^\W*(?:i['’]?m sorry|i am sorry|sorry[,.!]|i apologi[sz]e|i can['’]?t\b|i cannot\b|"
    r"i can not\b|i won['’]?t\b|i will not\b|i['’]?m (?:not able|unable)|i am (?:not able|unable)|"
    r"as an ai\b|unfortunately,? i\b|i['’]?m afraid i)", re.IGNORECASE)


def is_refusal(text: str) -> bool:
    """The model declined ("I'm sorry, but I can't ...", "As an AI language model, I cannot")."""
    return bool(_REFUSAL.match(text))
