"""The hostile-input corpus: bad and hostile images, texts, votes, uploads and API arguments.

Each case names what must happen to it: ``"ok"`` means it is handled (encoded,
stored, answered); anything else is a fragment of the message it must be refused
with.  The library-level cases (``IMAGE_CASES``, ``TEXT_CASES``, ``VOTE_CASES``)
go through ``vse.images.load_image``, the query cleaner and the feedback store;
the app-level ones (``UPLOAD_CASES``, ``API_CASES``) through Gradio's HTTP API.
The tests (tests/test_hostile_*.py) check every case, and ``python -m
benchmarks.hostile`` counts them into docs/RELIABILITY.md.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import zlib

import numpy as np
from PIL import Image


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


def data_url(payload: bytes) -> dict:
    return {"url": "data:image/png;base64," + base64.b64encode(payload).decode(), "meta": {"_type": "gradio.FileData"}}


PNG = encode(Image.new("RGB", (32, 32), (200, 30, 30)), "PNG")

# name -> (endpoint, arguments, expected): "ok" means answered; otherwise a fragment of the refusal.
API_CASES = {
    **{
        f"k = {value!r}": ("search", ["a red apple", value], "whole number")
        for value in (math.nan, math.inf, "abc", None, [], {}, True, 0, 49, 2.5, -1, 1e308, "", "1e400")
    },
    "k = '7' (a number as text)": ("search", ["a red apple", "7"], "ok"),
    "k = 7.0": ("search", ["a red apple", 7.0], "ok"),
    "query = null": ("search", [None, 5], "Type a sentence"),
    "query = a list": ("search", [["a", "b"], 5], "Type a sentence"),
    "search without arguments": ("search", [], "takes 2 arguments, got 0"),
    "search without k": ("search", ["a red apple"], "takes 2 arguments, got 1"),
    "describe without arguments": ("describe", [], "takes 1 argument, got 0"),
    "vote without arguments": ("vote", [], "takes 4 arguments, got 0"),
    "review_next without arguments": ("review_next", [], "takes 1 argument, got 0"),
    "vote on an unknown image": ("vote", ["no-such-image", "apple", "wrong", "api-tester"], "Unknown image id"),
    "vote with a null image id": ("vote", [None, "apple", "wrong", "api-tester"], "Unknown image id"),
    "vote with a list as reviewer": ("vote", ["@first", "@tag", "wrong", ["a", "b"]], "Reviewer name"),
    "vote with a number as tag": ("vote", ["@first", 5, "wrong", "api-tester"], "tag must be"),
    "vote with a null verdict": ("vote", ["@first", "@tag", None, "api-tester"], "verdict must be"),
    "review with a string as the wrong tags": (
        "review",
        ["@first", "not-a-list", [], [], "api-tester"],
        "must be a list",
    ),
}

# name -> (argument of /describe, expected)
UPLOAD_CASES = {
    "no upload": (None, "Upload an image first"),
    "a string where the upload belongs": ("hello", "wrong form"),
    "a number where the upload belongs": (7, "wrong form"),
    "a path elsewhere on the server": ({"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "Only files"),
    "a path without the file-data marker": ({"path": "/etc/hostname"}, "Only files"),
    "a data URL of a PNG": (data_url(PNG), "ok"),
    "a data URL with broken base64": (
        {"url": "data:image/png;base64,@@@", "meta": {"_type": "gradio.FileData"}},
        "not valid base64",
    ),  # fmt: skip
    "a data URL that is not base64": (
        {"url": "data:image/png,hello", "meta": {"_type": "gradio.FileData"}},
        "must be base64",
    ),  # fmt: skip
    "a data URL of text": (data_url(b"not an image at all"), "not a readable image"),
    "a data URL over the upload limit": (data_url(b"\x89PNG\r\n\x1a\n" + bytes(11_000_000)), "upload limit"),
}


def blank_png(width: int, height: int) -> bytes:
    """A valid, fully decodable RGB PNG of the given size, all black; compresses to about 1/1000 of its pixels."""
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    compressor, row = zlib.compressobj(9), b"\x00" * (1 + 3 * width)  # filter byte + pixels
    rows_per_block = max(1, (1 << 24) // len(row))
    blocks = [compressor.compress(row * min(rows_per_block, height - y)) for y in range(0, height, rows_per_block)]
    data = b"".join(blocks) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
