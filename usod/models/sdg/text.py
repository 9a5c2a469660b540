"""Word-level tokenizer and vocabulary for the SDG captioner, built from caption data (no downloads).

VirTex (which SDG-SOD's captioner follows) uses a SentencePiece model trained on COCO; usod instead splits
captions into lower-case words and keeps the words seen at least ``min_count`` times, so that a vocabulary
can be built offline from any COCO-captions file, including the synthetic data's ``captions.json``, and so
that every generated token is a whole word with its own attention map (the paper's ``M_j``).

Token ids: ``[PAD] = 0``, ``[UNK] = 1``, ``[SOS] = 2``, ``[EOS] = 3``, then the words, most frequent first
(ties alphabetical), so that the same captions always give the same vocabulary.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from usod.data.captions import CaptionIndex
from usod.data.io import InvalidInputError

__all__ = ["EOS", "PAD", "SOS", "SPECIALS", "UNK", "Vocabulary", "read_coco_captions", "tokenize"]

PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
SPECIALS: tuple[str, ...] = (PAD, UNK, SOS, EOS)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters and digits, with an optional apostrophe suffix); punctuation
    is dropped."""
    return _WORD.findall(text.lower())


def read_coco_captions(path: str | Path) -> CaptionIndex:
    """Read a COCO-captions JSON file (see :mod:`usod.data.captions`)."""
    return CaptionIndex.from_file(path)


class Vocabulary:
    """A word <-> id table with the special tokens first.

    Args:
        tokens: Every token in id order; must start with :data:`SPECIALS`.

    Raises:
        ValueError: The specials are missing or a token repeats.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = [str(t) for t in tokens]
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            dup = next(t for t, n in Counter(tokens).items() if n > 1)
            raise ValueError(f"token {dup!r} appears twice in the vocabulary")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    pad_id, unk_id, sos_id, eos_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Count words over ``captions`` and keep those seen ``min_count`` times (at most ``max_size`` ids in
        all, specials included)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        return cls(list(SPECIALS) + words)

    @classmethod
    def from_source(cls, source: str | Path | Sequence[str], min_count: int = 1) -> Vocabulary:
        """A vocabulary from a token list, a ``.txt`` file (one token a line) or a COCO-captions ``.json``.

        Raises:
            FileNotFoundError: The file does not exist.
            InvalidInputError: The file is neither.
        """
        if not isinstance(source, (str, Path)):
            return cls(source)
        path = Path(source)
        if path.suffix.lower() == ".json":
            return cls.build(read_coco_captions(path).captions(), min_count=min_count)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: vocabulary file not found")
        lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
        try:
            return cls([line for line in lines if line])
        except ValueError as err:
            raise InvalidInputError(path, f"not a usod vocabulary: {err}") from err

    def save(self, path: str | Path) -> Path:
        """Write one token per line."""
        path = Path(path)
        path.write_text("\n".join(self.tokens) + "\n", encoding="utf-8")
        return path

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """``[SOS] w_1 ... w_T [EOS]`` ids; words cut so that at most ``max_length`` ids remain."""
        ids = [self.index.get(w, self.unk_id) for w in tokenize(text)]
        if max_length is not None:
            if max_length < 2:
                raise ValueError(f"max_length must leave room for [SOS] and [EOS], got {max_length}")
            ids = ids[: max_length - 2]
        return [self.sos_id, *ids, self.eos_id]

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """BxL int64 ids (``[SOS] ... [EOS]`` then ``[PAD]``), L the longest encoded caption."""
        encoded = [self.encode(t, max_length) for t in texts]
        length = max(len(e) for e in encoded)
        out = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        for i, e in enumerate(encoded):
            out[i, : len(e)] = torch.tensor(e, dtype=torch.long)
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids`` up to the first ``[EOS]``, without ``[SOS]``/``[PAD]``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.sos_id, self.pad_id):
                continue
            words.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        return words
