"""Writing prediction files so that each is complete or absent (a killed demo leaves no half-written picture that a
resumed run would take as done)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def written_aside(path):
    """``with written_aside(p) as tmp: write(tmp)``: the body writes ``tmp`` (a hidden file next to ``p`` with the
    same suffix, so writers that pick the format by suffix still do), which then replaces ``p`` in one rename; on an
    error ``tmp`` is removed and ``p`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_aside(path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`written_aside`."""
    with written_aside(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
