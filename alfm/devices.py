"""Device selection shared by extraction and the run engine."""

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
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
