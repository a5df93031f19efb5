"""Build a real ``CLIPTokenizer`` offline from a word list.

Stable Diffusion uses CLIP's byte-level BPE; the toy model and the tiny test models need a
tokenizer of the same class that works with no hub access. We train a BPE with the
``tokenizers`` trainer (hand-written merges mis-split words because of rank collisions) so
that every listed word is a single token, then load the exported vocab/merges with
``transformers.CLIPTokenizer``. Unknown words fall back to characters, as in real CLIP.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77, extra_tokens: Iterable[str] = ()):
    """Return a ``CLIPTokenizer`` whose vocabulary holds every word of ``words`` as one token.

    ``extra_tokens`` are added as whole words too (e.g. a token reserved for the exceptional
    prompt that never appears in captions). Ids: ``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1
    (also the pad token, as in SD 1.x).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    vocabulary = sorted({w.lower() for w in list(words) + list(extra_tokens)})
    bpe = Tokenizer(models.BPE(unk_token=None, end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, special_tokens=[BOS, EOS], end_of_word_suffix="</w>", show_progress=False
    )
    # Repeating the corpus makes every full word frequent enough to be merged into one token.
    bpe.train_from_iterator([" ".join(vocabulary)] * 10, trainer)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)
        tokenizer = CLIPTokenizer(
            os.path.join(tmp, "vocab.json"),
            os.path.join(tmp, "merges.txt"),
            pad_token=EOS,
            model_max_length=model_max_length,
        )
    for word in vocabulary:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer split {word!r} into {ids}; expected a single token")
    return tokenizer
