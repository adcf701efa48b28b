"""Official dataset archives: finding, extracting and downloading them, checking their files.

An :class:`Archive` describes how an official archive is laid out (its URL, md5, the folder it
extracts to and the files inside with their md5s). :func:`prepare_folder` finds that folder under a
dataset's ``root`` (or ``root`` itself), extracts an archive left there by hand, or downloads it
through torchvision; :class:`FileChecker` checks each file before it is read: present and, when
``verify``, the official checksum. Every problem is a :class:`~hjepa_kit.errors.DataError` that
names the file, what was expected and how to get it.

:func:`safe_unpickle` reads the CIFAR pickles with an unpickler that only rebuilds numpy arrays,
lists, dicts and bytes and refuses every other global (torchvision's CIFAR reader uses plain
``pickle.load``, which can run code).
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from hjepa_kit.errors import DataError
from hjepa_kit.params import param

__all__ = ["ArchiveParams", "Archive", "FileChecker", "prepare_folder", "download_root", "torchvision_class", "file_md5", "safe_unpickle"]


@attrs.frozen(kw_only=True)
class ArchiveParams:
    """What every dataset read from an official archive takes beside its ``root``: download and checksums."""

    download: bool = param(False, help="Download and extract the archive through torchvision when files are missing.")
    verify: bool = param(True, help="Verify the md5 checksum of every file read against the official archive's.")


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torchvision_class(name: str) -> Any:
    """A torchvision dataset class, for its file lists, md5s and URLs (imported only when needed)."""
    return getattr(importlib.import_module("torchvision.datasets"), name)


def _compact_names(names: Sequence[str]) -> str:
    """``data_batch_1, ..., data_batch_5, x`` -> ``data_batch_1..5,x`` for messages."""
    out: list[str] = []
    i = 0
    while i < len(names):
        stem = names[i].rstrip("0123456789")
        j = i
        while j + 1 < len(names) and names[j + 1].rstrip("0123456789") == stem and stem != names[j + 1]:
            j += 1
        if j > i and stem != names[i]:
            out.append(f"{names[i]}..{names[j][len(stem):]}")
        else:
            out.append(names[i])
        i = j + 1
    return ",".join(out)


@attrs.frozen
class Archive:
    """How an official archive is laid out, for lookups and messages."""

    title: str  # "CIFAR-10"
    page: str  # where people get it by hand
    url: str
    filename: str  # the archive's file name
    md5: str
    folder: str  # the folder the archive extracts to
    files: tuple[str, ...]  # every file the dataset needs inside ``folder``
    checksums: dict[str, str]

    def missing_message(self, path: Path, root: Path) -> str:
        return (
            f"{path}: missing. Expected the extracted {self.title} archive {self.filename} ({self.page}) with folder "
            f"layout {root}/{self.folder}/{{{_compact_names(self.files)}}}; download it and run "
            f"`tar xzf {self.filename} -C {root}`, or set data.dataset.params.download: true"
        )

    def missing_before_download(self, folder: Path, missing: Sequence[str]) -> str:
        """What an extracted ``folder`` lacks, to put before a failed download's message ("" if nothing)."""
        if not missing:
            return ""
        what = f"{folder / missing[0]}: missing" if len(missing) == 1 else f"{folder}: missing {', '.join(missing)}"
        return (
            f"{what} (the extracted {self.title} archive {self.filename} has {folder}/{{{_compact_names(self.files)}}}); "
            f"to get {'it' if len(missing) == 1 else 'them'}, "
        )


def _resolve_folder(root: Path, folder: str, marker: str) -> Path:
    """The archive's folder: ``root/folder``, or ``root`` itself when it is that folder."""
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or (root / marker).is_file():
        return root
    return root / folder


def download_root(root: Path, folder: str) -> Path:
    return root.parent if root.name == folder else root


