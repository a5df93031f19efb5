"""Writing output files so that a crash, a kill or a full disk never leaves a torn one under its final name.

Every file is written to a short temporary name in its own folder (``.tficon-<8 hex>.tmp``: short enough beside
any legal final name, which may be 255 bytes long) and renamed into place with ``os.replace``, which is atomic on
one file system. The temporary file is created with mode 0o666 less the user's umask, as ``open()`` would
(``tempfile.mkstemp`` would make it 0600). A failed write removes its temporary file and raises
:class:`WriteError` naming the final path.

``file_fingerprint`` is what a record that vouches for files stores (size and sha256), so that a resume can check
the files are still the ones the record was written for.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import secrets
from pathlib import Path

__all__ = [
    "WriteError", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "save_image_atomic",
    "file_fingerprint", "bytes_fingerprint", "remove_file", "write_error_hint", "AtomicFiles",
]  # fmt: skip

TEMP_PREFIX = ".tficon-"


class WriteError(OSError):
    """An output file could not be written; its message names the final path, the reason and the fix."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" in front
        return str(self.strerror)


def write_error_hint(code: int | None) -> str:
    """What to do about an ``errno``, for messages."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space or write somewhere else"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable: fix its permissions or write somewhere else"
    if code == errno.ENAMETOOLONG:
        return "the name or path is too long: shorten it"
    return "check the folder and the disk"


def _write_error(path: Path, error: OSError) -> WriteError:
    reason = error.strerror or str(error) or type(error).__name__
    message = f"cannot write {str(path)!r}: {reason}; {write_error_hint(error.errno)}"
    return WriteError(error.errno, message)


def _temp_path(folder: Path, suffix: str = ".tmp") -> tuple[Path, int]:
    """A new, empty temporary file in ``folder`` (created exclusively, mode 0o666 less the umask) and its handle."""
    while True:
        path = folder / f"{TEMP_PREFIX}{secrets.token_hex(4)}{suffix}"
        try:
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> dict:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns its :func:`bytes_fingerprint`."""
    path = Path(path)
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp, handle = _temp_path(path.parent)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())  # the bytes are on disk before the name points at them
        os.replace(temp, path)
        temp = None
    except OSError as error:
        raise (error if isinstance(error, WriteError) else _write_error(path, error)) from error
    finally:
        if temp is not None:  # an error or Ctrl-C: no temporary file is left behind
            temp.unlink(missing_ok=True)
    return bytes_fingerprint(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> dict:
    """``text`` as UTF-8; characters that UTF-8 cannot hold (a file name that is not UTF-8, decoded with
    surrogates) are written as backslash escapes rather than failing the whole file."""
    return write_bytes_atomic(path, text.encode("utf-8", errors="backslashreplace"))


def write_json_atomic(path: str | os.PathLike, obj) -> dict:
    """``obj`` as indented JSON (non-ASCII characters escaped, so any string can be written)."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def image_bytes(image, name: str | os.PathLike) -> bytes:
    """``image`` (PIL) encoded in the format of ``name``'s suffix."""
    from PIL import Image

    suffix = Path(name).suffix.lower()
    image_format = Image.registered_extensions().get(suffix)
    if image_format is None:
        raise ValueError(f"unknown image format {suffix or '(no suffix)'!r} for {str(name)!r}; use .png or .jpg")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def save_image_atomic(path: str | os.PathLike, image) -> dict:
    """Save a PIL image to ``path`` atomically, in the format of its suffix; returns its fingerprint."""
    return write_bytes_atomic(path, image_bytes(image, path))


def bytes_fingerprint(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_fingerprint(path: str | os.PathLike) -> dict | None:
    """``{"bytes": size, "sha256": hex}`` of a regular file, or None when it is missing, not a regular file or
    unreadable."""
    path = Path(path)
    try:
        if not path.is_file():
            return None
        return bytes_fingerprint(path.read_bytes())
    except OSError:
        return None


def remove_file(path: str | os.PathLike) -> None:
    """Remove a file if it is there (a record that must stop vouching for files about to be rewritten)."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as error:
        raise _write_error(Path(path), error) from error


class AtomicFiles:
    """Several outputs, all or nothing: each is written to a temporary file beside its target, and all are renamed
    into place together by :meth:`commit`; :meth:`discard` (on an error or Ctrl-C) removes the temporary files."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def _write(self, target: Path, data: bytes) -> None:
        temp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temp, handle = _temp_path(target.parent)
            self._pending.append((temp, target))
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            raise _write_error(target, error) from error

    def image(self, target: Path, image) -> None:
        self._write(Path(target), image_bytes(image, target))

    def text(self, target: Path, text: str) -> None:
        self._write(Path(target), text.encode("utf-8", errors="backslashreplace"))

    def commit(self) -> None:
        for temp, target in self._pending:
            try:
                os.replace(temp, target)
            except OSError as error:
                raise _write_error(target, error) from error
        self._pending = []

    def discard(self) -> None:
        for temp, _ in self._pending:
            temp.unlink(missing_ok=True)
        self._pending = []
