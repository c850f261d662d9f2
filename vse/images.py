"""Reading images safely and turning them into pixel tensors.

Web images come in every shape: palettes, alpha channels (clip art is mostly
transparent), 16-bit, CMYK, EXIF rotation, animated GIFs, and files that are
broken or hostile.  ``load_image`` turns all of them into an RGB PIL image or
raises ``ImageLoadError`` with a message a user can act on.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

# Refuse images whose declared size would need more than ~1 GB of RGB pixels.
MAX_IMAGE_PIXELS = 64_000_000
# Longest/shortest side ratio above which an image is refused as degenerate.
MAX_ASPECT_RATIO = 100.0
BACKGROUND = (255, 255, 255)
# Bumped whenever the pixels produced for a given image change (feature caches key on it).
PREPROCESS_VERSION = 1
# Downscale large images in integer steps first, then resample (much faster, same look).
REDUCING_GAP = 3.0


# Deflate never compresses better than about 1032:1, so a PNG file is at least its
# pixel data (counted at the fewest bits a PNG pixel can have, one) over this.
DEFLATE_MAX_RATIO = 1032


class ImageLoadError(ValueError):
    """An image could not be read; the message says why."""


def _open(source: Image.Image | str | os.PathLike[str] | bytes) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageLoadError("the image file is empty")
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"no image file at {path}")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"the image file {path.name} is empty")
    return Image.open(path)


def source_bytes(source: Image.Image | str | os.PathLike[str] | bytes) -> int | None:
    """Size in bytes of an encoded image source; None for an already-open image."""
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    return None if isinstance(source, Image.Image) else Path(source).stat().st_size


def holds_its_pixels(image: Image.Image, file_bytes: int | None) -> bool:
    """False for a PNG too small to hold the pixels its header declares (truncated or forged).

    Such a file would make the decoder allocate the whole declared canvas before
    failing: 192 MB for a 200-byte file that claims 8000x8000.
    """
    if image.format != "PNG" or file_bytes is None:
        return True
    width, height = image.size
    least_pixel_bytes = (width * height) // 8 + height  # one bit per pixel, one filter byte per row
    return file_bytes * DEFLATE_MAX_RATIO >= least_pixel_bytes


def flatten_to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """RGB copy of ``image``; transparency is composited onto ``background``.

    Clip art and icons are mostly transparent: a plain ``convert("RGB")`` would
    paint their background black.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 255 else 255.0
        image = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def load_image(source: Image.Image | str | os.PathLike[str] | bytes) -> Image.Image:
    """Open, validate and normalise one image to RGB (first frame, EXIF-upright).

    Raises:
        ImageLoadError: empty, truncated, unsupported, too large or degenerate input.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open(source)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageLoadError(f"the image is too large ({width}x{height} pixels; limit {MAX_IMAGE_PIXELS:,})")
            if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
                raise ImageLoadError(f"the image has a degenerate shape ({width}x{height})")
            if not holds_its_pixels(image, source_bytes(source)):
                raise ImageLoadError(f"the file is too small to hold the {width}x{height} pixels it declares")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return flatten_to_rgb(image)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"the image is too large to decode safely: {err}") from err
    except Image.UnidentifiedImageError as err:
        raise ImageLoadError("the file is not a readable image (not a format this app reads)") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageLoadError(f"the file is not a readable image ({type(err).__name__}: {err})") from err


def pad_to_square(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Letterbox ``image`` onto a square canvas so that nothing is cropped away."""
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def resize_center_crop(image: Image.Image, size: int, crop_fraction: float = 0.875) -> Image.Image:
    """ImageNet-style: resize the shorter side to size/crop_fraction, crop the centre."""
    scale = round(size / crop_fraction) / min(image.size)
    resized = image.resize(
        (max(size, round(image.width * scale)), max(size, round(image.height * scale))),
        Image.Resampling.BICUBIC,
        reducing_gap=REDUCING_GAP,
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def to_pixel_tensor(
    images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float], resize_mode: str = "pad"
) -> torch.Tensor:
    """(B, 3, size, size) normalised float tensor from RGB images.

    ``resize_mode="pad"`` letterboxes then resizes (keeps the whole picture, suits
    clip art and icons); ``"crop"`` resizes and centre-crops as ImageNet does.
    """
    arrays = []
    for image in images:
        if resize_mode == "pad":
            image = pad_to_square(image).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
        elif resize_mode == "crop":
            image = resize_center_crop(image, size)
        else:
            raise ValueError(f"resize_mode must be 'pad' or 'crop', got {resize_mode!r}")
        arrays.append(np.asarray(image, dtype=np.uint8))
    # (x / 255 - mean) / std as one multiply-add on the uint8 batch.
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))
    shift = -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.float32)
    return torch.addcmul(shift[None, :, None, None], batch, scale[None, :, None, None]).contiguous()
