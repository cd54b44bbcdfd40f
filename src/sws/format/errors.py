"""The ways a ``.sws`` file can be bad: one ``FormatError`` subclass each (``docs/FORMAT.md``,
"Errors"), and the limits a reader enforces.  Re-exported by ``sws.format.container``."""

from __future__ import annotations

from sws.errors import SwsError

__all__ = ["FormatError", "BadMagicError", "UnsupportedVersionError", "HeaderTooLargeError",
           "MalformedHeaderError", "TruncatedFileError", "TrailingDataError", "ChecksumError",
           "InconsistentPayloadError", "ElementLimitError", "RoundTripError", "MAX_HEADER_BYTES", "MAX_ELEMENTS",
           "MAX_CODEBOOK", "MAX_DIMS"]

MAX_HEADER_BYTES = 1 << 20     # 1 MiB, stored (and inflated, version 2)
MAX_ELEMENTS = 1 << 31         # per tensor
MAX_CODEBOOK = 1 << 12
MAX_DIMS = 8


class FormatError(SwsError):
    """A ``.sws`` file that cannot be read; each failure mode has a subclass."""


class BadMagicError(FormatError):
    """The file does not start with the ``.sws`` magic number."""


class UnsupportedVersionError(FormatError):
    """The file's format version is not one this reader knows."""


class HeaderTooLargeError(FormatError):
    """The declared header exceeds ``MAX_HEADER_BYTES``."""


class MalformedHeaderError(FormatError):
    """The header does not parse or breaks the header schema."""


class TruncatedFileError(FormatError):
    """The file is shorter than its preamble and declared lengths."""


class TrailingDataError(FormatError):
    """The file has bytes after its checksum."""


class ChecksumError(FormatError):
    """The CRC32 of the file does not match its stored checksum."""


class InconsistentPayloadError(FormatError):
    """Payloads that do not match the header: sizes, shapes, codes or positions."""


class ElementLimitError(FormatError):
    """The file declares more values than the reader's limit (a decompression bomb, or a
    really large model: raise the limit with ``max_elements=`` or ``SWS_MAX_ELEMENTS``)."""


class RoundTripError(FormatError):
    """Writing, not reading: the bytes about to be written do not decode to the network they
    encode (a bug in the coder).  ``sws.save`` raises it and writes nothing."""
