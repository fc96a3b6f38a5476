"""How the image encoder runs on each device: autocast dtype, memory layout, host buffers,
and how many threads read patches to feed it.

One policy object, `InferencePrecision`, decides it for every inference call
(`napari_stpredict.model.stmodel.STModel`), so the CPU tests exercise the same code the
GPU runs (with ``InferencePrecision.reduced("bfloat16")`` forced on the CPU):

- **CUDA**: autocast to bfloat16 where the GPU supports it (Ampere and later), else
  float16; channels-last tensors (convolutions run on tensor cores without transposes);
  patches copied from pinned host memory with non-blocking copies, so the copy of one
  batch overlaps the previous batch's compute.
- **CPU and Apple MPS**: float32, contiguous tensors, no pinning: the reference
  arithmetic, in which every accuracy figure of this project was measured (MPS autocast
  is not relied on).

The tolerance (`REDUCED_TOLERANCE`) is what the tests hold reduced precision to against
float32 on the bundled model: the backbone, projection and retrieval are unchanged, only
the arithmetic of the encoder.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = [
    "REDUCED_TOLERANCE",
    "InferencePrecision",
    "kernel_threads",
    "model_workers_for",
    "precision_for",
    "read_threads_for",
]

#: Reduced precision against float32 on the same patches (bundled model, her2st sample):
#: embeddings' cosine similarity at least ``embedding_cosine``; predicted log-expression
#: within ``expression_abs`` (log1p CP10k units) for 99 % of spot-gene values. Measured on
#: the CPU (256 sample spots): bfloat16 cosine >= 0.99996, 99th percentile 0.041 (largest
#: 0.17, where a reference spot enters or leaves the top k); float16 >= 0.99999, 0.014.
REDUCED_TOLERANCE = {"embedding_cosine": 0.999, "expression_abs": 0.1}


@dataclass(frozen=True)
class InferencePrecision:
    """The arithmetic and memory layout of inference on one device.

    Parameters
    ----------
    autocast_dtype : torch.dtype or None
        Autocast the encoder to this dtype (None: float32 throughout).
    channels_last : bool
        Run the convolutions on channels-last (NHWC) tensors.
    pin_memory : bool
        Copy patches to the device from pinned host memory, without blocking.
    """

    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    pin_memory: bool = False

    @classmethod
    def reduced(cls, dtype: str = "bfloat16", *, pin_memory: bool = False) -> InferencePrecision:
        """Reduced precision with channels-last, as on CUDA (``dtype``: bfloat16 or float16)."""
        if dtype not in ("bfloat16", "float16"):
            raise ValueError(f"reduced precision must be bfloat16 or float16, got {dtype!r}")
        return cls(getattr(torch, dtype), channels_last=True, pin_memory=pin_memory)

    @property
    def name(self) -> str:
        """Readable summary, e.g. ``"bfloat16, channels-last, pinned"``."""
        parts = [str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"]
        if self.channels_last:
            parts.append("channels-last")
        if self.pin_memory:
            parts.append("pinned")
        return ", ".join(parts)

    def autocast(self, device: torch.device):
        """The autocast context for a forward pass on ``device``."""
        return torch.autocast(
            device_type=device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    def to_device(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Move a host tensor of patches to ``device`` (pinned, non-blocking where set)."""
        if self.pin_memory and device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()
        return x.to(device, non_blocking=device.type == "cuda")

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in the memory layout the network runs on."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def precision_for(device: torch.device) -> InferencePrecision:
    """The default policy for a device (see the module's notes)."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return InferencePrecision(torch.bfloat16 if bf16 else torch.float16, channels_last=True, pin_memory=True)
    return InferencePrecision()


#: Most reading threads a GPU run starts (JPEG tiles decode at 31-57 MPix/s per core:
#: 8 threads feed ~1,000 patches/s of 112 µm at 0.5 µm/px; more mostly contend for I/O).
MAX_READ_THREADS = 8


def read_threads_for(device: torch.device, cores: int | None = None) -> int:
    """Threads reading and decoding patches for a whole-slide prediction on ``device``.

    On the CPU the model and the readers share the cores, so two threads (reading runs
    ahead of the model at that already); on a GPU the cores have nothing else to do and
    decoding is the expected bottleneck: one thread per core, up to `MAX_READ_THREADS`.
    """
    cores = cores or os.cpu_count() or 1
    if device.type in ("cuda", "mps"):
        return max(2, min(MAX_READ_THREADS, cores))
    return 2


#: Most batches the CPU runs side by side: each holds its activations (~100-250 MB at
#: batch 64), and the gain is in sharing few cores (on 16, two batches of 8 threads).
MAX_CPU_MODEL_WORKERS = 2


def model_workers_for(device: torch.device, kernel_threads: int | None = None) -> tuple[int, int]:
    """``(batches run side by side, torch threads each)`` for a whole-slide prediction.

    On the CPU, batches run in parallel with fewer torch threads each, instead of one batch
    with every thread: on 2 cores, two batches of one thread each run the bundled model
    ~10 % faster than one batch of two threads, and a reader thread taking a core stalls
    one batch rather than every thread of a parallel kernel waiting for the one it took.
    ``kernel_threads`` defaults to torch's current setting (``OMP_NUM_THREADS``,
    ``torch.set_num_threads``), so a user's limit is kept. On a GPU one batch at a time
    (the device runs it; the host only queues kernels).
    """
    if device.type in ("cuda", "mps"):
        return 1, torch.get_num_threads()
    total = max(1, kernel_threads or torch.get_num_threads())
    workers = max(1, min(MAX_CPU_MODEL_WORKERS, total))
    return workers, max(1, total // workers)


_THREADS_LOCK = threading.Lock()
_THREADS_HELD = {"count": 0, "before": 0}


@contextlib.contextmanager
def kernel_threads(threads: int) -> Iterator[None]:
    """Set torch's process-wide thread count for the threads started inside the block, and
    give the user's setting back when the last such block ends (two predictions running at
    once in one process, e.g. two docks, must not leave it at the lower value)."""
    with _THREADS_LOCK:
        if _THREADS_HELD["count"] == 0:
            _THREADS_HELD["before"] = torch.get_num_threads()
        _THREADS_HELD["count"] += 1
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_HELD["count"] -= 1
            if _THREADS_HELD["count"] == 0:
                torch.set_num_threads(_THREADS_HELD["before"])
