"""Word vocabulary of the GRU text encoder, kept as a standard ``tokenizers`` file.

Text is NFKC-normalised, lower-cased, and split into words and punctuation marks
(``tokenizers``' ``Whitespace`` pre-tokenizer: runs of word characters, runs of
other non-space characters).  Words seen fewer than ``min_frequency`` times in the
training text map to ``[UNK]``, as VSE++ did with its count threshold of 4.
The vocabulary is saved as ``tokenizer.json``: no pickles.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from vse.errors import ModelLoadError

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
PAD_ID = 0
UNK_ID = 1
TOKENIZER_FILE = "tokenizer.json"


def _word_tokenizer(vocab: dict[str, int] | None = None) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def build_vocabulary(texts: Iterable[str], *, min_frequency: int = 4, max_size: int | None = None) -> Tokenizer:
    """Learn a word-level tokenizer from training text (never from evaluation text).

    ``[PAD]`` has id 0 and ``[UNK]`` id 1; other words are ordered by frequency.
    """
    tokenizer = _word_tokenizer()
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_size or 10**9,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, UNK_TOKEN],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID or tokenizer.token_to_id(UNK_TOKEN) != UNK_ID:
        raise RuntimeError("special tokens did not get their reserved ids")
    return tokenizer


def vocabulary_from_words(words: Iterable[str]) -> Tokenizer:
    """A tokenizer over an explicit word list (for tests and fixed vocabularies)."""
    vocab = {PAD_TOKEN: PAD_ID, UNK_TOKEN: UNK_ID}
    for word in words:
        vocab.setdefault(word, len(vocab))
    return _word_tokenizer(vocab)


def save_vocabulary(tokenizer: Tokenizer, folder: str | Path) -> Path:
    path = Path(folder) / TOKENIZER_FILE
    tokenizer.save(str(path))
    return path


def load_vocabulary(folder: str | Path) -> Tokenizer:
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the GRU text encoder needs its vocabulary at {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception that does not name the file
        raise ModelLoadError(f"{path} is not a readable tokenizers file: {err}") from err
    if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID or tokenizer.token_to_id(UNK_TOKEN) != UNK_ID:
        raise ModelLoadError(f"{path} is not a vocabulary of this project ([PAD]=0 and [UNK]=1 expected)")
    return tokenizer
