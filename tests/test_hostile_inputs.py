"""A corpus of bad and hostile inputs, generated here: each is handled or refused clearly.

Images go through the same path as uploads (``vse.images.load_image`` then the
model); texts through the query cleaner and the text encoder; tags and votes
through the feedback store.  The corpus itself is ``vse.testing.hostile``; the count of cases is recorded in
docs/RELIABILITY.md.
"""

from __future__ import annotations

import pytest
import torch

from vse import VSEConfig, VSEModel
from vse.images import ImageLoadError, load_image
from vse.serving.feedback import FeedbackStore, VoteError
from vse.serving.retrieval import QueryError, clean_query
from vse.testing.hostile import IMAGE_CASES, TEXT_CASES, VOTE_CASES
from vse.vocab import vocabulary_from_words


def test_the_corpus_has_at_least_fifty_cases():
    assert len(IMAGE_CASES) + len(TEXT_CASES) + len(VOTE_CASES) >= 50


@pytest.fixture(scope="module")
def model(tiny_vit):
    torch.manual_seed(0)
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=16, word_dim=8)
    return VSEModel(config, tokenizer=vocabulary_from_words(["a", "red", "apple"])).eval()


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_image_case(model, name):
    payload, expected = IMAGE_CASES[name]
    if expected == "ok":
        embedding = model.encode_image([load_image(payload)])
        assert embedding.shape == (1, 16) and torch.isfinite(embedding).all()
    else:
        with pytest.raises(ImageLoadError, match=expected):
            load_image(payload)


@pytest.mark.parametrize("name", list(TEXT_CASES))
def test_text_case(model, name):
    text, expected = TEXT_CASES[name]
    if expected == "ok":
        cleaned = clean_query(text)
        assert cleaned and not any(ord(ch) < 32 for ch in cleaned)
        assert torch.isfinite(model.encode_text([cleaned])).all()
    else:
        with pytest.raises(QueryError, match=expected):
            clean_query(text)


@pytest.mark.parametrize("name", list(VOTE_CASES))
def test_vote_case(tmp_path, name):
    args, expected = VOTE_CASES[name]
    store = FeedbackStore(tmp_path / "votes.db")
    if expected == "ok":
        vote = store.add_vote(*args, "rev")
        assert store.votes()[0].tag == vote.tag  # stored as text, verbatim after normalisation
    else:
        with pytest.raises(VoteError, match=expected):
            store.add_vote(*args, "rev")
        assert store.count() == 0
