"""Stores: where a job's outputs go. One interface over a local folder and S3.

Keys are '/'-separated and relative to the store's root URL. Writes are idempotent:
`put` replaces, `put_if_absent` creates once and reports whether this call created it.
farm.storage.open_store picks the store for a URL.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from farm import faults
from farm.errors import FarmError


class StoreError(FarmError, RuntimeError):
    """Storage is unreachable or refuses us (exit 2 before a run; a run that meets it
    stops resumably)."""


class StoreRefused(StoreError):
    """The store refuses writes: full, read-only, or the credentials may not write. Every
    unit would fail alike, so the run stops at once (exit 1) and resumes once it is fixed."""


# Write errors that say the store itself refuses, not this one file.
REFUSING = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class Store:
    url: str

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write `key` only if no object has that key; True if this call created it.

        Where the store's create-once is atomic (LocalStore's link, AWS S3's
        `If-None-Match: *`), exactly one of any number of concurrent calls for a key
        returns True. Where it is not (a server that checks the condition and writes in two
        steps, as moto's does, or S3Store's HEAD-then-PUT fallback), concurrent calls may
        each return True. Either way the key then holds exactly one object, one caller's
        complete bytes (never a mix), and a call that starts after a True has returned
        gets False.

        The farm relies only on that second guarantee: a part's key is its unit's content
        id and a unit's rows agree, whoever renders them, in everything that decides
        completion (item_ids, image keys, image sha256), so whichever part remains is a
        complete part for its unit and the job's completed set and `farm verify` are the
        same.
        """
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[BinaryIO]:
        """A seekable file of one object, for readers that take a large file a piece at a
        time (a compacted Parquet table by row groups) without holding all its bytes."""
        yield io.BytesIO(self.get(key))

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under `prefix`, relative to the store's root."""
        raise NotImplementedError

    def child(self, name: str) -> Store:
        """The store rooted at `{url}/{name}` (a job inside an output)."""
        raise NotImplementedError

    def check(self) -> None:
        """Fail early, with a StoreError, when the store cannot be written."""

    def probe(self) -> object:
        """Fail, with a StoreError, when the store cannot be read; writes nothing."""

    def check_links(self) -> None:
        """Fail, with a StoreError, when a link planted in the store leads out of it."""


class LocalStore(Store):
    """A folder. Every write goes to a temp file first, then an atomic rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        # Keys are ids made by farm, but a store must never write outside its root.
        if self.root != path and self.root not in path.parents:
            raise StoreError(f"{key}: key escapes the store root {self.root}")
        return path

    @contextlib.contextmanager
    def _writing(self):
        """A full, read-only or forbidden folder as StoreRefused, naming the store."""
        try:
            yield
        except OSError as err:
            if err.errno not in REFUSING:
                raise
            raise StoreRefused(f"{self.url}: {os.strerror(err.errno).lower()}; make room or "
                               "make it writable, then resume") from None  # fmt: skip

    def _write_temp(self, path: Path, data: bytes, key: str = "") -> str:
        # Created as open() creates files (0o666 less the umask), not mkstemp's 0600: a
        # job's images and report are served by web servers and shared with teammates.
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}")
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileNotFoundError:
                # A delete pruned the folder, empty, between the mkdir and the open.
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                # In two halves, so a test can strike a part half-written (farm/faults.py).
                f.write(data[: len(data) // 2])
                faults.writing(key)
                f.write(data[len(data) // 2 :])
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk keeps no half-written file
                os.unlink(tmp)
            raise
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._writing():
            os.replace(self._write_temp(path, data), path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with self._writing():
            tmp = self._write_temp(path, data, key)
            try:
                # link() fails if the target exists: an atomic create-once.
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[BinaryIO]:
        with self._path(key).open("rb") as f:
            yield f

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # A folder holds keys and nothing else, as an S3 prefix does: one left empty goes
        # too (a lease's `.running/` once its last lease is deleted, say).
        for folder in path.parents:
            if folder == self.root or self.root not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or already gone): so are the folders above

    def check_links(self) -> None:
        # Keys are written below the root's own entries and the nested folders of
        # named/ and report/; a link among them may lead anywhere. images/ and parts/
        # are flat, so their entries need no walk (a file link is replaced, not
        # written through).
        if not self.root.is_dir():
            return
        nested = []
        for entry in os.scandir(self.root):
            self._inside(Path(entry.path))
            if entry.is_dir(follow_symlinks=False) and entry.name in ("named", "report"):
                nested.append(entry.path)
        for top in nested:
            for dirpath, dirnames, _ in os.walk(top):
                for name in dirnames:
                    self._inside(Path(dirpath, name))

    def _inside(self, path: Path) -> None:
        real = path.resolve()
        if real != self.root and self.root not in real.parents:
            raise StoreError(f"{path}: a link that leads out of {self.root}; remove it "
                             "(farm writes only inside the job's folder)")  # fmt: skip

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            for name in sorted(files):
                if not name.startswith("."):
                    yield (Path(dirpath) / name).relative_to(self.root).as_posix()

    def child(self, name: str) -> LocalStore:
        return LocalStore(self._path(name))

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".check-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise StoreError(f"{self.root}: cannot write here ({err.strerror})") from None


def split_job_url(url: str) -> tuple[str, str]:
    """'{output}/{job_id}' -> (output, job_id)."""
    trimmed = url.rstrip("/")
    parent, _, job_id = trimmed.rpartition("/")
    if not job_id or not parent:
        raise StoreError(f"{url}: expected a job URL of the form OUTPUT/JOB_ID")
    return parent, job_id
