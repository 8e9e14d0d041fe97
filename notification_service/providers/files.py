"""Atomic file writes for the file sinks: a reader sees a whole file or none.

The sinks are for development and tests: a file is renamed into place but not
fsync'ed, so an OS crash (not a killed worker) may lose the last few.
"""

from __future__ import annotations

import os
import pathlib
import threading

_made: set[pathlib.Path] = set()


def atomic_write(directory: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    if directory not in _made:
        directory.mkdir(parents=True, exist_ok=True)
        _made.add(directory)
    # One writer per thread and name at a time, so this temporary name is never shared.
    tmp = directory / f".tmp-{os.getpid()}-{threading.get_ident()}-{name}.part"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        target = directory / name
        os.replace(tmp, target)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return target
