"""Exported graphs cached once per user and checkpoint, so a run never pays the export twice.

The cache lives in ``$SALSTREAM_CACHE/engines`` (default ``$XDG_CACHE_HOME/salstream`` or
``~/.cache/salstream``), whatever folder a command runs from. An entry is keyed by the
checkpoint file's SHA-256 (or the weights' hash for an in-memory model), the precision and
the opset. Exports are written to a private temporary directory and renamed into place,
so a killed export or two processes racing never leave a half-written entry; an entry
whose manifest or files are damaged is rebuilt, and the temporary directories of exports
that were killed are removed by the next export (their owner's PID is in the name).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from torch import nn

from salstream.artifacts.manifest import MANIFEST_NAME, read_manifest, verify_files, weights_sha256
from salstream.errors import SalstreamError
from salstream.export.onnx_export import DEFAULT_OPSET, export_onnx

log = logging.getLogger("salstream.export")

TMP_PREFIX = ".export-"
STALE_TMP_SECONDS = 6 * 3600      # an export takes minutes; a temp dir this old belongs to a dead process


def default_cache_root() -> Path:
    """``$SALSTREAM_CACHE/engines``, else ``$XDG_CACHE_HOME/salstream/engines``, else ``~/.cache/salstream/engines``."""
    base = os.environ.get("SALSTREAM_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = str(Path(xdg) / "salstream") if xdg else str(Path.home() / ".cache" / "salstream")
    return Path(base).expanduser() / "engines"


def cache_entry(key: str, fp16: bool, opset: int, root: Optional[str | os.PathLike] = None) -> Path:
    root = Path(root) if root is not None else default_cache_root()
    return root / f"{key[:16]}-{'fp16' if fp16 else 'fp32'}-op{opset}"


def usable(entry: Path) -> bool:
    """True when ``entry`` holds a complete export whose files match their checksums."""
    if not (entry / MANIFEST_NAME).is_file():
        return False
    try:
        verify_files(entry, read_manifest(entry))
        return True
    except SalstreamError as exc:
        log.warning("cached graphs %s are damaged (%s); exporting them again", entry, exc)
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's process: alive
        return True
    return True


def _remove_stale_temps(root: Path) -> None:
    """Remove temporary export folders whose process died (named ``.export-<pid>-…``), or very old ones."""
    now = time.time()
    for d in root.glob(TMP_PREFIX + "*"):
        pid_text = d.name[len(TMP_PREFIX):].partition("-")[0]
        try:
            dead = pid_text.isdigit() and not _pid_alive(int(pid_text))
            if dead or now - d.stat().st_mtime > STALE_TMP_SECONDS:
                log.info("removing %s, left by an export that did not finish", d)
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def cached_export(model: nn.Module | Callable[[], nn.Module], *, checkpoint_sha256: Optional[str] = None,
                  fp16: bool = False, root: Optional[str | os.PathLike] = None, opset: int = DEFAULT_OPSET) -> Path:
    """The cache entry for this model, exported on first use; returns its directory.

    With ``checkpoint_sha256`` a cache hit needs no model at all: ``model`` may be a
    loader that is called only on a miss.
    """
    if checkpoint_sha256 is None:
        model = model if isinstance(model, nn.Module) else model()
        key = weights_sha256(model)
    else:
        key = checkpoint_sha256
    final = cache_entry(key, fp16, opset, root)
    if final.parent.is_dir():
        _remove_stale_temps(final.parent)
    if usable(final):
        return final
    if final.is_dir():
        shutil.rmtree(final, ignore_errors=True)
    elif final.exists() or final.is_symlink():
        final.unlink()               # a stray file where the entry belongs
    model = model if isinstance(model, nn.Module) else model()
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting the %s graphs to ONNX once (about a minute on 2 cores); cached in %s",
             model.config.profile, final)
    # The owner's PID in the name lets the next export remove it at once if this process is killed.
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=final.parent))
    try:
        export_onnx(model, tmp, checkpoint_sha256=checkpoint_sha256, fp16=fp16, opset=opset, progress=log.info)
        try:
            os.rename(tmp, final)
        except OSError:
            if not usable(final):     # another process won the race with a complete entry: fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
