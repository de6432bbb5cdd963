"""Stable per-case seeds: the same case name gives the same random stream on every machine and run
(independent of ``PYTHONHASHSEED``), for the fingerprint's and preprocessing's samples."""
from __future__ import annotations

import zlib

__all__ = ["case_seed"]


def case_seed(case: str, salt: int = 0) -> int:
    """A stable per-case seed (independent of ``PYTHONHASHSEED``)."""
    return (zlib.crc32(case.encode("utf-8")) + salt) & 0xFFFFFFFF
