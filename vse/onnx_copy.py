"""Frozen backbones computed by ONNX Runtime: the same networks, two to four times as fast on CPUs.

On the project's 2-core machines EfficientNet-Lite0 computes about 95 images/s in
PyTorch (channels-last, micro-batches) and about 200 in ONNX Runtime; MiniLM embeds
one query in about 2 ms instead of 9.  Features agree to 1e-5
(docs/PERFORMANCE.md).  A frozen backbone therefore keeps an ONNX copy of itself
for inference:

* exported on first use by torch's ``torch.export``-based exporter (4-5 s per
  backbone on these machines; the deprecated TorchScript exporter took under a
  second but warns that it will go), and the graph kept on disk under a digest of
  the module's weights, structure and the exporter's versions (``VSE_ONNX_CACHE``,
  default ``~/.cache/vse/onnx``; ``off`` keeps nothing): the next start of the
  same model reads it in milliseconds;
* used only where it gives the same answer as PyTorch: CPU inputs, eval mode, no
  gradient asked for.  Training a backbone, GPUs and anything else run PyTorch;
* rebuilt when the weights change: every parameter and buffer is checked against
  the version counter PyTorch bumps on each in-place write (``load_state_dict``,
  optimiser steps) and against its storage (``.to(...)``).  Which tensors those
  are is looked up again only after a parameter, buffer or submodule was assigned
  somewhere (PyTorch's global registration hooks count them), so a query pays for
  reading a hundred counters, not for walking the module tree (``WeightsWatch``);
* checked once more, then not at all, once its owner promises that the weights stay
  as they are (``OnnxCopy.pinned``, set by ``VSEModel.pin_weights`` for a served
  model): a search query then pays for no weight check (0.14 ms of MiniLM's 105
  tensors).

``VSE_RUNTIME`` chooses: ``auto`` (the default: ONNX Runtime where installed,
PyTorch otherwise or if export fails), ``onnx`` (required: an error if it cannot be
used) or ``torch``.  A backbone's ``runtime`` attribute overrides it per model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vse.files import write_bytes_atomically

RUNTIMES = ("auto", "onnx", "torch")
RUNTIME_ENV = "VSE_RUNTIME"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
CACHE_ENV = "VSE_ONNX_CACHE"
CACHE_KEEP = 8  # exported graphs kept on disk; the least recently used go first
OPSET = 18  # the exporter's own operator set: no version conversion after export

# Warnings torch 2.13's exporter raises on every export, whatever the model, about
# its own code: logged at DEBUG (``upstream_warnings_at_debug``); every other
# warning is shown as usual.
UPSTREAM_NOTES: tuple[tuple[type[Warning], str], ...] = (
    # ExportedProgram.run_decompositions deep-copies the input and output tree
    # specs, which constructs torch's own deprecated LeafSpec class.
    (FutureWarning, "`isinstance(treespec, LeafSpec)` is deprecated"),
)
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")  # an INFO record per optimisation pass
REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"
TORCHVISION_NOTE = "torchvision is not installed. Skipping torchvision::"

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
    """The exporter's dependencies (onnx, onnxscript) and the runtime (onnxruntime) are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ONNX_PACKAGES)


def tensor_stamp(tensor: torch.Tensor) -> tuple:
    """Storage, in-place-write counter (None for inference tensors), dtype, shape and device of a tensor."""
    version = None if tensor.is_inference() else tensor._version
    return tensor.data_ptr(), version, tensor.dtype, tuple(tensor.shape), tensor.device.type


_registrations = 0  # parameters, buffers and submodules assigned to any module in this process


def _count_registration(*_) -> None:  # returns None: the hooks leave what is assigned alone
    global _registrations
    _registrations += 1


nn.modules.module.register_module_parameter_registration_hook(_count_registration)
nn.modules.module.register_module_buffer_registration_hook(_count_registration)
nn.modules.module.register_module_module_registration_hook(_count_registration)


