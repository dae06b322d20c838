"""Output folders that never destroy data: where ``export`` and ``make-tiny`` write.

:func:`write_folder` builds a folder beside its target and renames it into place:

1. ``OUT`` is resolved (symbolic links in its parents followed) and refused, whatever ``--force``
   says, when it is the current folder or one of its parents, the source checkpoint or a folder
   holding it, or a symbolic link.
2. A non-empty ``OUT`` is refused without ``--force``; with ``--force`` only a prunevid artifact of
   the same kind is replaced, and only when it holds nothing but the files it lists itself.
3. An exclusive lock (``fcntl.flock`` on ``.OUT.prunevid-lock`` beside ``OUT``, created and removed
   here) keeps two writers of one ``OUT`` apart: the second gets a one-line error at once. Holding
   it, the staging folders of ``OUT`` left by a killed run (recognised by their marker file) are
   removed; nothing else is.
4. The folder is built in a hidden ``.OUT.partial-*`` folder, marked by a ``.prunevid`` file beside
   it. Any exception (Ctrl-C and, through the CLI, SIGTERM too) removes both.
5. ``OUT`` is checked again right before the rename: a folder filled by someone else meanwhile is
   never replaced without ``--force``, and with it only if it is a prunevid artifact. A replaced
   artifact is moved aside, checked once more, and only the files it lists are deleted.

SIGINT and SIGTERM are held back while the staging folder is removed or renamed into place, so a
second Ctrl-C cannot leave half a folder; they are delivered right after.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from prunevid import spec
from prunevid.errors import ArtifactError

TINY_MARKER = "prunevid_tiny.json"
LOCK_SUFFIX = ".prunevid-lock"
LOCK_TEXT = b"prunevid lock\n"
STAGING_INFIX = ".partial-"
STAGING_MARKER_SUFFIX = ".prunevid"


@dataclass(frozen=True)
class ArtifactKind:
    """A kind of folder prunevid writes: its name in messages and how to tell one by its files.

    ``owned`` returns the relative paths (``/``-separated) of the files an artifact of this kind
    lists as its own, or None when the folder is not such an artifact.
    """

    name: str
    owned: Callable[[Path], frozenset[str] | None]


def _read_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def export_files(folder: Path) -> frozenset[str] | None:
    """The files an export's manifest lists (graphs, their hashes' files, ``files``, itself), and the
    TensorRT variants ``<graph>.trt.onnx`` that prunevid derives beside them."""
    manifest = _read_object(folder / spec.MANIFEST)
    if manifest is None or "format_version" not in manifest:
        return None
    versions, graphs, files = manifest.get("versions"), manifest.get("graphs"), manifest.get("files")
    if not (isinstance(versions, dict) and "prunevid" in versions and isinstance(graphs, dict)
            and isinstance(files, dict)):
        return None
    owned = {spec.MANIFEST, *files}
    for entry in graphs.values():
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), dict)):
            return None
        owned.add(entry["file"])
        owned.update(str(PurePosixPath(entry["file"]).parent / name) for name in entry["sha256"])
        graph = PurePosixPath(entry["file"])
        owned.add(str(graph.with_name(f"{graph.stem}.trt{graph.suffix}")))  # TensorRT variant (prunevid.trt.variant)
    return frozenset(owned)


def tiny_files(folder: Path) -> frozenset[str] | None:
    """The files a ``make-tiny`` folder lists in its marker :data:`TINY_MARKER` (and the marker)."""
    marker = _read_object(folder / TINY_MARKER)
    files = None if marker is None else marker.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return frozenset({TINY_MARKER, *files})


EXPORT = ArtifactKind("prunevid export", export_files)
TINY = ArtifactKind("prunevid tiny model", tiny_files)


def list_files(folder: Path) -> list[str]:
    """Every non-folder entry under ``folder`` as a sorted ``/``-separated relative path; symbolic
    links count as files and are not followed."""
    found: list[str] = []

    def walk(path: Path, prefix: str) -> None:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), f"{prefix}{entry.name}/")
                else:
                    found.append(prefix + entry.name)

    walk(folder, "")
    return sorted(found)


# ---- checks -------------------------------------------------------------------------------------


def _target(out: Path) -> Path:
    """``out`` as an absolute path with its parents' symbolic links resolved (``out`` itself kept)."""
    if out.name in ("", ".", ".."):
        return out.resolve()
    return out.parent.resolve() / out.name


def _refuse_protected(out: Path, target: Path, source: Path | None) -> None:
    cwd = Path.cwd().resolve()
    real = target.resolve()
    for path in {target, real}:
        if path == cwd or path in cwd.parents:
            raise ArtifactError(f"{out} is the current folder or one of its parents; prunevid never replaces it")
        if source is not None:
            src = Path(source).resolve()
            if path == src or path in src.parents:
                raise ArtifactError(f"{out} is the source checkpoint {src} or a folder holding it; "
                                    "prunevid never replaces it")
    if target.is_symlink():
        raise ArtifactError(f"{out} is a symbolic link; give the folder it points to")
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder")


def _replaceable(out: Path, folder: Path, kind: ArtifactKind, force: bool) -> None:
    """Refuse a non-empty ``folder`` unless ``force`` and it is a ``kind`` holding only its own files."""
    try:
        if not any(folder.iterdir()):
            return
        files = list_files(folder)
    except OSError as exc:
        raise ArtifactError(f"cannot read {out}: {exc.strerror or exc}") from None
    if not force:
        raise ArtifactError(f"{out} is not empty; pass --force to replace a previous {kind.name}")
    owned = kind.owned(folder)
    if owned is None:
        raise ArtifactError(f"{out} is not a {kind.name}; --force replaces only an empty folder or a "
                            f"{kind.name}, so move it away yourself or choose another folder")
    strays = [f for f in files if f not in owned]
    if strays:
        more = f" and {len(strays) - 1} more files" if len(strays) > 1 else ""
        raise ArtifactError(f"{out} holds {strays[0]}{more}, which the {kind.name} did not write; "
                            "--force replaces only what prunevid wrote, so move it away first")


