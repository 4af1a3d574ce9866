"""Writing outputs: atomic files, tables (CSV / JSON / Markdown) and heatmap overlays."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image


def _temp_beside(path: Path) -> Path:
    """An unused hidden name beside ``path`` for a temporary file or folder."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def atomic_write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Make ``path`` by ``write(temp path)`` in the same folder, fsync and a rename.

    An interrupted write leaves either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
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