class WeightsWatch:
    """Identity of a module's current weights, without walking its tree on every call.

    The stamp is the storage, in-place-write counter, dtype and shape of every
    parameter and buffer (tensors created under ``torch.inference_mode`` have no
    counter: only their storage is compared, and weights built that way can only
    be changed in that mode).  Where each tensor lives (its owner's
    ``_parameters`` or ``_buffers`` slot) is listed, and listed again when:

    * some module had a parameter, buffer or submodule assigned (the count of
      PyTorch's global registration hooks moved), and once more on the call after
      that, as a hook runs just before its assignment lands;
    * a module of the tree lost a submodule, parameter or buffer (deletions run no
      hook: the size of every module's three dicts is compared on each call);
    * a listed slot is gone or holds no tensor.

    Each call reads every slot, so tensors put there without a hook (``.to(...)``
    swaps buffers that way), in-place writes and new storage are all seen.  The
    tensors of the last stamp are held, so their storage cannot be freed and
    reused at the same address by the weights that replace them.  Not seen, as by
    any stamp of tensors: plain tensor attributes and a parametrization's own
    settings.
    """

    def __init__(self) -> None:
        self._module: nn.Module | None = None
        self._registrations = -1
        self._settled = False
        self._slots: list[tuple[str, dict, str]] = []
        self._sizes: list[tuple[nn.Module, tuple[int, int, int]]] = []
        self._held: list[torch.Tensor] = []

    def stamp(self, module: nn.Module) -> tuple:
        count = _registrations
        if module is not self._module or count != self._registrations or not self._settled or self._shrunk():
            self._settled = module is self._module and count == self._registrations
            self._module, self._registrations = module, count
            self._slots, self._sizes = tensor_slots(module), tree_sizes(module)
        try:
            tensors, stamp = self._read()
        except (KeyError, AttributeError):  # a slot emptied without a hook: list again
            self._slots, self._sizes = tensor_slots(module), tree_sizes(module)
            tensors, stamp = self._read()
        self._held = tensors
        return stamp

    def _read(self) -> tuple[list[torch.Tensor], tuple]:
        tensors = [slots[key] for _, slots, key in self._slots]
        names = [name for name, _, _ in self._slots]
        return tensors, tuple((name, *tensor_stamp(t)) for name, t in zip(names, tensors, strict=True))

    def _shrunk(self) -> bool:
        return any((len(m._modules), len(m._parameters), len(m._buffers)) != sizes for m, sizes in self._sizes)


def tensor_slots(module: nn.Module) -> list[tuple[str, dict, str]]:
    """(name, owner's ``_parameters``/``_buffers`` dict, key) of every parameter, then every buffer."""

    def slot(name: str, kind: str) -> tuple[str, dict, str]:
        owner, _, key = name.rpartition(".")
        return name, getattr(module.get_submodule(owner), kind), key

    return [slot(name, "_parameters") for name, _ in module.named_parameters()] + [
        slot(name, "_buffers") for name, _ in module.named_buffers()
    ]


def tree_sizes(module: nn.Module) -> list[tuple[nn.Module, tuple[int, int, int]]]:
    """Every module of the tree with the sizes of its submodule, parameter and buffer dicts."""
    return [(m, (len(m._modules), len(m._parameters), len(m._buffers))) for m in module.modules()]


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


def exporter_chatty() -> bool:
    """Whether the exporter's progress notes are shown: only when this module logs at DEBUG.

    They are many (a ``print`` per export step, an INFO record per optimisation
    pass) and say nothing a user of the library acts on; failures still raise
    with the exporter's report, and its warnings are always shown.
    """
    return log.isEnabledFor(logging.DEBUG)


def is_upstream_note(caught: warnings.WarningMessage) -> bool:
    """A warning torch emits on every export that says nothing about the model exported."""
    return any(
        issubclass(caught.category, category) and str(caught.message).startswith(prefix)
        for category, prefix in UPSTREAM_NOTES
    )


