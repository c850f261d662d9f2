"""What a saved model folder must hold, checked before anything is built from it.

A model folder comes from anywhere (a Hub repository, a colleague, a disk that
filled up), so loading it checks, in this order and before allocating the model:

1. every JSON and text file is UTF-8 and every JSON file parses;
2. ``config.json`` is a VSE config with fields of the right types and ranges
   (``vse.config.VSEConfig.validate``);
3. ``model.safetensors``' header (read without loading a tensor) holds only
   floating-point weights (float32, float16, bfloat16; int64 only for integer
   buffers such as BatchNorm's counter), and the heads' shapes are the ones
   ``config.json`` implies;
4. a GRU's ``tokenizer.json`` has the vocabulary size ``config.json`` records.

Every refusal is a ``vse.errors.ModelLoadError`` whose message names the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vse.config import VSEConfig
from vse.errors import ModelLoadError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BACKBONES_FILE = "backbones.json"
METRICS_FILE = "metrics.json"
IMAGE_ARCH_DIR = "image_backbone"
TEXT_ARCH_DIR = "text_backbone"
# safetensors dtype names of the weights a model may hold.
FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Integer buffers (BatchNorm's num_batches_tracked, a transformer's position ids).
INTEGER_DTYPES = {"I64": "int64"}
# Readable names of the other safetensors dtypes, for messages.
OTHER_DTYPES = {"F64": "float64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
Shape = tuple[int | None, ...]  # None: any size (e.g. a backbone's feature size)


def read_json(path: Path) -> Any:
    """The parsed JSON file; ``ModelLoadError`` naming the file if it is not UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ModelLoadError(f"{path} is not a text file (not UTF-8 at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err


def check_text_files(folder: Path) -> None:
    """Every ``*.json`` in the folder parses and every ``*.txt`` (vocabularies) is UTF-8.

    The loaders of tokenizers and transformers fail on such files with decode
    errors that do not say which file is broken.
    """
    for path in sorted(Path(folder).rglob("*.json")):
        read_json(path)
    for path in sorted(Path(folder).rglob("*.txt")):
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ModelLoadError(f"{path} is not a text file (not UTF-8 at byte {err.start})") from err


def read_config(folder: Path) -> VSEConfig:
    """The model config of a saved folder, checked for types and ranges."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: it is not a saved VSE model")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    version = data.get("vse_format_version")
    if version is None:
        raise ModelLoadError(f"{path} is not a VSE model config (no vse_format_version)")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelLoadError(f"{path}: vse_format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ModelLoadError(f"{path} was written by a newer version of this project (format {version})")
    try:
        return VSEConfig.from_dict(data)
    except ValueError as err:
        raise ModelLoadError(f"{path}: {err}") from err


def head_shapes(config: VSEConfig) -> dict[str, Shape]:
    """Shapes of the trained heads (always in the weights file) that ``config`` implies."""
    dim = config.embed_dim
    shapes: dict[str, Shape] = {"image_encoder.projection.weight": (dim, None), "image_encoder.projection.bias": (dim,)}
    if config.text_encoder == "transformer":
        shapes["text_encoder.projection.weight"] = (dim, None)
        shapes["text_encoder.projection.bias"] = (dim,)
        return shapes
    shapes["text_encoder.embedding.weight"] = (config.vocab_size or None, config.word_dim)
    for layer in range(config.gru_layers):
        inputs = config.word_dim if layer == 0 else dim
        shapes[f"text_encoder.gru.weight_ih_l{layer}"] = (3 * dim, inputs)
        shapes[f"text_encoder.gru.weight_hh_l{layer}"] = (3 * dim, dim)
        shapes[f"text_encoder.gru.bias_ih_l{layer}"] = (3 * dim,)
        shapes[f"text_encoder.gru.bias_hh_l{layer}"] = (3 * dim,)
    return shapes


def dtype_name(dtype: str) -> str:
    """``"I8"`` -> ``"int8"``: safetensors' dtype name as torch and numpy spell it."""
    return {**FLOAT_DTYPES, **INTEGER_DTYPES, **OTHER_DTYPES}.get(dtype, dtype)


def shape_fits(shape: list[int], expected: Shape) -> bool:
    if len(shape) != len(expected):
        return False
    return all(want is None or got == want for got, want in zip(shape, expected, strict=True))


def shown(shape: Shape) -> str:
    return "[" + ", ".join("*" if size is None else str(size) for size in shape) + "]"


def weights_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """{tensor name: (safetensors dtype, shape)}, read from the header without loading a tensor."""
    from safetensors import safe_open

    header = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in list(handle.keys()):
                tensor = handle.get_slice(name)
                header[name] = (tensor.get_dtype(), tensor.get_shape())
    except Exception as err:  # safetensors' errors do not name the file
        raise ModelLoadError(f"{path} is not a readable safetensors file: {err}") from err
    return header


def check_weights(path: Path, config: VSEConfig) -> None:
    """Dtypes of every tensor and shapes of the heads in ``path`` against ``config``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} has no {path.name}")
    header = weights_header(path)
    for name, (dtype, _) in sorted(header.items()):
        if dtype not in FLOAT_DTYPES and dtype not in INTEGER_DTYPES:
            raise ModelLoadError(
                f"{path}: tensor {name} has dtype {dtype_name(dtype)}; only {', '.join(FLOAT_DTYPES.values())} "
                "weights are accepted (others would be cast silently)"
            )
    config_path = path.parent / CONFIG_FILE
    for name, expected in head_shapes(config).items():
        if name not in header:
            raise ModelLoadError(f"{path} has no tensor {name}, which {config_path} implies")
        dtype, shape = header[name]
        if dtype not in FLOAT_DTYPES:
            raise ModelLoadError(
                f"{path}: tensor {name} has dtype {dtype_name(dtype)}; only {', '.join(FLOAT_DTYPES.values())} "
                "weights are accepted (others would be cast silently)"
            )
        if not shape_fits(shape, expected):
            raise ModelLoadError(
                f"{path}: tensor {name} has shape {shown(tuple(shape))} but {config_path} "
                f"({size_fields(config)}) implies {shown(expected)}"
            )


def size_fields(config: VSEConfig) -> str:
    """The config fields that decide the heads' shapes, as ``name=value`` pairs."""
    names = ["embed_dim"] if config.text_encoder == "transformer" else ["embed_dim", "word_dim", "vocab_size"]
    return ", ".join(f"{name}={getattr(config, name)}" for name in names)


def check_vocabulary_size(path: Path, size: int, config: VSEConfig) -> None:
    if config.vocab_size and size != config.vocab_size:
        raise ModelLoadError(
            f"{path} has {size:,} words but {path.parent / CONFIG_FILE} records vocab_size={config.vocab_size:,}"
        )
