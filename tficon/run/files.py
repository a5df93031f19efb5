"""Writing output files so that a kill, a full disk or Ctrl-C never leaves a partial file under a final name.

Every writer here writes to a short temporary name in the target's own folder (so the rename stays on one file
system and the temporary name fits wherever the final name fits), flushes it to disk and ``os.replace``-s it into
place: a reader sees the old file or the new one, never a mix. On any failure (or interruption) the temporary file
is removed and the error raised, naming the final path. Files are created with mode 0666 minus the user's umask, as ``open()`` would.

A record that vouches for other files (a sweep's ``cells.json``) is written after them and stores their
:func:`file_fingerprint`, which a re-run compares before trusting a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["write_bytes_atomic", "save_image_atomic", "write_json_atomic", "file_fingerprint"]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (module docstring); returns the path."""
    path = Path(path)
    temporary = path.parent / f".tmp-{secrets.token_hex(4)}"  # short: any legal final name has room for it
    try:
        # os.open with 0o666 lets the kernel apply the umask (tempfile.mkstemp would make it 0600)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise _naming(error, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise _naming(error, path) from None
        raise
    return path


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` naming the final path, not the temporary one (OSError(errno, ...) keeps its subclass)."""
    if error.errno is None:
        return error
    return OSError(error.errno, error.strerror or str(error), os.fspath(path))


def save_image_atomic(path: str | os.PathLike, image: Image.Image, **options) -> Path:
    """Save ``image`` to ``path`` atomically, in the format its suffix names (PNG for ``.png``)."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), **options)
    return write_bytes_atomic(path, buffer.getvalue())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (and a final newline) to ``path`` atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex digest}`` of the file at ``path`` (what a record vouches for)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}