def pass_on(caught: list[warnings.WarningMessage]) -> None:
    """Re-emit ``caught`` under the caller's filters, except upstream notes, which go to DEBUG."""
    for item in caught:
        if is_upstream_note(item):
            log.debug("ONNX export: %s: %s", item.category.__name__, item.message)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno, source=item.source)


class TorchvisionNote(logging.Filter):
    """Keeps the registry's note that torchvision (whose operators no backbone uses) is missing for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return exporter_chatty() or not record.getMessage().startswith(TORCHVISION_NOTE)


@contextlib.contextmanager
def progress_notes_at_debug() -> Iterator[None]:
    """The exporter's INFO records and torchvision note appear only at DEBUG; its warnings always.

    Only loggers left at NOTSET are given a level, so that a level someone chose stays.
    """
    inheriting = [] if exporter_chatty() else [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    inheriting = [logger for logger in inheriting if logger.level == logging.NOTSET]
    registry_log, note = logging.getLogger(REGISTRY_LOGGER), TorchvisionNote()
    registry_log.addFilter(note)
    for logger in inheriting:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger in inheriting:
            logger.setLevel(logging.NOTSET)
        registry_log.removeFilter(note)


@contextlib.contextmanager
def upstream_warnings_at_debug() -> Iterator[None]:
    """Warnings raised inside pass through unchanged, except ``UPSTREAM_NOTES`` (logged at DEBUG)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # outside the block: the caller's filters, not "always", decide what is shown
        pass_on(caught)


def widened(example: dict[str, torch.Tensor], dynamic_axes: dict[int, str]) -> dict[str, torch.Tensor]:
    """``example`` with every dynamic axis at least 2 long.

    ``torch.export`` treats a size of 0 or 1 as a constant, which would fix the
    batch (or token) count of the exported graph; repeating the slice keeps it symbolic.
    The values do not shape the graph: ``torch.export`` refuses data-dependent branches.
    """
    grown = {}
    for name, tensor in example.items():
        for axis in dynamic_axes:
            if tensor.shape[axis] < 2:
                tensor = tensor.repeat_interleave(2, dim=axis)
        grown[name] = tensor
    return grown


def export_onnx(module: nn.Module, example: dict[str, torch.Tensor], dynamic_axes: dict[int, str]) -> bytes:
    """ONNX bytes of ``module(*example.values())`` with one output; ``dynamic_axes`` of every input.

    Exported by ``torch.export`` (``torch.onnx.export(..., dynamo=True)``, the
    current exporter; it needs ``onnxscript``).  Each dynamic axis is declared
    ``Dim.DYNAMIC`` in every input and named after export: the exporter finds
    which axes are equal (the batch of ids and mask) by itself, and a named
    ``Dim`` shared between inputs makes it warn that the name is used twice.
    """
    example = widened(example, dynamic_axes)
    dynamic_shapes = tuple(dict.fromkeys(dynamic_axes, torch.export.Dim.DYNAMIC) for _ in example)
    modes = {submodule: submodule.training for submodule in module.modules()}
    start = time.perf_counter()
    # Traced in eval mode; every submodule's own mode is put back afterwards.
    with (
        restored_modes(modes),
        upstream_warnings_at_debug(),
        progress_notes_at_debug(),
        torch.inference_mode(False),  # the caller may be in inference mode; export traces normal tensors
        torch.no_grad(),
    ):
        module.eval()
        program = torch.onnx.export(
            module,
            tuple(tensor.clone() for tensor in example.values()),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(example),
            output_names=["output"],
            dynamic_shapes=dynamic_shapes,
            verbose=exporter_chatty(),
        )
    program.rename_axes(axis_names(program, dynamic_axes))
    log.debug("exported %s to ONNX in %.1f s", type(module).__name__, time.perf_counter() - start)
    return program.model_proto.SerializeToString()


