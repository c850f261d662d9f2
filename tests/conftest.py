"""Shared fixtures: everything offline, tiny models built on the fly."""

from __future__ import annotations

import os
import tempfile

# No test may reach the network: the Hub clients read these before any call.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Keep datasets' cache of test data out of the user's cache.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="vse-test-datasets-")
# Exported ONNX graphs are kept for the whole session (app processes the tests
# start share them), never in the user's cache.
os.environ["VSE_ONNX_CACHE"] = tempfile.mkdtemp(prefix="vse-test-onnx-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from tests.tiny_models import make_tiny_bert, make_tiny_resnet, make_tiny_vit  # noqa: E402

transformers_logging.disable_progress_bar()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_vit(tiny_dir) -> Path:
    return make_tiny_vit(tiny_dir / "vit")


@pytest.fixture(scope="session")
def model_dir(tiny_vit, tmp_path_factory) -> Path:
    """A saved tiny model (ViT image backbone, GRU text encoder) for galleries and services to load."""
    from vse import VSEConfig, VSEModel
    from vse.vocab import vocabulary_from_words

    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=8, word_dim=4)
    folder = tmp_path_factory.mktemp("model") / "model"
    VSEModel(config, tokenizer=vocabulary_from_words(["a", "red", "circle"])).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_resnet(tiny_dir) -> Path:
    return make_tiny_resnet(tiny_dir / "resnet")


@pytest.fixture(scope="session")
def tiny_bert(tiny_dir) -> Path:
    return make_tiny_bert(tiny_dir / "bert")