def _safe_extract(archive_path: Path, dest: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``dest`` or are not plain."""
    try:
        with tarfile.open(archive_path) as tar:
            members = tar.getmembers()
            for member in members:
                parts = Path(member.name).parts
                if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive_path}: refused to extract {member.name!r} (outside the folder or not a plain file)")
            tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive_path}: cannot be extracted ({exc}); download it again") from None


class FileChecker:
    """Checks an archive's files: present, and (when ``verify``) the official checksum, once each."""

    def __init__(self, archive: Archive, folder: Path, root: Path, verify: bool) -> None:
        self.archive = archive
        self.folder = folder
        self.root = root
        self.verify = verify
        self._verified: set[str] = set()

    def path(self, name: str) -> Path:
        """The path of ``name``, checked (raises :class:`DataError` when missing or damaged)."""
        path = self.folder / name
        if not path.is_file():
            raise DataError(self.archive.missing_message(path, self.root))
        if self.verify and name not in self._verified:
            expected = self.archive.checksums.get(name)
            if expected is not None:
                actual = file_md5(path)
                if actual != expected:
                    raise DataError(
                        f"{path}: checksum mismatch (md5 {actual}; the official {self.archive.title} file has "
                        f"{expected}): the file is damaged or not the official one. Download {self.archive.filename} "
                        f"again ({self.archive.page}) and extract it into {self.root}, or set "
                        f"data.dataset.params.verify: false to skip the check"
                    )
            self._verified.add(name)
        return path

    def check_all_present(self) -> None:
        for name in self.archive.files:
            path = self.folder / name
            if not path.is_file():
                raise DataError(self.archive.missing_message(path, self.root))


def prepare_folder(archive: Archive, root: Path, marker: str, download: bool, verify: bool) -> Path:
    """Find (or download, or extract an archive found in ``root``) the folder of ``archive``."""
    folder = _resolve_folder(root, archive.folder, marker)
    if all((folder / name).is_file() for name in archive.files):
        return folder
    dest = download_root(root, archive.folder)
    local_archive = dest / archive.filename
    if local_archive.is_file():  # the archive was downloaded by hand but not extracted
        if verify and file_md5(local_archive) != archive.md5:
            raise DataError(
                f"{local_archive}: checksum mismatch with the official {archive.title} archive: download it again "
                f"({archive.page}), or set data.dataset.params.verify: false"
            )
        _safe_extract(local_archive, dest)
        return dest / archive.folder
    if download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(archive.url, str(dest), filename=archive.filename, md5=archive.md5 if verify else None)
        except Exception as exc:  # no network, proxy, disk full, damaged download: all the same advice
            missing = [name for name in archive.files if not (folder / name).is_file()] if folder.is_dir() else []
            raise DataError(archive.missing_before_download(folder, missing) + (
                f"downloading {archive.url} into {dest} failed ({type(exc).__name__}: {exc}). Without network access, "
                f"download {archive.filename} on another machine ({archive.page}), copy it into {dest} and run "
                f"`tar xzf {archive.filename} -C {dest}` (or leave the archive there: it is extracted on first use), "
                f"then set data.dataset.params.download: false"
            )) from None
        return dest / archive.folder
    return folder


# --- restricted unpickling (CIFAR) --------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy array reconstruction and bytes decoding."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):  # files pickled under numpy 1 and numpy 2
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"): a pure function.
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays; refuses every other global."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: Any, path: Path, hint: str) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._hint = hint

    def find_class(self, module: str, name: str) -> Any:
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _numpy_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._path}: refused to unpickle {module}.{name}: a dataset file of this format holds only numpy "
                f"arrays, lists and bytes, so this file is not the official one and may run code if loaded "
                f"carelessly. Nothing was executed. {self._hint}"
            ) from None


def safe_unpickle(path: Path, hint: str) -> Any:
    """Read a pickle file that may contain only dicts, lists, bytes, numbers and numpy arrays.

    Args:
        path: the file.
        hint: what to do about a bad file (appended to error messages).

    Raises:
        DataError: the file names any other global (nothing is executed), or is truncated/damaged.
    """
    try:
        with open(path, "rb") as file:
            return _RestrictedUnpickler(file, path, hint).load()
    except DataError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError ...: all mean a damaged file
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file is truncated or damaged. {hint}") from None
