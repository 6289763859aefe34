"""Optional zstd compression of large entries (the ``zstd`` extra).

A compressed entry is a zstd frame, recognised by the frame's magic number; JSON never
starts with those bytes, so compressed and plain entries can live side by side (turning
compression on or off needs no flush).
"""

from __future__ import annotations

from typing import Any

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_DECOMPRESSED = 64 * 1024 * 1024  # a corrupt or hostile frame cannot claim more


class Zstd:
    """Compresses entries of at least ``min_size`` bytes at ``level``."""

    def __init__(self, min_size: int = 4096, level: int = 3) -> None:
        try:
            import zstandard
        except ImportError as exc:
            raise ImportError(
                "compression needs the zstandard package: pip install 'django-relaycache[zstd]'"
            ) from exc
        if min_size < 0:
            raise ValueError("min_size must be >= 0")
        self.min_size = min_size
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError

    def compress(self, raw: bytes) -> bytes:
        return self._compressor.compress(raw) if len(raw) >= self.min_size else raw

    def decompress(self, raw: Any) -> Any:
        """``raw`` unchanged unless it is a zstd frame; ``ValueError`` if corrupt."""
        if not (isinstance(raw, bytes) and raw.startswith(ZSTD_MAGIC)):
            return raw
        try:
            return self._decompressor.decompress(raw, max_output_size=MAX_DECOMPRESSED)
        except self._error as exc:
            raise ValueError(f"corrupt compressed entry: {exc}") from None
