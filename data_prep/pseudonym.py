"""Keyed pseudonyms for patient and image identifiers (docs/design.md §3.5).

Keys are HMAC-SHA256 of the original identifier under a secret key that lives outside
every output (by default ~/.config/cxr-sweep/pseudonym.key, created on first use), so a
prepared data set, DB or report cannot be joined back to a patient without that key.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from data_prep.errors import DataPrepError

KEY_FILE_ENV = "CXR_SWEEP_PSEUDONYM_KEY_FILE"


def default_key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV, Path.home() / ".config" / "cxr-sweep" / "pseudonym.key"))


def load_or_create_key(path: Path | None = None) -> bytes:
    """Read the secret key, creating a random one (mode 0600) if it does not exist yet. A key file that cannot be
    made or read, or that is too short, is a DataPrepError naming it (never showing the key)."""
    path = Path(path) if path else default_key_file()
    expected = f"expected a text file of at least 32 characters (or set {KEY_FILE_ENV} to another file)"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise DataPrepError(f"pseudonym key file {path}: cannot be created or read ({why}); {expected}") from None
    if len(key) < 32:
        raise DataPrepError(f"pseudonym key file {path} holds {len(key)} characters; {expected}")
    return key.encode()


class Pseudonymizer:
    """Maps (kind, identifier) to a stable 16-hex-digit key."""

    def __init__(self, key: bytes):
        self._key = key

    def __call__(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        """A fingerprint of the key (not the key): data sets built with different keys differ."""
        return self("key-id", "cxr-sweep")[:8]
