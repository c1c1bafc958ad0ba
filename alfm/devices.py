"""Device selection shared by extraction and the run engine."""

import contextlib
import re
from collections.abc import Iterator

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` name a
    device; anything else, or a CUDA device torch does not see, is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", str(device))
    if match is None or (match[1] == "cpu" and match[2] is not None):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if match[1] == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} was requested but torch sees no CUDA device")
        if match[2] is not None and int(match[2]) >= count:
            raise ValueError(f"device {device!r}: torch sees only {count} CUDA device(s)")
    return torch.device(device)


@contextlib.contextmanager
def allow_tf32(enabled: bool) -> Iterator[None]:
    """CUDA float32 matmuls in TF32 (10-bit mantissa inputs, float32 accumulation) inside the
    block when ``enabled``, full float32 otherwise; the previous setting is restored after."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
