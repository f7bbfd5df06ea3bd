"""Errors a user can cause. The CLI prints them as one line and exits 2; anything else is a bug.

Also the checks and translations of the one kind of user error that comes from the machine rather than the
job file: where output goes (a path under a file, a read-only place, a full disk).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class ShoalError(Exception):
    """A problem with the user's input: the message says what to change."""

    exit_code = 2


class Interrupted(ShoalError):
    """The user stopped the run (Ctrl-C, SIGTERM): exit code 128 + the signal's number, as a shell reports it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Signalled(BaseException):
    """Raised by `shoal train`'s handler of SIGINT/SIGTERM: a BaseException, so no `except Exception` stops it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


API_WORDS = (("--overwrite", "overwrite=True"), ("--resume", "resume=True"), ("--out", "out="))


def in_api_words(message: str) -> str:
    """A message written for `shoal train`, worded for a caller of `shoal.fit` (overwrite=True, not --overwrite)."""
    for option, argument in API_WORDS:
        message = message.replace(option, argument)
    return message


def speaks_api(fn):
    """`shoal.fit`'s ShoalErrors in its own words; a `shoal train` worker (`_model_from_job=True`) keeps the CLI's."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ShoalError as err:
            if kwargs.get("_model_from_job") or isinstance(err, Interrupted):
                raise
            raise ShoalError(in_api_words(str(err))) from None

    return wrapper


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_location(path: str | Path, option: str = "--out") -> None:
    """A directory can be made (or is) at `path`: no file in the way, and its nearest existing folder takes a file."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ShoalError(f"{option}: '{path}' exists and is not a directory; choose another path")
        base = path
    else:
        base = _existing_ancestor(path)
        if not base.is_dir():
            raise ShoalError(f"{option}: '{base}' is a file, so '{path}' cannot be made under it; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".shoal-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ShoalError(no_space_message(base, "")) from None
        why = "the filesystem is read-only" if err.errno == errno.EROFS else (err.strerror or str(err)).lower()
        raise ShoalError(f"{option}: cannot write in '{base}' ({why}); choose another path") from None


def check_output_file(path: str | Path, option: str = "--out") -> None:
    """A file can be written at `path`: it is not a directory, and its folder can be made and written."""
    path = Path(path)
    if path.is_dir():
        raise ShoalError(f"{option}: '{path}' is a directory; give the path of a file to write, e.g. '{path / 'model.pt'}'")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise ShoalError(f"{option}: '{base}' is a file, so '{path}' cannot be written under it; choose another path")
    check_location(path.parent, option)


def is_no_space(err: BaseException, where: str | Path | None = None) -> bool:
    """ENOSPC or EDQUOT, also when torch or DCP wrapped it (their messages keep the OS's words, or only 'write failed')."""
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    text = str(err)
    if "No space left" in text or "Disk quota exceeded" in text:
        return True
    if where is not None:  # torch's writers often say only "enforce fail ... unexpected pos": ask the disk
        with contextlib.suppress(OSError):
            return shutil.disk_usage(_existing_ancestor(Path(where))).free < 1 << 20
    return False


def no_space_message(where: str | Path, what: str) -> str:
    return (f"no space left on the device of '{where}'{f' while writing {what}' if what else ''}; free space there "
            "or choose another --out (a run that had a checkpoint continues with --resume)")


@contextlib.contextmanager
def writing(where: str | Path, what: str, tmp: str | Path | None = None) -> Iterator[None]:
    """Around a write: a full disk or a refused write becomes one line; `tmp` (a file or folder) is removed on failure."""
    try:
        yield
    except BaseException as err:  # DCP's CheckpointException is a BaseException
        full = not isinstance(err, (ShoalError, KeyboardInterrupt, SystemExit)) and is_no_space(err, where)  # before tmp goes
        _remove(tmp)
        if isinstance(err, (ShoalError, KeyboardInterrupt, SystemExit)):
            raise
        if full:
            raise ShoalError(no_space_message(where, what)) from None
        if isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ShoalError(f"--out: cannot write {what} in '{where}' ({(err.strerror or str(err)).lower()}); choose another --out") from None
        raise


def _remove(tmp: str | Path | None) -> None:
    if tmp is None:
        return
    tmp = Path(tmp)
    with contextlib.suppress(OSError):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
