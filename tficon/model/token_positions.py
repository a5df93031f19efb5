"""Where the object's words sit among the text encoder's tokens (the key positions of cross-attention).

CLIP's tokenizer splits the text into words first and byte-pair-encodes each word on its own, so the tokens of a
prefix followed by a phrase that starts at a word boundary are the prefix's tokens followed by the phrase's. The
positions of a phrase are therefore ``1 + len(tokens(prefix))`` onwards (position 0 is the start token), which
:func:`token_positions` computes with the model's own tokenizer. SDXL's two tokenizers share CLIP's splitting; both
are asked, and a disagreement raises rather than guessing.

PrimeComposer's released code uses a shortcut instead: the index of each marked word in the marked prompt split on
spaces, taken directly as a token position. That agrees with this mapping when every word before the marked phrase
and in it is one token (the marker word stands in for the start token), and points at other tokens otherwise.
"""

from __future__ import annotations

from tficon.core.prompt_markers import MarkedPrompt, object_spans

__all__ = ["object_token_positions", "object_token_positions_of", "token_positions"]


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text.strip() else 0


def token_positions(tokenizer, marked: MarkedPrompt) -> tuple[int, ...]:
    """Token positions (0 = the start token) of the phrases ``marked.spans`` of ``marked.text``, sorted and unique.

    A phrase that reaches past the encoder's window (``tokenizer.model_max_length`` with its start and end tokens)
    raises ValueError."""
    window = int(tokenizer.model_max_length)
    positions: set[int] = set()
    for start, end in marked.spans:
        before = _count(tokenizer, marked.text[:start])
        inside = _count(tokenizer, marked.text[start:end])
        last = before + inside  # position of the phrase's last token
        if last > window - 2:
            raise ValueError(
                f"the object's words {marked.text[start:end]!r} end at token {last}, past the text encoder's "
                f"window of {window} tokens (start and end tokens included); shorten the prompt before them"
            )
        positions.update(range(1 + before, 1 + last))
    return tuple(sorted(positions))


def object_token_positions(model, marked: MarkedPrompt) -> tuple[int, ...]:
    """:func:`token_positions` with the tokenizer of a ``LoadedModel`` (SDXL: both tokenizers, which must agree)."""
    positions = token_positions(model.tokenizer, marked)
    second = getattr(model, "tokenizer_2", None)
    if second is not None and token_positions(second, marked) != positions:
        raise ValueError(
            f"the two tokenizers of this model place the object's words {marked.words} at different tokens; "
            "name words both split alike"
        )
    return positions


def object_token_positions_of(model, prompt: str, object_words: str, needed_by: str) -> tuple[int, ...]:
    """The token positions of the object's words of ``prompt``: its ``<ref>`` marked words, else ``object_words``
    (``tficon.core.prompt_markers.object_spans``). ``needed_by`` names what needs them, for the error raised when
    neither gives any."""
    marked = object_spans(prompt, object_words)
    if not marked.spans:
        raise ValueError(
            f"{needed_by} needs the object's words: mark them in the prompt as 'a painting of a <ref> red dog <ref>' "
            f"or name them with object_words; the prompt {prompt!r} has none"
        )
    return object_token_positions(model, marked)
