"""How hard to push: the number of timed rounds, and whether this is a quick run."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("Config",)


@dataclass(frozen=True)
class Config:
    runs: int  # timed rounds per side (the median of these is reported)
    warmup: int  # discarded rounds per side before timing
    quick: bool  # smaller memory soak (B4); the timed workloads keep their sizes
