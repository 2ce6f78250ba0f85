"""Random draws that honour both a generator and a device.

``torch.randn(..., generator=g, device="cuda")`` refuses a CPU generator. Here a draw happens on the
generator's device and moves to ``device`` afterwards, so a seeded CPU generator gives the same
numbers whatever device the computation runs on (a CUDA generator with CUDA tensors draws in place).
"""
from __future__ import annotations

import torch


def _where(generator, device):
    target = torch.device(device) if device is not None else torch.device("cpu")
    source = generator.device if generator is not None else target
    return source, target


def randn(shape, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
    source, target = _where(generator, device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=source).to(target)


def rand(shape, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
    source, target = _where(generator, device)
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=source).to(target)


def randint(low: int, high: int, shape, generator=None, device=None) -> torch.Tensor:
    source, target = _where(generator, device)
    return torch.randint(low, high, tuple(shape), generator=generator, device=source).to(target)
