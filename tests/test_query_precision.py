"""Search queries in int8 (``VSEModel.encode_query``): float32 is exactly ``encode_text``, int8 is
close to it, and the app's setting reaches the service."""

from __future__ import annotations

import pytest
import torch

from vse import VSEConfig, VSEModel
from vse.vocab import vocabulary_from_words

QUERIES = ["a red apple", "a flag with a star", "clock", ""]


@pytest.fixture(scope="module")
def transformer_model(tiny_vit, tiny_bert) -> VSEModel:
    torch.manual_seed(0)
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="transformer",
                       text_model=str(tiny_bert), embed_dim=16)  # fmt: skip
    return VSEModel(config).eval()


@pytest.fixture(scope="module")
def gru_model(tiny_vit) -> VSEModel:
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=8, word_dim=4)
    return VSEModel(config, tokenizer=vocabulary_from_words(["a", "red", "apple"])).eval()


def test_float32_queries_are_exactly_encode_text(transformer_model):
    for query in QUERIES:
        assert torch.equal(transformer_model.encode_query(query, "fp32"), transformer_model.encode_text([query]))


def test_int8_queries_are_unit_vectors_close_to_float32(transformer_model):
    for query in QUERIES:
        quantized, exact = transformer_model.encode_query(query, "int8"), transformer_model.encode_text([query])
        assert quantized.shape == exact.shape == (1, 16)
        assert torch.linalg.vector_norm(quantized) == pytest.approx(1.0, abs=1e-5)
        assert float(quantized @ exact.T) > 0.95
    assert transformer_model.text_encoder.query_copy.exported


def test_a_gru_has_no_int8_copy_and_answers_as_encode_text(gru_model):
    for query in QUERIES[:3]:
        assert torch.equal(gru_model.encode_query(query, "int8"), gru_model.encode_text([query]))


def test_an_unknown_precision_is_refused(transformer_model):
    with pytest.raises(ValueError, match="precision must be one of"):
        transformer_model.encode_query("a clock", "int4")


def test_the_service_searches_with_its_query_precision(transformer_model):
    """RetrievalService.search_text: fp32 ranks as exact search over encode_text; int8 uses the int8 copy."""
    import numpy as np

    from vse.serving.gallery import Gallery, GalleryEmbeddings, GalleryItem
    from vse.serving.index import exact_search
    from vse.serving.retrieval import RetrievalService

    rows = 50
    gallery = Gallery([GalleryItem(f"i{i}", b"x", captions=[f"c {i}"]) for i in range(rows)])
    images = torch.nn.functional.normalize(torch.randn(rows, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    embeddings = GalleryEmbeddings(images, images.clone(), "m", "g")
    for precision in ("fp32", "int8"):
        service = RetrievalService(transformer_model, "m", gallery, embeddings, "exact", query_precision=precision)
        hits = service.search_text("a red apple", k=5)
        query = transformer_model.encode_query("a red apple", precision).numpy()
        assert [h.index for h in hits] == exact_search(images.numpy(), query, 5)[1][0].tolist()
        assert np.allclose([h.score for h in hits], exact_search(images.numpy(), query, 5)[0][0], atol=1e-5)
    with pytest.raises(ValueError, match="query_precision"):
        RetrievalService(transformer_model, "m", gallery, embeddings, "exact", query_precision="half")


def test_the_app_reads_the_precision_from_flags_and_variables(capsys):
    import app as app_module

    assert app_module.AppConfig().query_precision == "int8"
    assert app_module.main(["--query-precision=fp16", "--print-config"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "query_precision must be one of" in error
    assert app_module.main(["--print-config"], environ={"VSE_QUERY_PRECISION": "fp32"}) == 0
    assert '"query_precision": "fp32"' in capsys.readouterr().out
    assert app_module.main(["--print-config", "--query-precision=int8"], environ={"VSE_QUERY_PRECISION": "fp32"}) == 0
    assert '"query_precision": "int8"' in capsys.readouterr().out
