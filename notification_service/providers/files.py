"""Atomic file writes for the file sinks: a reader sees a whole file or none."""

from __future__ import annotations

import os
import pathlib
import tempfile


def atomic_write(directory: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        target = directory / name
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
