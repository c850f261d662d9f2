"""A corpus of bad and hostile inputs, generated here: each is handled or refused clearly.

Images go through the same path as uploads (``vse.images.load_image`` then the
model); texts through the query cleaner and the text encoder; tags and votes
through the feedback store.  The count of cases is recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vse import VSEConfig, VSEModel
from vse.feedback import FeedbackStore, VoteError
from vse.images import ImageLoadError, load_image
from vse.retrieval import QueryError, clean_query
from vse.vocab import vocabulary_from_words


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def exif_rotated() -> bytes:
    image = Image.new("RGB", (40, 10), (200, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 8
    return encode(image, "JPEG", exif=exif)


def animated_gif() -> bytes:
    frames = [Image.new("P", (16, 16), i) for i in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def sixteen_bit() -> bytes:
    return encode(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG")


# name -> (payload, expected): "ok" means it must be encoded; otherwise a fragment of the error message.
IMAGE_CASES = {
    "empty file": (b"", "empty"),
    "truncated png": (encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:80], "not a readable image"),
    "truncated jpeg": (encode(Image.new("RGB", (64, 64)), "JPEG")[:120], "not a readable image"),
    "text file": (b"hello, I am not an image", "not a readable image"),
    "html": (b"<html><script>alert(1)</script></html>", "not a readable image"),
    "svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "not a readable image",
    ),
    "pdf header": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "not a readable image"),
    "decompression bomb": (png_header_only(100_000, 100_000), "too large"),
    "huge declared jpeg": (png_header_only(70_000, 1_000), "too large"),
    "extreme wide": (encode(Image.new("RGB", (2000, 5)), "PNG"), "degenerate"),
    "extreme tall": (encode(Image.new("RGB", (3, 1000)), "PNG"), "degenerate"),
    "1x1": (encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "ok"),
    "2x100 (ratio 50)": (encode(Image.new("RGB", (2, 100)), "PNG"), "ok"),
    "cmyk jpeg": (encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), "ok"),
    "palette": (encode(Image.new("P", (32, 32), 3), "PNG"), "ok"),
    "palette with transparency": (encode(Image.new("P", (32, 32), 0), "PNG", transparency=0), "ok"),
    "16-bit grey": (sixteen_bit(), "ok"),
    "grey": (encode(Image.new("L", (32, 32), 100), "PNG"), "ok"),
    "grey + alpha": (encode(Image.new("LA", (32, 32), (100, 0)), "PNG"), "ok"),
    "rgba fully transparent": (encode(Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "PNG"), "ok"),
    "1-bit": (encode(Image.new("1", (32, 32), 1), "PNG"), "ok"),
    "animated gif": (animated_gif(), "ok"),
    "exif rotated jpeg": (exif_rotated(), "ok"),
    "webp": (encode(Image.new("RGB", (32, 32), (0, 90, 0)), "WEBP"), "ok"),
    "bmp": (encode(Image.new("RGB", (32, 32)), "BMP"), "ok"),
    "tiff": (encode(Image.new("RGB", (32, 32)), "TIFF"), "ok"),
    "ico": (encode(Image.new("RGBA", (32, 32)), "ICO"), "ok"),
    "header claims 8000x8000 in 200 bytes": (png_header_only(8_000, 8_000), "too small to hold"),
    "decompression bomb header, 30000x30000": (png_header_only(30_000, 30_000), "too large"),
    "gif/script polyglot": (b"GIF89a/*" + bytes(20) + b"*/=1;alert(document.domain);//", "not a readable image"),
    "junk after a png signature": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4096, "not a readable image"),
    "html after a jpeg signature": (b"\xff\xd8\xff\xe0<html><script>alert(1)</script>", "not a readable image"),
    "large but allowed": (encode(Image.new("RGB", (3000, 2000), (5, 5, 5)), "JPEG", quality=50), "ok"),
}

TEXT_CASES = {
    "empty": ("", "Type a sentence"),
    "spaces": ("     ", "Type a sentence"),
    "newlines and tabs": ("\n\t\r\n", "Type a sentence"),
    "100,000 characters": ("a" * 100_000, "too long"),
    "501 characters": ("b" * 501, "too long"),
    "control characters": ("a red\x00 apple\x07\x1b[31m", "ok"),
    "zero-width and bidi controls": ("a\u200b red\u202e apple\u2066", "ok"),
    "mixed scripts": ("a red apple красное яблоко 赤いりんご", "ok"),
    "emoji": ("🍎🍎 a red apple 🚒", "ok"),
    "emoji only": ("🍎", "ok"),
    "right-to-left": ("תפוח אדום", "ok"),
    "arabic": ("تفاحة حمراء", "ok"),
    "combining marks": ("Z̵̛͉a̷̢l̸g̶o̷", "ok"),
    "html": ("<img src=x onerror=alert(1)>", "ok"),
    "sql": ("'; DROP TABLE votes; --", "ok"),
    "lone surrogate-like": ("a \ud800 b".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "ok"),
    "500 characters": ("c" * 500, "ok"),
    "very long word": ("x" * 400, "ok"),
}

VOTE_CASES = {
    "empty tag": (("ann", "img", "", "wrong"), "tag"),
    "tag of spaces": (("ann", "img", "   ", "wrong"), "tag"),
    "control characters in tag": (("ann", "img", "bad\x00tag", "wrong"), "control"),
    "very long tag": (("ann", "img", "t" * 1000, "wrong"), "longer"),
    "unknown verdict": (("ann", "img", "tag", "delete"), "verdict"),
    "empty user": (("", "img", "tag", "wrong"), "user"),
    "html tag": (("ann", "img", "<img src=x onerror=alert(1)>", "wrong"), "ok"),
    "sql tag": (("ann", "img", "'); DROP TABLE votes; --", "wrong"), "ok"),
    "emoji tag": (("ann", "img", "🍎", "added"), "ok"),
    "rtl user": (("משתמש", "img", "tag", "right"), "ok"),
}


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
