"""practise-df's I/O layer, below both ``synth`` and ``practise_df`` (it imports neither): crash-safe files
(JSON and text written under a temporary name and renamed, JSON-lines journals appended and synced line by
line, with a line cut short by a crash dropped before the next append), files created with the user's umask,
the settings guard that refuses to mix files made with other settings, a lock that keeps two runs out of one
directory, and the checks, before any work, that an output path can be written and is none of the inputs."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ['RunLock', 'append_jsonl', 'apply_umask', 'check_outputs_apart', 'check_writable', 'differing_settings',
           'drop_partial_line', 'guard_settings', 'remove_leftovers', 'replacing', 'temporary_name',
           'write_json_atomic', 'write_text_atomic']

_logger = logging.getLogger(__name__)


def temporary_name(path: str, kind: str = 'tmp', directory: bool = False) -> str:
    """A new, empty file (or folder) beside ``path`` whose name no one else has: ``.NAME.XXXXXXXX.tmp``.
    Temporary and backup names are never fixed (``NAME.tmp``), so a file of the user's that happens to
    carry one is never replaced or removed. Made with the user's umask, as a plain ``open()`` would."""
    parent, name = os.path.split(os.path.abspath(path))
    make = tempfile.mkdtemp if directory else tempfile.mkstemp
    made = make(dir=parent, prefix=f'.{name}.', suffix=f'.{kind}')
    if not directory:
        os.close(made[0])
        made = made[1]
    apply_umask(made)  # mkstemp / mkdtemp make them for their owner only
    return made


def remove_leftovers(folder: str, names: Optional[Sequence[str]] = None) -> None:
    """Remove what :func:`temporary_name` made in ``folder`` (for ``names``, default any) and a run killed
    mid-write left behind. Only for folders a run owns: nothing else matches the pattern."""
    if not os.path.isdir(folder):
        return
    pattern = re.compile(r'^\.(.+)\.[a-z0-9_]{8}\.(tmp|old)$')
    for entry in os.listdir(folder):
        match = pattern.match(entry)
        if match and (names is None or match.group(1) in names):
            path = os.path.join(folder, entry)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


@contextlib.contextmanager
def replacing(path: str, owned: bool = False) -> Iterator[str]:
    """A temporary name to write ``path``'s new content to: renamed over ``path`` when the block ends, removed
    when it fails (a full disk, an interruption). Readers see the old file or the whole new one, never half
    of it, and no half-written file is left behind. ``owned``: ``path`` lies in a folder the run made and
    owns (a synthesized set), where the fixed name ``PATH.tmp`` lets the next write replace the leftover
    of a killed run; elsewhere the name is unique (:func:`temporary_name`)."""
    tmp = path + '.tmp' if owned else temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` atomically (see :func:`replacing`)."""
    with replacing(path) as tmp, open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def check_writable(path: str, what: str = 'output', inside: bool = False) -> None:
    """Before any work: ``path`` can be written: the nearest existing folder above it (with ``inside``, the
    folder ``path`` itself when it exists: the writes go into it) is a writable folder, not a file.
    ``what`` names ``path`` when it lies under a file (e.g. ``--output-dir``)."""
    parent = path if inside and os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"{what} '{path}': '{parent}' is a file, so nothing can be written under it. "
                                 'Choose another path.')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"'{parent}' is not writable", path)


def apply_umask(path: str) -> None:
    """Give ``path`` the permissions a plain ``open()`` (or ``os.makedirs``) would (some writers, safetensors
    and ``tempfile`` among them, create files readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def check_outputs_apart(outputs: Dict[str, Optional[str]],
                        inputs: Dict[str, Union[None, str, Sequence[str]]]) -> None:
    """Before any work: no output (``{flag: path}``) is, lies inside or holds an input of the same command
    (``{flag: path or paths}``: weights, model folders, image folders). Writing there would change what is
    read, and ``--overwrite`` would replace it; refused even with ``--overwrite``."""
    for out_flag, out in outputs.items():
        if not out:
            continue
        target = os.path.realpath(out)
        for in_flag, paths in inputs.items():
            for path in [paths] if isinstance(paths, str) else paths or []:
                path = _spec_path(path)
                if path is None:  # a model name or hf:NAME is no file to protect
                    continue
                source = os.path.realpath(path)
                if target == source or target.startswith(source.rstrip(os.sep) + os.sep):
                    where = 'is' if target == source else 'lies inside'
                elif source.startswith(target.rstrip(os.sep) + os.sep):
                    where = 'holds'
                else:
                    continue
                raise FileExistsError(f"{out_flag} '{out}' {where} the input {in_flag} '{path}': writing there would "
                                      'change what this command reads, so it is refused (also with --overwrite). '
                                      f'Choose an {out_flag} outside the inputs; nothing was changed.')


def _spec_path(spec: Optional[str]) -> Optional[str]:
    """The file or folder a path or a ``PREFIX:PATH[:NAME]`` spec (``local-dir:``, ``py:FILE:FUNCTION``,
    ``crops:``) reads, when it exists."""
    if not spec:
        return None
    rest = spec.split(':', 1)[1] if ':' in spec else spec
    return next((p for p in (spec, rest, rest.rsplit(':', 1)[0]) if os.path.exists(p)), None)


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON, atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def differing_settings(saved: dict, current: dict, keys: Optional[Iterable[str]] = None) -> List[str]:
    """Names (dotted for nested groups) of the settings under ``keys`` (default: all) that differ."""
    found = []
    for key in sorted(set(saved) | set(current)) if keys is None else keys:
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += [f'{key}.{k}' for k in differing_settings(a, b)]
        elif a != b:
            found.append(key)
    return found


def guard_settings(path: str, settings: dict, write: bool = True, fix: str = '') -> None:
    """The settings that made the files beside ``path``: written the first time (when ``write``), and
    afterwards any difference is refused with a ValueError that names what differs and ``fix``."""
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"'{path}' cannot be read ({e}). {fix}") from None
        differ = differing_settings(saved, settings)
        if differ:
            raise ValueError(f"'{os.path.dirname(path) or '.'}' holds files made with other settings "
                             f"({', '.join(differ)} differ; see {os.path.basename(path)}). {fix}")
    elif write:
        write_json_atomic(path, settings)


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


class RunLock:
    """An exclusive lock on an output directory for the life of one run, so two runs started on the same
    directory cannot both write into it. The lock file is removed when the run ends; a run killed with
    SIGKILL leaves it behind, unlocked, and the next run takes it over."""

    NAME = '.practise-df.lock'

    def __init__(self, directory: str):
        self.path = os.path.join(directory, self.NAME)
        self._file = None

    def acquire(self) -> 'RunLock':
        if fcntl is None:  # no flock (Windows): runs are not protected from each other
            return self
        os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
        self._file = open(self.path, 'a+')
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            owner = self._file.read().strip() or 'unknown'
            self._file.close()
            self._file = None
            raise FileExistsError(f"Another practise-df run (process {owner}) is writing to "
                                  f"'{os.path.dirname(self.path)}'. Wait for it to finish or choose another "
                                  "--output-dir.") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            self._file.close()
            self._file = None