def check_target(out: str | Path, kind: ArtifactKind, force: bool = False, source: str | Path | None = None) -> Path:
    """Refuse an ``out`` that :func:`write_folder` would refuse (without any side effect); returns
    its absolute path."""
    out = Path(out)
    target = _target(out)
    _refuse_protected(out, target, Path(source) if source is not None else None)
    if target.is_dir():
        _replaceable(out, target, kind, force)
    return target


# ---- lock, staging, signals ----------------------------------------------------------------------


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during the block (main thread only), then deliver them again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None and handler is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught:
            signal.raise_signal(sig)


@contextlib.contextmanager
def _locked(out: Path, target: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``target``; a second holder gets an :class:`ArtifactError`."""
    import fcntl

    path = target.parent / f".{target.name}{LOCK_SUFFIX}"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise ArtifactError(f"cannot write {out}: cannot create its lock {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ArtifactError(f"another prunevid is writing {out} (it holds {path}); "
                                    "wait for it to finish or choose another folder") from None
            raise ArtifactError(f"cannot lock {path}: {exc.strerror or exc}") from None
        try:  # the previous holder removes the file on release: lock the file that is there now
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)
    try:
        if os.fstat(fd).st_size == 0:
            os.write(fd, LOCK_TEXT)
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_bytes() == LOCK_TEXT:  # ours (or a killed prunevid's), never a user's file
                path.unlink()
        os.close(fd)


def _staging_marker(staging: Path) -> Path:
    return staging.with_name(staging.name + STAGING_MARKER_SUFFIX)


def _new_staging(target: Path) -> Path:
    """Create the hidden staging folder of ``target``, its marker first."""
    for _ in range(100):
        staging = target.parent / f".{target.name}{STAGING_INFIX}{secrets.token_hex(4)}"
        marker = _staging_marker(staging)
        try:
            with open(marker, "x", encoding="utf-8") as handle:
                json.dump({"target": target.name, "pid": os.getpid()}, handle)
        except FileExistsError:
            continue
        try:
            staging.mkdir()
        except FileExistsError:
            marker.unlink()
            continue
        return staging
    raise ArtifactError(f"cannot create a staging folder beside {target}")


def _remove_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        _staging_marker(staging).unlink()


def _remove_stale_staging(target: Path) -> None:
    """Remove staging folders of ``target`` that a killed run left (called with the lock held)."""
    prefix = f".{target.name}{STAGING_INFIX}"
    for marker in target.parent.iterdir():
        if not (marker.name.startswith(prefix) and marker.name.endswith(STAGING_MARKER_SUFFIX)) or marker.is_symlink():
            continue
        info = _read_object(marker)
        if info is not None and info.get("target") == target.name:
            _remove_staging(marker.with_name(marker.name[: -len(STAGING_MARKER_SUFFIX)]))


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


def _remove_listed(folder: Path, files: list[str]) -> None:
    """Delete ``files`` (relative to ``folder``), then the folders they leave empty."""
    for name in files:
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    for path in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _install(out: Path, staging: Path, target: Path, kind: ArtifactKind, force: bool) -> None:
    """Rename ``staging`` to ``target``, replacing only an empty folder or (``force``) an artifact."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ArtifactError(f"{out} was replaced by a file or link while prunevid was writing it; nothing was changed")
    try:
        os.rename(staging, target)  # atomic; replaces an empty folder, fails on a filled one
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise ArtifactError(f"cannot write {out}: {exc.strerror or exc}") from None
    if not force:
        raise ArtifactError(f"{out} was filled while prunevid was writing it; nothing was replaced "
                            f"(pass --force to replace a previous {kind.name})")
    _replaceable(out, target, kind, force)
    aside = target.parent / f".{target.name}.replaced-{secrets.token_hex(4)}"
    try:
        os.rename(target, aside)
    except OSError as exc:
        raise ArtifactError(f"cannot replace {out}: {exc.strerror or exc}") from None
    try:
        _replaceable(out, aside, kind, force)  # what was moved is what was checked
        os.rename(staging, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.rename(aside, target)
        if isinstance(exc, OSError):
            raise ArtifactError(f"cannot replace {out}: {exc.strerror or exc}") from None
        raise
    _remove_listed(aside, list_files(aside))


@contextlib.contextmanager
def write_folder(out: str | Path, kind: ArtifactKind, force: bool = False,
                 source: str | Path | None = None) -> Iterator[Path]:
    """Yield a fresh hidden folder that becomes ``out`` when the block succeeds (see the module
    docstring for what is refused); ``source`` is the checkpoint the folder is made from."""
    out = Path(out)
    target = check_target(out, kind, force, source)
    try:
        created = _make_parents(target.parent)
    except OSError as exc:
        raise ArtifactError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with _locked(out, target):
            _remove_stale_staging(target)
            staging = _new_staging(target)
            try:
                yield staging
                with _signals_held():
                    _install(out, staging, target, kind, force)
                    with contextlib.suppress(OSError):
                        _staging_marker(staging).unlink()
            except BaseException:
                with _signals_held():
                    _remove_staging(staging)
                raise
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
