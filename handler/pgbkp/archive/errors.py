"""The archive's exceptions, shared by the writer, the reader and the AES adapter."""

from __future__ import annotations


class ArchiveError(Exception):
    """Base for every archive failure."""


class WrongPasswordError(ArchiveError):
    """The AES password verifier does not match (or a password is missing)."""


class CorruptArchiveError(ArchiveError):
    """CRC, HMAC, size or structure mismatch, or a truncated stream."""
