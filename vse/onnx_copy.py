"""Frozen image backbones computed by ONNX Runtime: the same network, about twice as fast on CPUs.

On the project's 2-core machines EfficientNet-Lite0 computes about 95 images/s in
PyTorch (channels-last, micro-batches) and about 200 images/s in ONNX Runtime,
with features equal to 1e-5 (docs/PERFORMANCE.md).  A frozen backbone therefore
keeps an ONNX copy of itself for inference:

* exported in memory on first use (about half a second, nothing written to disk);
* used only where it gives the same answer as PyTorch: CPU input, eval mode, no
  gradient asked for.  Training a backbone, GPUs and anything else run PyTorch;
* rebuilt when the weights change: every parameter and buffer is checked against
  the version counter PyTorch bumps on each in-place write (``load_state_dict``,
  optimiser steps) and against its storage (``.to(...)``).

``VSE_IMAGE_RUNTIME`` chooses: ``auto`` (the default: ONNX Runtime where installed,
PyTorch otherwise or if export fails), ``onnx`` (required: an error if it cannot be
used) or ``torch``.  A backbone's ``runtime`` attribute overrides it per model.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import threading
import warnings

import numpy as np
import torch
from torch import nn

RUNTIMES = ("auto", "onnx", "torch")
RUNTIME_ENV = "VSE_IMAGE_RUNTIME"
OPSET = 17

log = logging.getLogger(__name__)


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"image runtime must be one of {RUNTIMES}, got {runtime!r}")
    return runtime


def default_runtime() -> str:
    """The runtime named by ``VSE_IMAGE_RUNTIME`` (``auto`` when unset)."""
    value = os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    if value not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV} must be one of {RUNTIMES}, got {value!r}")
    return value


def onnx_runtime_installed() -> bool:
    """Both the exporter's dependency (onnx) and the runtime (onnxruntime) are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def weights_stamp(module: nn.Module) -> tuple:
    """Identity of the current weights: storage and in-place-write counter of every tensor.

    Tensors created under ``torch.inference_mode`` have no counter; only their
    storage is compared (weights built that way can only be changed in that mode).
    """
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return tuple(
        (name, tensor.data_ptr(), None if tensor.is_inference() else tensor._version, tensor.device.type)
        for name, tensor in tensors
    )


def needs_autograd(module: nn.Module, inputs: torch.Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    return inputs.requires_grad or any(parameter.requires_grad for parameter in module.parameters())


def export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """ONNX bytes of ``module`` (one input, one output, dynamic batch size)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of torch.export, which
        # needs onnxscript and takes ~20x longer here; its folding notes are noise.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
        )
    return buffer.getvalue()


def make_session(model_bytes: bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


class OnnxCopy:
    """An ONNX Runtime session computing a frozen module, kept in step with its weights.

    Not a submodule (nothing of it is saved); copies and pickles start empty and
    export again on first use.
    """

    def __init__(self) -> None:
        self._session = None
        self._stamp: tuple | None = None
        self._threads = 0
        self._lock = threading.Lock()
        self.failed = False  # export or session creation failed once: stay on PyTorch

    def __deepcopy__(self, memo: dict) -> OnnxCopy:
        return OnnxCopy()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    @property
    def exported(self) -> bool:
        return self._session is not None

    def run(self, module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """``module(pixels)`` computed by ONNX Runtime (float32 CPU input)."""
        session = self._current_session(module, pixels)
        array = np.ascontiguousarray(pixels.detach().to(torch.float32).numpy())
        (features,) = session.run(None, {"pixels": array})
        return torch.from_numpy(features)

    def _current_session(self, module: nn.Module, pixels: torch.Tensor):
        stamp, threads = weights_stamp(module), torch.get_num_threads()
        with self._lock:
            if self._session is None or stamp != self._stamp or threads != self._threads:
                example = pixels[:1].detach().to(torch.float32).contiguous().clone()
                self._session = make_session(export_onnx(module, example), threads)
                self._stamp, self._threads = stamp, threads
            return self._session


def run_frozen(module: nn.Module, copy: OnnxCopy, runtime: str, pixels: torch.Tensor) -> torch.Tensor:
    """``module(pixels)``, by ONNX Runtime where ``runtime`` allows and it gives the same answer."""
    eligible = pixels.device.type == "cpu" and not module.training and not needs_autograd(module, pixels)
    if runtime == "torch" or not eligible or (runtime == "auto" and copy.failed):
        return module(pixels)
    if not onnx_runtime_installed():
        if runtime == "onnx":
            raise ImportError("image runtime 'onnx' needs: pip install onnx onnxruntime")
        return module(pixels)
    if runtime == "onnx":
        return copy.run(module, pixels)
    try:
        return copy.run(module, pixels)
    except Exception as err:  # export of an unusual module or a runtime without its ops
        copy.failed = True
        log.warning("ONNX Runtime unavailable for this backbone (%s); using PyTorch", err)
        return module(pixels)
