"""The argparse types of the command lines (`t2s.cli`, `t2s.bench`): each value out of range stops argparse with one
line naming the option, the value and what would be valid (exit 2, no traceback). Imports torch and the config's ranges."""
from __future__ import annotations

import argparse

import torch

from .config import RANGES


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 0")
    return value


def seed(text: str) -> int:
    """argparse type: a seed, in the config's range of the `seed` key (numpy's and torch's: 0 to 2**32 - 1)."""
    value = _whole(text)
    low, high = RANGES["seed"][:2]
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not a seed: expected {low} to {high}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number of at least 0")
    return value


def device_argument(text: str) -> str:
    """argparse type of a --device option: a torch device this machine has (cpu, cuda, cuda:N), else one line saying
    what it has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            have = f"CUDA devices 0-{count - 1}" if count else "no CUDA device"
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {have}")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda or cuda:N")
    return text
