"""Reading and preprocessing images of every common kind."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vse.images import ImageLoadError, load_image, pad_to_square, resize_center_crop, to_pixel_tensor


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_transparency_is_flattened_onto_white():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert load_image(encoded(clear)).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert load_image(encoded(palette)).getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "1", "LA", "RGB"])
def test_modes_become_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = load_image(encoded(Image.new(mode, (5, 3)), fmt))
    assert image.mode == "RGB" and image.size == (5, 3)


def test_exif_rotation_and_first_frame(tmp_path):
    image = Image.new("RGB", (6, 2), (0, 255, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    assert load_image(encoded(image, "JPEG", exif=exif)).size == (2, 6)
    frames = [Image.new("RGB", (4, 4), color) for color in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    red = load_image(path).getpixel((0, 0))
    assert red[0] > 200 and red[2] < 50


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"this is not an image", "not a readable image"),
        (encoded(Image.new("RGB", (64, 64)))[:60], "not a readable image"),
        (encoded(Image.new("RGB", (1000, 2))), "degenerate"),
    ],
)
def test_bad_images_get_clear_errors(payload, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(payload)


def test_decompression_bomb_is_refused():
    header = encoded(Image.new("1", (20000, 20000)))  # 400 MPixel declared, tiny file
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(header)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="no image file"):
        load_image(tmp_path / "nope.png")


def test_pad_and_crop_geometry():
    wide = Image.new("RGB", (40, 10), (0, 0, 0))
    square = pad_to_square(wide)
    assert square.size == (40, 40) and square.getpixel((0, 0)) == (255, 255, 255)
    assert square.getpixel((20, 20)) == (0, 0, 0)
    assert resize_center_crop(wide, 16).size == (16, 16)
    pixels = to_pixel_tensor([wide, Image.new("RGB", (3, 9))], 16, (0.5,) * 3, (0.5,) * 3)
    assert pixels.shape == (2, 3, 16, 16)
    assert np.isclose(pixels.max().item(), 1.0) and np.isclose(pixels.min().item(), -1.0)
