"""WinZip AES for the archive, with the crypto taken from pyzipper: the one module that imports it.

The writer uses pyzipper's ``AESZipEncrypter`` through its public interface. The reader cannot use
``AESZipDecrypter`` that way: it finds where the encrypted data ends only after decrypting (it is
where the deflate stream ends), so it must decrypt a chunk first and then authenticate exactly the
part of it that was member data, while ``AESZipDecrypter.decrypt()`` authenticates the whole chunk.
So ``AesDecrypter`` drives the two objects pyzipper keeps in private attributes, ``decypter`` (sic:
the AES-CTR cipher) and ``hmac`` (HMAC-SHA1 of the ciphertext), and checks that they are there when
it is built: a pyzipper release that moves them fails with one line that says so, never with an
AttributeError half-way through a restore. tests/test_archive.py pins that API against a WinZip
AES computed independently, and pyproject.toml keeps pyzipper within ``PYZIPPER_RANGE``.

pyzipper (and the Cryptodome it loads, about 30 ms) is imported when a member is first encrypted or
decrypted, not with the module: a run without ZIP_PASSWORD, and every start-up, does not pay for it.
"""

from __future__ import annotations

import hmac
import types
from collections.abc import Callable

from pgbkp.archive.errors import ArchiveError, CorruptArchiveError, WrongPasswordError

__all__ = ["MAC_LENGTH", "PYZIPPER_RANGE", "AesDecrypter", "AesEncrypter", "header_length"]

#: The pyzipper releases whose private AESZipDecrypter API this module was checked against; pyproject.toml
#: requires exactly this range (a test keeps the two equal).
PYZIPPER_RANGE = ">=0.4.0,<0.5"
MAC_LENGTH = 10  # HMAC-SHA1 truncated to 80 bits
_VERIFIER_LENGTH = 2
_STRENGTH_256 = 3
_SALT_LENGTHS = {1: 8, 2: 12, 3: 16}  # by the 0x9901 field's strength: AES-128, AES-192, AES-256


def header_length(member: str, strength: int) -> int:
    """Bytes of salt and password verifier before the data of a member of this AES strength."""
    try:
        return _SALT_LENGTHS[strength] + _VERIFIER_LENGTH
    except KeyError:
        raise CorruptArchiveError(f"read zip {member!r}: unknown AES strength {strength}") from None


class AesEncrypter:
    """AES-256 for one member: ``header()`` first, then ``encrypt()`` the data in order, then ``auth_code()``."""

    def __init__(self, password: bytes) -> None:
        from pyzipper.zipfile_aes import AESZipEncrypter

        self._impl = AESZipEncrypter(password, nbits=256)

    def header(self) -> bytes:
        """The random salt and the 2-byte password verifier."""
        return bytes(self._impl.encryption_header())

    def encrypt(self, data: bytes) -> bytes:
        return bytes(self._impl.encrypt(data))

    def auth_code(self) -> bytes:
        """The HMAC-SHA1 of all the ciphertext, truncated to 10 bytes, written right after it."""
        return bytes(self._impl.flush())


class AesDecrypter:
    """Decrypt one member's data and authenticate exactly its ciphertext, as two separate steps.

    Raises WrongPasswordError when the password's verifier does not match the header, ArchiveError
    when the installed pyzipper no longer has the private API this relies on.
    """

    def __init__(self, member: str, password: bytes, strength: int, header: bytes) -> None:
        self._member = member
        if len(header) != header_length(member, strength):
            raise CorruptArchiveError(f"read zip {member!r}: truncated AES header")
        from pyzipper.zipfile_aes import AESZipDecrypter

        info = types.SimpleNamespace(filename=member, wz_aes_strength=strength)
        try:
            impl = AESZipDecrypter(info, password, header)
        except RuntimeError as exc:  # pyzipper's "Bad password" (verifier mismatch)
            if strength != _STRENGTH_256:  # pgbkp writes only AES-256: more likely a changed header
                raise WrongPasswordError(f"read zip {member!r}: wrong password, or an AES header that pgbkp did "
                                         f"not write (AES strength {strength}, ours is {_STRENGTH_256})") from exc
            raise WrongPasswordError(f"read zip {member!r}: wrong password") from exc
        self.decrypt: Callable[[bytes], bytes] = self._private(impl, "decypter", "decrypt")
        self._update: Callable[[bytes], object] = self._private(impl, "hmac", "update")
        self._digest: Callable[[], bytes] = self._private(impl, "hmac", "digest")

    def authenticate(self, ciphertext: bytes) -> None:
        """Add ciphertext to the HMAC: all of the member's and nothing after it, in order."""
        self._update(ciphertext)

    def verify(self, code: bytes) -> None:
        """Check the auth code stored after the data against the HMAC of what was authenticated."""
        if not hmac.compare_digest(self._digest()[:MAC_LENGTH], code):
            raise CorruptArchiveError(f"read zip {self._member!r}: HMAC mismatch (data altered)")

    def _private(self, impl: object, attribute: str, method: str) -> Callable[..., bytes]:
        function = getattr(getattr(impl, attribute, None), method, None)
        if not callable(function):
            import pyzipper

            raise ArchiveError(
                f"read zip {self._member!r}: pyzipper {pyzipper.__version__} has no AESZipDecrypter.{attribute}."
                f"{method}(), which pgbkp's streaming AES reader drives (pgbkp/archive/aes.py). "
                f"Fix: install pyzipper{PYZIPPER_RANGE}, as pyproject.toml requires"
            )
        return function  # type: ignore[no-any-return]