def onnx_cache_dir() -> Path | None:
    """Where exported graphs are kept (``VSE_ONNX_CACHE``; ``off`` or ``0``: nowhere)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "none", "false"):
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vse" / "onnx"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def graph_key(module: nn.Module, example: dict[str, torch.Tensor], dynamic_axes: dict[int, str]) -> str:
    """A digest of everything the exported graph depends on: weights, structure, inputs, exporter versions.

    The structure is the module's class and ``repr`` plus the configuration of any
    transformers submodule (attention implementation, activation, ...); the inputs
    are their names, dtypes and shapes with the dynamic axes left out.
    """
    digest = hashlib.blake2b(digest_size=20)
    configs = [
        m.config.to_json_string() for m in module.modules() if hasattr(getattr(m, "config", None), "to_json_string")
    ]
    header = {
        "versions": [torch.__version__, package_version("onnxscript"), package_version("onnx"), OPSET],
        "module": [type(module).__module__, type(module).__qualname__, repr(module), configs],
        "inputs": [
            [name, str(t.dtype), [None if axis in dynamic_axes else size for axis, size in enumerate(t.shape)]]
            for name, t in example.items()
        ],
        "axes": sorted(dynamic_axes.items()),
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_graph(folder: Path | None, key: str) -> bytes | None:
    """The kept graph of ``key`` (marked as just used), or None."""
    if folder is None:
        return None
    path = folder / f"{key}.onnx"
    try:
        data = path.read_bytes()
        os.utime(path)
    except OSError:
        return None
    return data or None


def keep_graph(folder: Path | None, key: str, data: bytes, keep: int = CACHE_KEEP) -> None:
    """Write the graph atomically and drop the least recently used beyond ``keep``; a cache that fails only logs."""
    if folder is None:
        return
    try:
        write_bytes_atomically(folder / f"{key}.onnx", data)
        kept = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in kept[keep:]:
            old.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not keep the exported ONNX graph in %s: %s", folder, err)


def forget_graph(folder: Path | None, key: str) -> None:
    if folder is not None:
        (folder / f"{key}.onnx").unlink(missing_ok=True)


def quantized_int8(graph: bytes) -> bytes:
    """``graph`` with its MatMul and Gemm weights quantised to int8 per output channel, activations
    quantised on the fly (ONNX Runtime's dynamic quantisation).  On the default MiniLM a short query
    is encoded about 1.6× as fast; the embeddings move by about 1% in cosine
    (docs/PERFORMANCE.md)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="vse-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        with progress_notes_at_debug(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"])  # fmt: skip
        return target.read_bytes()


def axis_names(program: torch.onnx.ONNXProgram, dynamic_axes: dict[int, str]) -> dict:
    """The exporter's symbols (``s0``, ``s1``...) of the dynamic input axes -> their names."""
    return {value.shape[axis]: name for value in program.model.graph.inputs for axis, name in dynamic_axes.items()}


