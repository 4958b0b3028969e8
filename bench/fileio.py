"""Reading the files a user hands podbench, and writing results so nothing finished is lost.

Torch-free, Ray-free: the engine, the results store, the spec readers and the report all use it.

- :func:`read_user_text` turns every way a file can be unreadable (missing, a folder, no
  permission, binary, another encoding) into one :class:`UserError` sentence naming the file.
- :func:`local_path` turns a results location into a path: ``file://`` URIs become their path,
  other URIs (``s3://``, ``gs://``, ...) are refused with one sentence, as the README says.
- :func:`atomic_write` writes a temporary file in the same folder, fsyncs it and renames it over
  the final name, so a reader sees either nothing or the whole file. The file gets the mode a plain
  ``open()`` would give it under the user's umask (typically 0644), not ``mkstemp``'s 0600: on
  shared storage the rest of a team, and a web server, must be able to read results and reports.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from podbench.errors import UserError

__all__ = ["atomic_write", "atomic_write_text", "local_path", "read_user_text", "umask_mode"]

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def local_path(location: str | Path, what: str) -> Path:
    """A folder location as a path: ``file:///x`` (or ``file://localhost/x``) is ``/x``.

    Raises:
        UserError: any other URI (object storage has no POSIX files to rename atomically).
    """
    if isinstance(location, Path):
        return location
    match = _URI.match(location)
    if match is None:
        return Path(location)
    parts = urlsplit(location)
    if match.group(1).lower() == "file" and parts.netloc in ("", "localhost"):
        return Path(unquote(parts.path))
    raise UserError(
        f"{what} {location}: URIs are not supported, only folders; give a path on storage "
        "every node sees (a local disk on one machine, a shared mount such as NFS on a cluster; "
        "file:///path is read as /path)."
    )


def umask_mode(base: int = 0o666) -> int:
    """The permission bits a new file of mode ``base`` gets under the current umask."""
    current = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(current)
    return base & ~current


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, with umask permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers never see a partial file."""
    return atomic_write(path, text)


def read_user_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file the user named, or one sentence saying why it cannot be read.

    ``what`` names the file's role in the sentence, e.g. ``"suite file"`` or ``"run record"``.
    """
    path = Path(path)
    try:
        # inside the try: is_dir() raises too when a folder on the way cannot be entered
        if path.is_dir():
            raise UserError(
                f"{what} {path} is a folder, not a file: give the path of the file itself."
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: check the path.") from None
    except PermissionError:
        raise UserError(
            f"{what} {path} cannot be read (permission denied): make it readable "
            f"(chmod a+r) or run as a user who can read it."
        ) from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror}): check the path.") from None
    if b"\x00" in raw:
        raise UserError(f"{what} {path} is a binary file, not text: give the YAML/JSON text file.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte {exc.start} cannot be decoded): "
            f"save it as UTF-8."
        ) from None
