"""Crash-safe files: JSON written under a temporary name and renamed, JSON-lines journals appended
and synced line by line, with a line cut short by a crash dropped before the next append."""
from __future__ import annotations

import json
import logging
import os
from typing import Iterable

_logger = logging.getLogger(__name__)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text``; readers see the old file or the whole new one, never half of it."""
    tmp = path + '.tmp'  # one writer per file: a crash's leftover is replaced by the next write
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON, atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def append_jsonl(path: str, records: Iterable[dict]) -> None:
    """Append one JSON line per record and sync, so what was appended survives a crash."""
    with open(path, 'a') as f:
        f.write(''.join(json.dumps(r) + '\n' for r in records))
        f.flush()
        os.fsync(f.fileno())


def drop_partial_line(path: str) -> None:
    """A crash while appending can leave a line without its newline; cut it so the next append starts
    on a fresh line (the work it recorded is redone)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, 'rb+') as f:
        data = f.read()
        if data.endswith(b'\n'):
            return
        f.truncate(data.rfind(b'\n') + 1)
    _logger.warning("Dropped an unfinished line at the end of '%s' (interrupted write).", path)
