"""The precision policy of search and evaluation: float32, bfloat16 autocast, or either.

Training's dev evaluation (``callbacks.evaluation.precision``) encodes and scores under it.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

EvaluationPrecision = Literal["32", "bf16", "auto"]
EVALUATION_PRECISIONS: tuple[str, ...] = ("32", "bf16", "auto")


def check_precision(precision: object, key: str = "precision") -> EvaluationPrecision:
    """``precision`` as one of :data:`EVALUATION_PRECISIONS` (``32`` may be an int).

    Raises:
        ValueError: anything else; the message names ``key``.
    """
    if str(precision) not in EVALUATION_PRECISIONS:
        raise ValueError(f"{key} must be 32, bf16 or auto, got {precision!r}")
    return str(precision)  # type: ignore[return-value]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16, AVX512-BF16 or AMX).

    Elsewhere bf16 autocast is emulated, and slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # private helpers of torch.cpu; absent ones count as "no"
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def search_autocast(
    device: torch.device, precision: EvaluationPrecision | int
) -> contextlib.AbstractContextManager:
    """The context to encode and score in: float32, bfloat16 autocast, or either.

    ``32`` is float32, ``bf16`` bfloat16 autocast, and ``auto`` bf16 where :func:`native_bf16`
    says the device has it, else float32. Under bf16 the token embeddings and similarities are
    bfloat16 (about 3 significant digits); MaxSim still sums the best matches in float32.
    """
    precision = check_precision(precision)
    if precision == "32" or (precision == "auto" and not native_bf16(device)):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
