"""Small deterministic datasets the tests write themselves: shapes of colours.

Each image is one coloured shape on white; its captions name the colour and the
shape, its web tags name them too plus noise (boilerplate tags, some wrong ones),
as web tags do.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 210, 20)}
SHAPES = ("circle", "square", "triangle")
NOISE_TAGS = ("clipart", "image", "unsorted", "icon", "public domain")


def draw(colour: str, shape: str, size: int = 64, jitter: int = 0) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    box = (10 + jitter, 10 + jitter, size - 10 - jitter, size - 10 - jitter)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(size // 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=COLOURS[colour])
    return image


def captions_for(colour: str, shape: str) -> list[str]:
    return [f"a {colour} {shape}", f"a {shape} that is {colour}", f"one {colour} {shape} on a white background"]


def write_split(folder: Path, items: list[tuple[str, str, int]], *, with_tags: bool, seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metadata.jsonl").open("w") as meta:
        for index, (colour, shape, jitter) in enumerate(items):
            name = f"{colour}_{shape}_{jitter}_{index}.png"
            draw(colour, shape, jitter=jitter).save(folder / name)
            row = {"file_name": name, "id": f"{folder.name}-{index}", "captions": captions_for(colour, shape)}
            if with_tags:
                tags = [colour, shape, rng.choice(NOISE_TAGS)]
                if rng.random() < 0.3:  # a wrong tag, as on the web
                    tags.append(rng.choice([c for c in COLOURS if c != colour]))
                row["tags"] = tags
            meta.write(json.dumps(row) + "\n")


def make_shapes_dataset(root: Path, per_combo: int = 3, seed: int = 0) -> Path:
    """imagefolder with train/validation/test splits and a web folder with tags."""
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    train = [(c, s, j) for c, s in combos for j in range(per_combo)]
    held_out = [(c, s, 5) for c, s in combos]
    write_split(root / "captions" / "train", train, with_tags=False, seed=seed)
    write_split(root / "captions" / "validation", held_out, with_tags=False, seed=seed + 1)
    write_split(root / "captions" / "test", [(c, s, 6) for c, s in combos], with_tags=False, seed=seed + 2)
    web = [(c, s, j) for c, s in combos for j in range(per_combo, per_combo + 2)]
    write_split(root / "web" / "train", web, with_tags=True, seed=seed + 3)
    return root
