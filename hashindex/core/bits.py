"""The code-length check every layer shares: ``bits`` is a positive multiple of 8.

Codes are packed eight bits to a byte (:mod:`hashindex.core.codes`), so a code length that is
not a multiple of 8 cannot be stored, indexed or exported.
"""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError

MAX_BITS = 1 << 16
"""Longest code length: 8 KiB a code (index manifests refuse longer ones)."""


def check_bits(bits: int) -> int:
    """``bits`` as an int; InputError unless it is a positive multiple of 8 up to :data:`MAX_BITS`
    (bools rejected)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
        raise InputError(f"bits must be a positive multiple of 8, got {bits!r}")
    if bits > MAX_BITS:
        raise InputError(f"bits must be at most {MAX_BITS} (codes of {MAX_BITS // 8} bytes), got {bits}")
    return int(bits)
