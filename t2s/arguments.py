"""The command line's value types (argparse `type=` callables): a value out of range stops argparse with one line
naming the option, the value and what would be valid (exit 2). Shared by the command line (`t2s.cli`) and the
commands that define their options in their own room (`t2s.bench.command`)."""
from __future__ import annotations

import argparse
import re

from t2s.config import RANGES


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


DEVICE = re.compile(r"(cpu|cuda)(:[0-9]+)?")


def device_argument(text: str) -> str:
    """argparse type of a --device option: cpu, cuda or cuda:N (whether this machine has it: `check_device`)."""
    if not DEVICE.fullmatch(text) or text.startswith("cpu:"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")
    return text


def label(text: str) -> str:
    """argparse type: a label for file names: letters, digits, '-' and '_'."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '-' and '_' (e.g. native, avx2-fp32)")
    return text
