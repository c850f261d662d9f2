"""Tag lists as text, the GRU vocabulary and the GRU encoder."""

from __future__ import annotations

import pytest
import torch

from vse.text import GRUTextEncoder, normalize_tag, tags_to_text
from vse.vocab import PAD_ID, UNK_ID, build_vocabulary, load_vocabulary, save_vocabulary, vocabulary_from_words


def test_tags_to_text_rule():
    assert tags_to_text(["Red_Apple", "fruit", "FRUIT", " ", "still-life"]) == "red apple, fruit, still life"
    assert tags_to_text([]) == ""
    assert normalize_tag("  Ｆｌａｇ\t--Star ") == "flag star"  # NFKC folds full-width letters
    with pytest.raises(TypeError):
        tags_to_text("apple")


def test_vocabulary_counts_training_text_only():
    train = ["a red apple", "a red flag", "a red star", "a red apple"]
    tokenizer = build_vocabulary(train, min_frequency=2)
    vocab = tokenizer.get_vocab()
    assert vocab["[PAD]"] == PAD_ID and vocab["[UNK]"] == UNK_ID
    assert {"a", "red", "apple"} <= set(vocab) and "flag" not in vocab  # seen once
    ids = tokenizer.encode("A RED telephone!").ids
    assert ids[:2] == [vocab["a"], vocab["red"]] and ids[2] == UNK_ID and ids[3] == UNK_ID


def test_vocabulary_round_trip(tmp_path):
    tokenizer = build_vocabulary(["one two two three three three"], min_frequency=1)
    save_vocabulary(tokenizer, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = load_vocabulary(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    with pytest.raises(FileNotFoundError):
        load_vocabulary(tmp_path / "missing")


def test_gru_encoder_handles_padding_empty_and_truncation():
    torch.manual_seed(0)
    encoder = GRUTextEncoder(
        vocabulary_from_words(["a", "red", "apple"]), word_dim=8, embed_dim=6, num_layers=1, max_tokens=4
    )
    batch = encoder.tokenize(["a red apple", "", "a a a a a a a"])
    assert batch["lengths"].tolist() == [3, 1, 4]
    assert batch["input_ids"][1, 0].item() == UNK_ID
    out = encoder(batch)
    assert out.shape == (3, 6)
    # Padding does not change a sentence's embedding.
    alone = encoder(encoder.tokenize(["a red apple"]))
    assert torch.allclose(alone[0], out[0], atol=1e-6)