def make_session(model_bytes: bytes, threads: int, spin: bool = True):
    """An ONNX Runtime CPU session; ``spin=False`` lets idle threads sleep.

    Spinning threads pick up the next batch sooner (image batches: about 12% more
    images/s on 2 cores), but a text query interleaves its session with BLAS (the
    search), and the two pools' spinning threads take each other's cores: on 2
    cores a query's encoding cost 7 ms and its search 3.6 ms, against 4.6 and 0.6
    with sleeping threads.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
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

    def __init__(
        self, dynamic_axes: dict[int, str] | None = None, spin: bool = True, int8: bool = False, threads: int = 0
    ) -> None:
        self.dynamic_axes = dict(dynamic_axes or {0: "batch"})
        self.spin = spin  # idle threads spin (throughput of batches) or sleep (latency of queries)
        self.int8 = int8  # run an int8-quantised graph (quantized_int8): faster, close but not equal
        self.threads = threads  # intra-op threads of a session; 0: torch.get_num_threads() at the call
        self._session = None
        self._key: tuple | None = None
        self._watch = WeightsWatch()
        self._lock = threading.Lock()
        self.failed = False  # export or session creation failed once: stay on PyTorch
        self._pinned = False
        self._pinned_call: tuple | None = None  # (module, input names, threads) of the last checked call

    @property
    def pinned(self) -> bool:
        """The owner promised the weights will not change from now on.  The first call after
        pinning checks them as any call does; later calls with the same module, input names and
        threads use its session without reading the weights' stamp.  Changes made while pinned are
        seen only after setting ``pinned`` again (either way); copies and pickles start unpinned."""
        return self._pinned

    @pinned.setter
    def pinned(self, value: bool) -> None:
        with self._lock:
            self._pinned, self._pinned_call = bool(value), None

    def __deepcopy__(self, memo: dict) -> OnnxCopy:
        return OnnxCopy(self.dynamic_axes, self.spin, self.int8, self.threads)

    def __getstate__(self) -> dict:
        return {"dynamic_axes": self.dynamic_axes, "spin": self.spin, "int8": self.int8, "threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(
            state.get("dynamic_axes"), state.get("spin", True), state.get("int8", False), state.get("threads", 0)
        )

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
        with self._lock:
            call = (module, tuple(inputs), self.threads or torch.get_num_threads())
            pinned = self._pinned_call
            if pinned is not None and call[0] is pinned[0] and call[1:] == pinned[1:]:
                return self._session
            key = (self._watch.stamp(module), *call[1:])
            if self._session is None or key != self._key:
                example = {name: tensor[:1].detach().clone() for name, tensor in inputs.items()}
                example = {name: t.to(torch.float32) if t.is_floating_point() else t for name, t in example.items()}
                self._session = self._build_session(module, example, key[2])
                self._key = key
            if self._pinned:  # checked and current: the next calls like this one need no check
                self._pinned_call = call
            return self._session

    def _build_session(self, module: nn.Module, example: dict[str, torch.Tensor], threads: int):
        """A session from the graph kept on disk, else from a fresh export (kept for the next start)."""
        folder = onnx_cache_dir()
        key = graph_key(module, example, self.dynamic_axes) if folder is not None else ""
        name = f"{key}-int8" if key and self.int8 else key
        kept = cached_graph(folder, name)
        if kept is not None:
            try:
                return make_session(kept, threads, self.spin)
            except Exception as err:  # a damaged file: export again
                log.warning("kept ONNX graph %s.onnx is unreadable (%s); exporting again", name, err)
                forget_graph(folder, name)
        data = self._int8_graph(folder, key) if self.int8 else None
        if data is None:
            data = export_onnx(module, example, self.dynamic_axes)
            data = quantized_int8(data) if self.int8 else data
        session = make_session(data, threads, self.spin)
        keep_graph(folder, name, data)
        return session

    @staticmethod
    def _int8_graph(folder: Path | None, key: str) -> bytes | None:
        """The int8 graph quantised from the kept float graph of ``key`` (exported once for both
        copies), or None when there is none or it cannot be quantised."""
        kept = cached_graph(folder, key)
        if kept is None:
            return None
        try:
            return quantized_int8(kept)
        except Exception as err:  # a damaged file: export again
            log.warning("kept ONNX graph %s.onnx cannot be quantised (%s); exporting again", key, err)
            forget_graph(folder, key)
            return None


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
            raise ImportError(f"runtime 'onnx' needs: pip install {' '.join(ONNX_PACKAGES)}")
        return in_pytorch()
    if runtime == "onnx":
        return copy.run(module, inputs, micro_batch)
    try:
        return copy.run(module, inputs, micro_batch)
    except Exception as err:  # export of an unusual module or a runtime without its ops
        copy.failed = True
        log.warning("ONNX Runtime unavailable for this backbone (%s); using PyTorch", err)
        return in_pytorch()
