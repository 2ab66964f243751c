"""CRC-32 of a concatenation from the CRCs of its parts, so deflate workers can each CRC their own block.

CRC-32 is a remainder modulo a degree-32 polynomial P over GF(2), so crc(A || B) is crc(A) shifted
by 8*len(B) zero bits (multiplied by x^(8*len(B)) mod P) xor crc(B). Polynomials are held
bit-reflected, like the CRC itself: bit 31 is the x^0 coefficient. docs/archive.md has the numbers
behind combining on the writer thread rather than CRC-ing every byte there.
"""

from __future__ import annotations

import functools

__all__ = ["crc32_combine"]

_CRC_POLY_REFLECTED = 0xEDB88320


def _gf2_mulmod(a: int, b: int) -> int:
    """a * b mod P, both reflected; at most 32 rounds."""
    product = 0
    bit = 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC_POLY_REFLECTED if b & 1 else b >> 1
    return product


def _powers_of_x() -> tuple[int, ...]:
    """x^(2^k) mod P for k = 0..63 (enough for any length below 2^61 bytes)."""
    table = [1 << 30]  # x^1
    for _ in range(63):
        table.append(_gf2_mulmod(table[-1], table[-1]))
    return tuple(table)


_X_POW_2K = _powers_of_x()


@functools.lru_cache(maxsize=64)
def _shift_operator(length: int) -> int:
    """x^(8*length) mod P; cached because almost every block has the same length."""
    result = 1 << 31  # x^0
    k = 3  # 8 == 2^3
    while length:
        if length & 1:
            result = _gf2_mulmod(_X_POW_2K[k], result)
        length >>= 1
        k += 1
    return result


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A || B from crc32(A), crc32(B) and len(B), as zlib's crc32_combine."""
    return _gf2_mulmod(_shift_operator(len2), crc1) ^ crc2
