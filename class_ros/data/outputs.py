"""Writing outputs so that every reader finds each one complete or absent: the one way to write a file or a folder.

Files (a report JSON, a normaliser, positives .npz, a figure):

    write_json(path, obj)            # also write_text / write_bytes
    with replacing("fig.png") as tmp:  # for writers that want a path (np.savez, savefig, a video writer)
        fig.savefig(tmp)

Each goes to a temporary sibling, is fsynced and then renamed over `path`: a reader sees the old file or the
complete new one.

Folders (a dataset, an index; run directories use the same manifest but are completed in place, see rundir.py):

    with building("data/lift", "dataset", overwrite=args.overwrite, lineage={"mapping": sha}) as b:
        ... write everything under b.path ...        # a hidden sibling, .lift.partial-<pid>
        b.manifest["n_episodes"] = 12                # more manifest fields, if any

On a clean exit every file is fsynced, `manifest.json` (kind, format_version, lineage, complete: true, the
extra fields) is written last, and the folder is renamed to its place. `--overwrite` replaces only a folder whose
manifest says it is a class_ros output of the same kind, and only at that last rename: until then the old one
stays. On an exception (or kill -9) `out` is untouched; a later `building` of the same `out` removes what a
dead process left behind. Readers call `read_manifest(path, kind)`, which refuses anything else in one sentence.
Datasets have a wrapper over this, `EpisodeStore.build` (class_ros/data/store.py): importers use that.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from class_ros.errors import ClassRosError

MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------------ files
def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the folder holding it is flushed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_sibling(path: Path, tag: str) -> Path:
    # Keeps the suffix: OpenCV and matplotlib pick the format from it.
    return path.with_name(f".{path.stem}.{tag}-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on a clean exit it is fsynced and renamed over `path`."""
    path = _file_path(path)
    tmp = _tmp_sibling(path, "tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _file_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ClassRosError(f"{path} is a folder; name a file to write (e.g. {path / 'out.json'}).")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ClassRosError(f"cannot create the folder {path.parent} ({err.strerror}); choose another path.") from None
    return path


def check_file_target(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a file output that cannot be written: a folder, or an unwritable place."""
    path = _file_path(path)
    _probe_writable(path.parent, "path")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so a reader sees the old file or the complete new one, never a partial one."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """write_bytes for UTF-8 text."""
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """write_text of `obj` as JSON (numpy scalars become floats)."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=float))


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(obj) -> str:
    """A short sha256 of a JSON-able value (for lineage records: a mapping, a config)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ folders
def read_manifest(path: str | os.PathLike, kind: str | tuple[str, ...], *, allow_partial: bool = False) -> dict:
    """The manifest of the class_ros output at `path`, refusing a missing, incomplete or other-kind one."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    want = " or ".join(kinds)
    manifest = _manifest_or_none(path)
    if manifest is None:
        raise ClassRosError(f"{path} is not a complete class_ros {want} (no readable {MANIFEST}); it was never "
                            "finished or was written by something else: make it again.")
    if manifest.get("kind") not in kinds:
        raise ClassRosError(f"{path} is a class_ros {manifest.get('kind')}, not a {want}.")
    if manifest.get("complete") is not True and not allow_partial:
        raise ClassRosError(f"{path} is an incomplete class_ros {manifest['kind']} ({MANIFEST} says it was not "
                            "finished); make it again.")
    return manifest


def _manifest_or_none(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "kind" in manifest else None


def check_target(out: str | os.PathLike, kinds: str | tuple[str, ...], *, overwrite: bool) -> None:
    """Refuse, before any work, an `out` that may not be written: a file, a foreign folder, another kind."""
    out = Path(out)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if out.exists() and not out.is_dir():
        raise ClassRosError(f"{out} is a file, not a folder; choose another --out.")
    if out.is_dir() and any(out.iterdir()):
        manifest = _manifest_or_none(out)
        if manifest is None:
            raise ClassRosError(f"{out} is a folder that is not a class_ros output; nothing was changed, choose "
                                "another --out (--overwrite only replaces class_ros outputs).")
        if manifest["kind"] not in kinds:
            raise ClassRosError(f"{out} is a class_ros {manifest['kind']}, not a {kinds[0]}; nothing was changed, "
                                "choose another --out.")
        if not overwrite:
            raise ClassRosError(f"{out} already exists; choose another --out or pass --overwrite (the old "
                                f"{manifest['kind']} stays until the new one is complete).")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ClassRosError(f"cannot create the folder {parent} ({err.strerror}); choose another --out.") from None
    _probe_writable(parent, "--out")


def _probe_writable(folder: Path, what: str) -> None:
    # Creating a file is the only reliable test: permission bits say nothing to root or on a read-only mount.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ClassRosError(f"cannot write in {folder} ({err.strerror}); choose another {what}.") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out: Path) -> list[tuple[Path, str, int]]:
    """(path, "partial" | "old", pid) of the hidden siblings a `building` of `out` makes."""
    found = []
    for p in out.parent.glob(f".{out.name}.*-*"):
        tag, _, pid = p.name[len(out.name) + 2:].rpartition("-")
        if tag in ("partial", "old") and pid.isdigit():
            found.append((p, tag, int(pid)))
    return found


def _clean_leftovers(out: Path) -> None:
    for p, tag, pid in _leftovers(out):
        if _pid_alive(pid):
            continue
        if tag == "old" and not out.exists():
            os.rename(p, out)  # killed between the two renames of a replace: the old output is still whole
        else:
            shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def move_into_place(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Flush the finished folder `src` to disk and rename it to the new name `dest` (one atomic step)."""
    src, dest = Path(src), Path(dest)
    _fsync_tree(src)
    os.rename(src, dest)
    _fsync_dir(dest.parent)
    return dest


def replace_folder(new: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the finished folder `new` to `out`; an old `out` steps aside first and is removed only after."""
    new, out = Path(new), Path(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)  # until the next line, the old output waits here (recovered if we are killed)
    move_into_place(new, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def write_manifest(folder: str | os.PathLike, kind: str, *, format_version: int, complete: bool,
                   lineage: dict | None = None, **fields) -> dict:
    """Write `folder`/manifest.json (atomically); returns it. `building` calls this last."""
    manifest = {**fields, "kind": kind, "format_version": int(format_version), "complete": bool(complete),
                "lineage": dict(lineage or {})}
    write_json(Path(folder) / MANIFEST, manifest, sort_keys=True)
    return manifest


class Building:
    """What `building` yields: the folder to write (`path`) and extra manifest fields (`manifest`)."""

    def __init__(self, out: Path, path: Path, lineage: dict):
        self.out, self.path = out, path
        self.lineage = dict(lineage)
        self.manifest: dict = {}


@contextlib.contextmanager
def building(out: str | os.PathLike, kind: str, *, overwrite: bool = False, lineage: dict | None = None,
             format_version: int = 1) -> Iterator[Building]:
    """Build the output folder `out` in a hidden sibling, complete it with its manifest, then move it into place."""
    out = Path(out)
    check_target(out, kind, overwrite=overwrite)
    _clean_leftovers(out)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as err:
        raise ClassRosError(f"cannot create a folder beside {out} ({err.strerror}); choose another --out.") from None
    try:
        b = Building(out, tmp, lineage or {})
        yield b
        write_manifest(tmp, kind, format_version=format_version, complete=True, lineage=b.lineage, **b.manifest)
        check_target(out, kind, overwrite=overwrite)  # something may have appeared there meanwhile
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
