"""Counting a network's parameters: the one helper that the evaluation, the engine and the benchmark share.

Rule: shared tensors are counted once (``module.parameters()`` yields each once). Imports torch only, so any module
of t2s may import it.
"""
from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once); only those with requires_grad if trainable_only."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
