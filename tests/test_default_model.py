"""The offline default in assets/: loads with no network and answers simple queries sensibly."""

from __future__ import annotations

import pytest
import torch

from vse import VSEModel
from vse.serving.gallery import GalleryEmbeddings, load_gallery, model_digest
from vse.testing.app_runner import ASSETS

pytestmark = pytest.mark.skipif(not (ASSETS / "model" / "config.json").is_file(), reason="assets/ not built")

# Query -> words of which one must appear in the title, captions or tags of a top-5 image.
QUERIES = [
    ("a red apple", ("apple",)),
    ("a telephone", ("phone", "telephone")),
    ("a clock", ("clock",)),
    ("a house", ("house",)),
    # A known failure of the web data, kept visible: a quarter of the web images are star
    # shapes of one collection tagged "stars", and the default recipe learns "star" from
    # them, so this query returns star-like drawings, not flags (README, "Known limits").
    pytest.param("a flag with a star", ("flag",), marks=pytest.mark.xfail(strict=True, reason="stars of the web set")),
]


@pytest.fixture(scope="module")
def default():
    model = VSEModel.from_pretrained(str(ASSETS / "model"))
    gallery, skipped = load_gallery(ASSETS / "gallery")
    embeddings = GalleryEmbeddings.load(ASSETS / "index", model_digest(ASSETS / "model"), gallery.fingerprint)
    return model, gallery, embeddings, skipped


def test_assets_are_complete_and_small(default):
    model, gallery, embeddings, skipped = default
    assert skipped == {} and len(gallery) > 6000
    assert embeddings is not None, "assets/index was not made by assets/model for this gallery"
    assert sum(item.split == "test" for item in gallery.items) >= 1000
    sizes = [p.stat().st_size for p in ASSETS.rglob("*") if p.is_file()]
    assert max(sizes) < 10_000_000 and sum(sizes) < 50_000_000
    assert model.metrics["test"]["rsum"] > 0


def test_stored_embeddings_are_this_models(default):
    """Re-encoding thumbnails gives (nearly) the stored embeddings of the full-size images."""
    model, gallery, embeddings, _ = default
    sample = list(range(0, len(gallery), len(gallery) // 20))[:20]
    fresh = model.encode_image([gallery.image(i) for i in sample])
    agreement = (fresh * embeddings.images[sample]).sum(dim=1)
    assert agreement.min() > 0.9, agreement


@pytest.mark.parametrize("query, words", QUERIES)
def test_simple_queries_find_a_matching_test_image(default, query, words):
    model, gallery, embeddings, _ = default
    test_rows = [i for i, item in enumerate(gallery.items) if item.split == "test"]
    scores = embeddings.images[test_rows] @ model.encode_text([query])[0]
    top = [gallery.items[test_rows[j]] for j in torch.topk(scores, 5).indices.tolist()]
    texts = [" ".join([item.title, *item.captions, *item.tags]).lower() for item in top]
    assert any(word in text for text in texts for word in words), [item.title for item in top]
