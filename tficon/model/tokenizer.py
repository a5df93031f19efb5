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
        _renumber_words_first(os.path.join(tmp, "vocab.json"), vocabulary)
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


def _renumber_words_first(vocab_file: str, words: list[str]) -> None:
    """Give the special tokens, then the whole words (sorted), then every other token fixed ids.

    The BPE trainer numbers its tokens in an order that varies from one build to the next (ties between
    equally frequent pairs), so two builds of the same vocabulary could tokenize one prompt to different ids,
    and a model built twice would read its prompts differently. Which ids the tokens get does not change how
    a text is split, so they are renumbered deterministically.
    """
    import json

    with open(vocab_file, encoding="utf-8") as handle:
        trained = json.load(handle)
    whole = [w + "</w>" for w in words]
    order = [BOS, EOS] + whole + sorted(set(trained) - {BOS, EOS} - set(whole), key=lambda t: (len(t), t))
    if set(order) != set(trained):
        raise RuntimeError("internal: the trained vocabulary lacks a whole word")
    with open(vocab_file, "w", encoding="utf-8") as handle:
        json.dump({token: i for i, token in enumerate(order)}, handle, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------------------------
# The real CLIP BPE (49,408 tokens), rebuilt from the merge list that the open_clip package ships
# ----------------------------------------------------------------------------------------------------------------

#: The registry package whose wheel carries CLIP's merge list, and the file inside it.
CLIP_BPE_PACKAGE = "open-clip-torch==3.3.0"
CLIP_BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
#: How many merges CLIP uses: 49,408 tokens = 512 byte symbols (with and without "</w>") + merges + 2 specials.
CLIP_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the other 68 bytes are mapped to
    code points 256, 257, ... in byte order and follow them.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + k) for k in range(len(others))]


def clip_vocabulary(merge_lines: list[str]) -> tuple[dict[str, int], list[str]]:
    """CLIP's token -> id table and its merge list, from the lines of ``bpe_simple_vocab_16e6.txt``.

    The first line is a header; the next ``CLIP_MERGES`` lines are merges ("a b"), in rank order. Ids:
    the byte symbols, the same with "</w>", one token per merge, then ``<|startoftext|>`` (49406) and
    ``<|endoftext|>`` (49407). Id 7788 is "rian</w>", the official exceptional-prompt token.
    """
    merges = [line for line in merge_lines[1 : CLIP_MERGES + 1]]
    if len(merges) != CLIP_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"expected {CLIP_MERGES} merge lines of two symbols after the header")
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def read_clip_bpe(path: str | os.PathLike) -> list[str]:
    """Lines of CLIP's merge list from a ``.txt.gz``/``.txt`` file, or from a wheel of ``CLIP_BPE_PACKAGE``."""
    import gzip
    import zipfile

    path = os.fspath(path)
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as wheel:
            raw = gzip.decompress(wheel.read(CLIP_BPE_MEMBER))
    elif path.endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    else:
        with open(path, "rb") as handle:
            raw = handle.read()
    return raw.decode("utf-8").split("\n")


def download_clip_bpe(folder: str | os.PathLike) -> str:
    """Fetch ``CLIP_BPE_PACKAGE``'s wheel (no dependencies) with pip into ``folder``; return the wheel's path."""
    import glob
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", CLIP_BPE_PACKAGE, "-d", os.fspath(folder)],
        check=True,
    )
    wheels = sorted(glob.glob(os.path.join(os.fspath(folder), "open_clip_torch-*.whl")))
    if not wheels:
        raise RuntimeError(f"pip download {CLIP_BPE_PACKAGE} left no wheel in {folder}")
    return wheels[-1]


def build_real_clip_tokenizer(bpe_source: str | os.PathLike | None = None, model_max_length: int = 77):
    """A ``CLIPTokenizer`` with CLIP's own 49,408-token vocabulary and merges (as in SD 1.x: pads with EOS).

    ``bpe_source`` is a merge-list file or an open_clip wheel; ``None`` downloads the wheel from the package
    registry with pip (no model hub involved).
    """
    import json

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        source = download_clip_bpe(tmp) if bpe_source is None else bpe_source
        vocab, merges = clip_vocabulary(read_clip_bpe(source))
        vocab_file, merges_file = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as handle:
            json.dump(vocab, handle, ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8") as handle:
            handle.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(vocab_file, merges_file, pad_token=EOS, model_max_length=model_max_length)
