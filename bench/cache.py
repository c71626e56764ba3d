"""Where cached artefacts live, atomic writes (a reader never sees half a file) and the digest
that a cached artefact is checked against before it is used."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO


def default_cache_dir() -> Path:
    """$BENCH_CACHE_DIR, else the platform's user cache dir (~/.cache/aecodec-bench on Linux)."""
    env = os.environ.get("BENCH_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("aecodec-bench"))


def usual_mode(directory: bool = False) -> int:
    """The mode open() or mkdir() would give under the current umask (0644 / 0755 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through `write(file)` into a temporary sibling, then rename it over `path`. The file
    gets the usual permissions, not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), usual_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def digest(parts: Iterable[bytes]) -> str:
    """sha256 of the concatenated parts, hex: stored beside a cached artefact, checked on load."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()
