"""Writing outputs: atomic files, tables (CSV / JSON / Markdown) and heatmap overlays."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image


def _temp_beside(path: Path) -> Path:
    """An unused hidden name beside ``path`` for a temporary file or folder."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def current_umask() -> int:
    """The process's file mode creation mask (read from /proc where it can, so no thread sees it change)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_file_mode() -> int:
    """The permissions of any new file: 0666 & ~umask."""
    return 0o666 & ~current_umask()


def atomic_write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Make ``path`` by ``write(temp path)`` in the same folder, fsync and a rename.

    An interrupted write leaves either the old file or the complete new one. The file gets the
    permissions of any new file (0666 & ~umask), whatever mode ``write`` created the temp file with
    (safetensors makes it 0600). A failure is an OSError naming ``path``, never the temp file.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, usual_file_mode())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, f"{path}: cannot write ({error.strerror or error})") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable_file(path: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output file that cannot be written or would replace one silently.

    ``path`` must not be a folder, must not exist unless ``overwrite``, and its folder must take a
    new file (tried with a probe file, which works for every user and file system).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a file")
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: already exists (use --overwrite to replace it)")
    check_writable_folder(path.parent, path)


def check_writable_folder(folder: Path, named: Path | None = None) -> None:
    """Refuse, before any work, a folder in which no new file can be made (``named``: the output to name)."""
    folder, named = Path(folder), Path(named or folder)
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{named}: cannot be written ({existing} is not a folder)")
    try:
        probe = _temp_beside(existing / "probe")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        raise ValueError(f"{named}: cannot be written ({existing}: {error.strerror or error})") from None


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (``atomic_write_file``).

    The temp file is created with mode 0666, so the file gets the usual
    permissions of a new file (0666 & ~umask).
    """
    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)

    atomic_write_file(path, write)


def read_json(path: Path):
    """The JSON document in ``path``; ValueError naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def outside_root(value: str, root: str) -> str | None:
    """Why the relative path ``value`` (POSIX, from a manifest) does not name a file below ``root`` (the root's
    name for the message), or None: absolute (or a drive letter), or '..' or a backslash in it."""
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        return f"absolute path not allowed: {value}"
    if ".." in path.parts or "\\" in value:
        return f"path leaves the {root}: {value}"
    return None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def destination_problem(dest: Path, source: Path, overwrite: bool) -> str | None:
    """Why a builder must not write ``dest`` from ``source`` (both absolute), or None when it may."""
    if dest.exists() and not overwrite:
        return f"{dest}: already exists (use --overwrite to replace it)"
    resolved = dest.resolve()
    if resolved == source or source in resolved.parents or resolved in source.parents:
        return f"{dest}: must not be {source}, inside it or contain it"
    return None


@contextmanager
def staged_directory(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest`` that replaces ``dest`` when the block completes.

    On any error (or interrupt) the temporary folder is removed and ``dest`` is untouched. The
    folder is created as any new folder is (0777 & ~umask).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = _temp_beside(dest)
    staging.mkdir()
    try:
        yield staging
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


WORK_PREFIX = "tailedcore-run-"
LOCK_NAME = ".lock"


@contextmanager
def work_folder(parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A temporary folder for a run's files in ``parent`` (None: the system's temp folder), removed at
    the end. The run holds a lock on it while it lives, so a later run can tell it from the folder of
    a killed run (``remove_stale_work_folders``), in any process namespace."""
    folder = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=parent))
    # Locked under another name first: a cleanup that finds LOCK_NAME always finds it taken.
    lock = open(folder / (LOCK_NAME + ".new"), "w")  # noqa: SIM115 - held for the folder's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.replace(folder / (LOCK_NAME + ".new"), folder / LOCK_NAME)
        yield folder
    finally:
        lock.close()
        shutil.rmtree(folder, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def remove_stale_work_folders(parent: str | os.PathLike | None = None, min_age: float = 60.0) -> tuple[int, int]:
    """Remove the work folders in ``parent`` whose run is gone (killed: its lock is free) -> (folders, bytes).

    A folder younger than ``min_age`` seconds without its lock yet is left alone (a run starting now).
    """
    parent = Path(parent or tempfile.gettempdir())
    removed, freed = 0, 0
    for folder in parent.glob(WORK_PREFIX + "*"):
        lock_path = folder / LOCK_NAME
        try:
            if not lock_path.is_file():
                if time.time() - folder.stat().st_mtime < min_age:
                    continue
            else:
                with open(lock_path, "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: its run is gone
            size = folder_bytes(folder)
        except OSError:
            continue  # held by a live run, or not ours to read
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed, freed = removed + 1, freed + size
    return removed, freed


def link_or_copy(src: Path, dst: Path, link: bool = True) -> None:
    """Hard-link ``src`` to ``dst`` (creating folders), or copy when asked or when linking fails."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem or links not allowed: copy instead
    shutil.copy2(src, dst)


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data) -> None:
    """JSON with NaN written as null and numpy values as plain numbers."""
    atomic_write_text(path, json.dumps(_json_ready(data), indent=2) + "\n")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def format_cell(value, percent: bool = True) -> str:
    """A table cell: a float (numpy's too) as a percentage with one decimal (``percent``) or 4 significant
    digits, None or NaN as "n/a", anything else as its text."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{100 * value:.1f}" if percent else f"{value:.4g}"
    return str(value)


def markdown_table(header: list[str], rows: list[list], percent: bool = True) -> str:
    """A Markdown table; floats as percentages (one decimal) unless ``percent`` is False."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(format_cell(v, percent) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(array))
