"""The object's words in a prompt: marked as PrimeComposer marks them, or named by a setting.

PrimeComposer writes the object's words between two ``<ref>`` markers, ``"a painting of a <ref> red dog <ref>"``,
and encodes the prompt with the markers removed (``"a painting of a red dog"``). This module parses that form, with
no model: :func:`parse_prompt` returns the text the encoder sees and the character spans of the marked words in it;
:func:`object_spans` falls back to a setting's words (``object_words``) found in an unmarked prompt. Mapping spans
to the text encoder's token positions needs the tokenizer (``tficon.model.token_positions``).

Several marked phrases are allowed (pairs of markers, in order); an odd number of markers is an error. A marker
may be glued to punctuation (``"<ref> red dog <ref>, at night"``); the punctuation stays in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MARKER", "MarkedPrompt", "object_spans", "parse_prompt", "plain_prompt"]

MARKER = "<ref>"
# A marker with the spaces around it: removed so that the words on either side keep exactly one space between them.
_MARKER_RE = re.compile(r"\s*" + re.escape(MARKER) + r"\s*")


@dataclass(frozen=True)
class MarkedPrompt:
    """A prompt with its markers removed (``text``, what the text encoder sees) and the (start, end) character
    spans of the marked phrases in ``text``, in order (empty when the prompt has no markers)."""

    text: str
    spans: tuple[tuple[int, int], ...]

    @property
    def words(self) -> tuple[str, ...]:
        """The marked words, in order."""
        return tuple(word for start, end in self.spans for word in self.text[start:end].split())


def parse_prompt(prompt: str) -> MarkedPrompt:
    """Strip the ``<ref>`` markers of ``prompt`` and keep where the marked phrases went (module docstring).

    Raises ValueError for an odd number of markers or an empty marked phrase."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    pieces = _MARKER_RE.split(prompt)
    markers = len(pieces) - 1
    if markers % 2:
        raise ValueError(
            f"prompt has {markers} {MARKER} marker(s), an unbalanced pair: mark the object's words between two "
            f"markers, e.g. 'a painting of a {MARKER} red dog {MARKER}'; got {prompt!r}"
        )
    text, spans = "", []
    for i, piece in enumerate(pieces):
        marked = i % 2 == 1
        if marked and not piece.strip():
            raise ValueError(f"prompt has an empty {MARKER} ... {MARKER} pair: put the object's words between them")
        # one space where a marker stood between two words; none at the ends or before punctuation
        if text and piece and not piece[0] in ",.;:!?)":
            text += " "
        start = len(text)
        text += piece
        if marked:
            spans.append((start, len(text)))
    return MarkedPrompt(text, tuple(spans))


def plain_prompt(prompt: str) -> str:
    """``prompt`` without its markers (the text the encoder sees); raises like :func:`parse_prompt`."""
    return parse_prompt(prompt).text


def object_spans(prompt: str, object_words: str = "") -> MarkedPrompt:
    """The marked phrases of ``prompt``, or else every whole-word occurrence of ``object_words`` in it.

    Markers win over the setting (a prompt that marks its object says which words are meant). An ``object_words``
    that the prompt does not contain raises ValueError naming both; with neither, the spans are empty."""
    marked = parse_prompt(prompt)
    words = object_words.split() if isinstance(object_words, str) else None
    if words is None:
        raise ValueError(f"object_words must be a string of words, got {object_words!r}")
    if marked.spans or not words:
        return marked
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    found = tuple(m.span() for m in re.finditer(pattern, marked.text, flags=re.IGNORECASE))
    if not found:
        raise ValueError(
            f"object_words {object_words!r} do not occur in the prompt {marked.text!r}; name words of the prompt, "
            f"or mark them in it as 'a painting of a {MARKER} red dog {MARKER}'"
        )
    return MarkedPrompt(marked.text, found)
