"""Frozen backbones computed by ONNX Runtime: the same networks, two to four times as fast on CPUs.

On the project's 2-core machines EfficientNet-Lite0 computes about 95 images/s in
PyTorch (channels-last, micro-batches) and about 200 in ONNX Runtime; MiniLM embeds
one query in about 2 ms instead of 9.  Features agree to 1e-5
(docs/PERFORMANCE.md).  A frozen backbone therefore keeps an ONNX copy of itself
for inference:

* exported in memory on first use (about a second; nothing is written to disk);
* used only where it gives the same answer as PyTorch: CPU inputs, eval mode, no
  gradient asked for.  Training a backbone, GPUs and anything else run PyTorch;
* rebuilt when the weights change: every parameter and buffer is checked against
  the version counter PyTorch bumps on each in-place write (``load_state_dict``,
  optimiser steps) and against its storage (``.to(...)``).

``VSE_RUNTIME`` chooses: ``auto`` (the default: ONNX Runtime where installed,
PyTorch otherwise or if export fails), ``onnx`` (required: an error if it cannot be
used) or ``torch``.  A backbone's ``runtime`` attribute overrides it per model.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

RUNTIMES = ("auto", "onnx", "torch")
RUNTIME_ENV = "VSE_RUNTIME"
OPSET = 17

log = logging.getLogger(__name__)


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    return runtime


def default_runtime() -> str:
    """The runtime named by ``VSE_RUNTIME`` (``auto`` when unset)."""
    value = os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    if value not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV} must be one of {RUNTIMES}, got {value!r}")
    return value


@functools.cache
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


def needs_autograd(module: nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in inputs.values()) or any(p.requires_grad for p in module.parameters())


@contextlib.contextmanager
def restored_modes(modes: dict[nn.Module, bool]) -> Iterator[None]:
    try:
        yield
    finally:
        for submodule, training in modes.items():
            submodule.training = training


def export_onnx(module: nn.Module, example: dict[str, torch.Tensor], dynamic_axes: dict[int, str]) -> bytes:
    """ONNX bytes of ``module(*example.values())`` with one output; ``dynamic_axes`` of every input."""
    buffer = io.BytesIO()
    # The exporter switches the module to eval and back to the *wrapper's* mode,
    # recursively; every submodule's own mode is put back afterwards.
    modes = {submodule: submodule.training for submodule in module.modules()}
    with restored_modes(modes), warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of torch.export, which
        # needs onnxscript and takes far longer here; its folding notes are noise.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example.values()),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(example),
            output_names=["output"],
            dynamic_axes={**{name: dynamic_axes for name in example}, "output": {0: "batch"}},
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


def as_array(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    return np.ascontiguousarray((tensor.to(torch.float32) if tensor.is_floating_point() else tensor).numpy())


class OnnxCopy:
    """An ONNX Runtime session computing a frozen module, kept in step with its weights.

    ``dynamic_axes``: the input axes that vary between calls (batch, tokens).  Not a
    submodule (nothing of it is saved); copies and pickles start empty and export
    again on first use.
    """

    def __init__(self, dynamic_axes: dict[int, str] | None = None) -> None:
        self.dynamic_axes = dict(dynamic_axes or {0: "batch"})
        self._session = None
        self._key: tuple | None = None
        self._lock = threading.Lock()
        self.failed = False  # export or session creation failed once: stay on PyTorch

    def __deepcopy__(self, memo: dict) -> OnnxCopy:
        return OnnxCopy(self.dynamic_axes)

    def __getstate__(self) -> dict:
        return {"dynamic_axes": self.dynamic_axes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state.get("dynamic_axes"))

    @property
    def exported(self) -> bool:
        return self._session is not None

    def run(self, module: nn.Module, inputs: dict[str, torch.Tensor], micro_batch: int = 0) -> torch.Tensor:
        """``module(*inputs.values())`` computed by ONNX Runtime, ``micro_batch`` rows per call."""
        session = self._current_session(module, inputs)

        def compute(part: dict[str, torch.Tensor]) -> torch.Tensor:
            (output,) = session.run(None, {name: as_array(tensor) for name, tensor in part.items()})
            return torch.from_numpy(output)

        return in_slices(compute, inputs, micro_batch)

    def _current_session(self, module: nn.Module, inputs: dict[str, torch.Tensor]):
        key = (weights_stamp(module), tuple(inputs), torch.get_num_threads())
        with self._lock:
            if self._session is None or key != self._key:
                example = {name: tensor[:1].detach().clone() for name, tensor in inputs.items()}
                example = {name: t.to(torch.float32) if t.is_floating_point() else t for name, t in example.items()}
                self._session = make_session(export_onnx(module, example, self.dynamic_axes), key[2])
                self._key = key
            return self._session


def in_slices(
    compute: Callable[[dict[str, torch.Tensor]], torch.Tensor], inputs: dict[str, torch.Tensor], size: int
) -> torch.Tensor:
    """``compute`` over consecutive slices of ``size`` rows of every input, concatenated (0: all at once)."""
    rows = next(iter(inputs.values())).shape[0]
    if size <= 0 or rows <= size:
        return compute(inputs)
    parts = [{name: tensor[start : start + size] for name, tensor in inputs.items()} for start in range(0, rows, size)]
    return torch.cat([compute(part) for part in parts])


def run_frozen(
    module: nn.Module,
    copy: OnnxCopy,
    runtime: str,
    inputs: dict[str, torch.Tensor],
    training: bool,
    micro_batch: int = 0,
) -> torch.Tensor:
    """``module(*inputs.values())``, by ONNX Runtime where ``runtime`` allows and it gives the same answer.

    ``training``: whether the owner of ``module`` is in training mode (dropout,
    batch statistics), which only PyTorch computes.  ``micro_batch``: rows per
    call in either runtime (0: the whole batch); the choice of runtime and the
    check of the weights happen once per call of this function, not per slice.
    """

    def in_pytorch() -> torch.Tensor:
        return in_slices(lambda part: module(*part.values()), inputs, micro_batch)

    on_cpu = all(tensor.device.type == "cpu" for tensor in inputs.values())
    eligible = on_cpu and not training and not needs_autograd(module, inputs)
    if runtime == "torch" or not eligible or (runtime == "auto" and copy.failed):
        return in_pytorch()
    if not onnx_runtime_installed():
        if runtime == "onnx":
            raise ImportError("runtime 'onnx' needs: pip install onnx onnxruntime")
        return in_pytorch()
    if runtime == "onnx":
        return copy.run(module, inputs, micro_batch)
    try:
        return copy.run(module, inputs, micro_batch)
    except Exception as err:  # export of an unusual module or a runtime without its ops
        copy.failed = True
        log.warning("ONNX Runtime unavailable for this backbone (%s); using PyTorch", err)
        return in_pytorch()
