"""Shared reading and writing of ttsr data files.

Every pipeline stage saves its output with `save` and reads its input with
`load`, so all stages share one file layout, one set of error messages, and
one loading policy.

File layout
-----------
A data file (conventionally ``*.pkl.gz``) is a gzip stream holding a header
pickle (protocol 5) of a plain dict, then one pickle per record::

    {
        "format":    "ttsr",
        "kind":      "traces",       # a key of FORMAT_VERSIONS
        "version":   1,              # FORMAT_VERSIONS[kind] when written
        "metadata":  {...},          # provenance, see make_metadata()
        "n_records": 1000,           # the pickles that follow
    }
    record 0
    record 1 ...

Each pickle is its own gzip member (`encode_record`), and gzip members
concatenate into one stream, so a worker process can pickle and compress its
records in parallel and the writer only joins bytes (`save_encoded`): trace
generation saves 1,000 traces without a serial compression step, and a record
has the same bytes however it reached the file (one process, a pool, a resumed
or merged run). Files of the earlier single-pickle layout (one dict holding
"records") still load.

The gzip headers have mtime 0 and no file name, so saving the same data twice
gives identical bytes and file hashes can be compared. Writes are atomic: a
temporary file in the target folder is fsynced and then renamed over the final
name, so a crash never leaves a half-written file under the real name.

Security
--------
Unpickling can run arbitrary code: a pickle may name any importable function
(``os.system``, say) and ask for it to be called. Data files are passed between
machines and people, so `load` uses a restricted unpickler that only admits
builtin containers and scalars plus the few numpy functions needed to rebuild
arrays, scalars and dtypes. Anything else is refused with a `DataFileError`
before it is called. Object-dtype arrays are refused too: their elements are
arbitrary pickled objects, and no stage needs them. `save` applies the same
policy, so a file that could not be loaded is never written.

JSON Lines helpers (`read_jsonl`, `write_jsonl`) are provided for small,
human-readable outputs and use the same atomic write.
"""

import builtins
import datetime
import errno
import gzip
import io
import json
import os
import pickle
import platform
import shlex
import socket
import stat
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

FORMAT_NAME = "ttsr"

# Bump a kind's version whenever the layout of its records changes, so old
# code refuses newer files instead of misreading them.
FORMAT_VERSIONS = {"expressions": 1, "traces": 1, "training_meta": 1, "evaluation": 1}

# On a sample of array-heavy records level 4 wrote ~2x faster than levels 6
# and 9, for files under 1% larger.
COMPRESS_LEVEL = 4
PICKLE_PROTOCOL = 5
GZIP_MAGIC = b"\x1f\x8b"

_POLICY = "only plain data and numpy arrays are allowed"


class DataFileError(ValueError):
    """A data file is missing, unreadable, corrupt or of the wrong kind.

    The message is one line and always starts with the file path.
    """


class OutputError(OSError):
    """An output path cannot be written (a folder, a device, under a file, not writable, an input).

    The message is one line and always starts with the final path (never a
    temporary file's); `exit_on_data_error` prints it as one ``error:`` line.
    """


@dataclass(frozen=True)
class LoadedFile:
    """The contents of a data file, as returned by `load`."""

    records: Any
    metadata: dict
    kind: str
    version: int
    path: Path

    def __iter__(self):
        """Allow ``records, metadata = load(...)``."""
        return iter((self.records, self.metadata))


def register_kind(kind: str, version: int = 1) -> None:
    """Add a file kind to FORMAT_VERSIONS; re-registering must not change it."""
    current = FORMAT_VERSIONS.setdefault(kind, version)
    if current != version:
        raise ValueError(f"kind {kind!r} is already registered with version {current}")


# --- which globals a data file may reference --------------------------------

def _numpy_globals() -> dict:
    """Map (module, name) to the numpy objects that rebuild arrays and scalars.

    numpy 1.x wrote ``numpy.core.*`` names and numpy 2 writes
    ``numpy._core.*``; both spellings map to the same functions.
    """
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = _np_multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = _np_multiarray.scalar
        table[(f"{package}.numeric", "_frombuffer")] = _np_numeric._frombuffer
    return table


_BUILTIN_NAMES = (
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
    "int", "float", "complex", "bool", "slice",
)
_SAFE_GLOBALS = {("builtins", name): getattr(builtins, name) for name in _BUILTIN_NAMES}
_SAFE_GLOBALS.update(_numpy_globals())
_SAFE_OBJECTS = tuple(_SAFE_GLOBALS.values())


class _Refused(Exception):
    """Raised inside unpickling; `load` turns it into a DataFileError."""


class _Malformed(Exception):
    """A readable stream that is not laid out as a data file."""


def _plain_dtype(*args, **kwargs) -> np.dtype:
    """Build a dtype, refusing object dtypes (also nested in structured ones)."""
    dtype = np.dtype(*args, **kwargs)
    if dtype.hasobject:
        raise _Refused("an object-dtype numpy array")
    return dtype


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in _SAFE_GLOBALS."""

    def find_class(self, module, name):
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise _Refused(f"'{module}.{name}'")
        # Every dtype in the stream is built through this name, so checking
        # here catches object dtypes before any array uses them.
        return _plain_dtype if obj is np.dtype else obj


def _is_savable(obj) -> bool:
    """True when `obj` pickles to something _SafeUnpickler will accept."""
    if isinstance(obj, np.dtype):
        return not obj.hasobject
    if type(obj) is np.ndarray or isinstance(obj, np.generic):
        return not obj.dtype.hasobject
    if isinstance(obj, (complex, slice, bytearray)):
        return True
    return any(obj is allowed for allowed in _SAFE_OBJECTS)


class _CheckedPickler(pickle.Pickler):
    """Pickler that refuses anything `load` would refuse."""

    def reducer_override(self, obj):
        # Called for every object except exact builtin containers/scalars.
        if _is_savable(obj):
            return NotImplemented
        kind = type(obj)
        raise TypeError(
            f"cannot save a {kind.__module__}.{kind.__qualname__} object: "
            f"{_POLICY} (no object dtype)"
        )


# --- atomic writing ----------------------------------------------------------

@contextmanager
def atomic_open(path, mode: str = "wb", *, overwrite: bool = True):
    """Open a temporary file that replaces `path` only if the block succeeds.

    The temporary file ``.{name}.tmp.{pid}`` lives in the target folder so the
    final rename stays on one filesystem and is atomic. It is fsynced before
    the rename and the folder after it, so the new file survives a crash. On
    any exception the temporary file is removed and `path` is left untouched.
    `mode` is "wb" or "w" (UTF-8 text with "\\n" newlines). With
    ``overwrite=False`` the file is published by a hard link, which fails if
    `path` appeared meanwhile (another run finishing first keeps its file).

    A `path` that exists but is not a regular file (a folder, a FIFO, a
    device) is never replaced, and a folder that cannot hold the file is
    refused: both raise OutputError naming `path` (see `check_writable`).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', not {mode!r}")
    final = Path(path)
    if not overwrite and final.exists():
        raise FileExistsError(f"{path}: already exists (refusing to overwrite it)")
    _refuse_non_regular(final)
    _make_folder(final)
    temp = final.with_name(f".{final.name}.tmp.{os.getpid()}")
    text_options = {} if mode == "wb" else {"encoding": "utf-8", "newline": "\n"}
    try:
        handle = open(temp, mode, **text_options)
    except OSError as exc:
        raise _output_error(final, exc) from None
    try:
        try:
            with handle:
                yield handle
                try:
                    handle.flush()
                    os.fsync(handle.fileno())
                except OSError as exc:
                    raise _output_error(final, exc) from None
        except OSError as exc:  # a write in the block (or the close after it) found the disk full
            if exc.errno in _DISK_FULL and not isinstance(exc, OutputError):
                raise _output_error(final, exc) from None
            raise
        _refuse_non_regular(final)  # it may have appeared while the block ran
        try:
            if overwrite:
                os.replace(temp, final)
            else:
                _publish_new(temp, final)
        except FileExistsError:
            raise
        except OSError as exc:
            raise _output_error(final, exc) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(final.parent)


# errnos that only writing raises: a write inside atomic_open's block failing with one of them is the
# output's problem (one line naming it), whatever else the block was doing.
_DISK_FULL = frozenset(code for code in (getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EFBIG"))
                       if code is not None)


def check_writable(path) -> Path:
    """Check up front that `atomic_open(path)` can write there; return `path` as a Path.

    Creates the folder (as atomic_open would), then creates and removes a
    probe file in it, so a folder that is really not writable (read-only
    filesystem, permissions) is found before the long work. OutputError (one
    line naming `path`) when `path` is a folder or other non-regular file, its
    folder cannot be made (a file is in the way) or is not writable.
    """
    final = Path(path)
    _refuse_non_regular(final)
    _make_folder(final)
    probe = final.with_name(f".{final.name}.probe.{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise _output_error(final, exc) from None
    probe.unlink(missing_ok=True)
    return final


def refuse_input_as_output(output, inputs) -> None:
    """OutputError when `output` is one of the `inputs` (None entries skipped).

    Paths are compared resolved (symlinks and '..' count), and as the same
    file on disk (hard links count), so writing the output never replaces
    an input.
    """
    output = Path(output)
    for item in inputs:
        if item is not None and same_file(output, item):
            raise OutputError(f"{output}: is the input file {item}; choose another output path")


def same_file(first, second) -> bool:
    """Whether two paths name the same file: equal once resolved, or the same inode."""
    first, second = Path(first), Path(second)
    if first.resolve() == second.resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return False


def _refuse_non_regular(final: Path) -> None:
    """OutputError when `final` exists and is not a regular file (it would be replaced by a rename)."""
    try:
        info = os.stat(final)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise OutputError(f"{final}: cannot be written (a file is in the way of its folder)") from None
    except OSError as exc:
        raise _output_error(final, exc) from None
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{final}: is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{final}: exists and is not a regular file (refusing to replace it)")


def _make_folder(final: Path) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{final}: cannot be written (a file is in the way of its folder)") from None
    except OSError as exc:
        raise OutputError(f"{final}: cannot create its folder ({exc.strerror or _one_line(exc)})") from None


def _output_error(final: Path, exc: OSError) -> OutputError:
    """`exc` (about a temporary file, say) as a one-line OutputError naming the final path."""
    if isinstance(exc, OutputError):
        return exc
    if isinstance(exc, IsADirectoryError):
        return OutputError(f"{final}: is a folder, not a file")
    if isinstance(exc, NotADirectoryError):
        return OutputError(f"{final}: cannot be written (a file is in the way of its folder)")
    reason = exc.strerror or _one_line(exc)
    return OutputError(f"{final}: cannot be written ({reason})")


def _publish_new(temp: Path, final: Path) -> None:
    """Rename `temp` to `final` only if `final` does not exist, atomically (a hard link, then the unlink)."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise FileExistsError(f"{final}: already exists (refusing to overwrite it)") from None
    except OSError:  # a filesystem without hard links: the check and the rename are separate steps
        if final.exists():
            raise FileExistsError(f"{final}: already exists (refusing to overwrite it)") from None
        os.replace(temp, final)
        return
    temp.unlink()


def _fsync_folder(folder: Path) -> None:
    """Persist a rename; skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- data files ----------------------------------------------------------------

def save(path, kind: str, records, metadata: dict, *, overwrite: bool = True) -> Path:
    """Atomically write `records` (a list) and `metadata` as a ttsr data file.

    `kind` must be a key of FORMAT_VERSIONS. Records may hold builtin
    containers and scalars, numpy arrays, numpy scalars and dtypes (no object
    dtype); anything else raises TypeError and no file is written. With
    ``overwrite=False`` an existing file raises FileExistsError.
    Returns the path written.
    """
    if not isinstance(records, (list, tuple)):
        raise TypeError(f"records must be a list, not {type(records).__name__}")
    return save_encoded(path, kind, [encode_record(record) for record in records], metadata,
                        overwrite=overwrite)


def encode_record(record) -> bytes:
    """One record as it is stored: a gzip member of its (checked) pickle.

    Deterministic: the same record gives the same bytes in any process, so
    workers can encode and the parent only joins (see `save_encoded`).
    """
    buffer = io.BytesIO()
    _CheckedPickler(buffer, protocol=PICKLE_PROTOCOL).dump(record)
    return gzip.compress(buffer.getvalue(), compresslevel=COMPRESS_LEVEL, mtime=0)


def decode_record(data: bytes, name: str = "record"):
    """The record `encode_record` encoded, loaded as safely as `load` loads files."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as stream:
            return _SafeUnpickler(stream).load()
    except _Refused as exc:
        raise DataFileError(f"{name}: refused to load {exc} ({_POLICY})") from None


def save_encoded(path, kind: str, encoded_records, metadata: dict, *, overwrite: bool = True) -> Path:
    """Like `save`, for records already encoded by `encode_record` (e.g. in worker processes)."""
    if kind not in FORMAT_VERSIONS:
        raise ValueError(f"unknown file kind {kind!r}; known: {sorted(FORMAT_VERSIONS)}")
    encoded_records = list(encoded_records)
    header = {
        "format": FORMAT_NAME,
        "kind": kind,
        "version": FORMAT_VERSIONS[kind],
        "metadata": dict(metadata),
        "n_records": len(encoded_records),
    }
    with atomic_open(path, "wb", overwrite=overwrite) as raw:
        raw.write(encode_record(header))
        for member in encoded_records:
            raw.write(member)
    return Path(path)


def load(path, kind=None) -> LoadedFile:
    """Read a ttsr data file written by `save`.

    `kind` may be a kind name or a tuple of accepted names; None accepts any
    known kind. Raises DataFileError (one line, starting with the path) if the
    file is missing, empty, not gzip, truncated, corrupt, references anything
    other than plain data and numpy arrays, is of another kind, or has a newer
    format version than this code supports.
    """
    if _file_size(path) == 0:
        raise DataFileError(f"{path}: file is empty")
    if not _starts_with(path, GZIP_MAGIC):
        raise DataFileError(f"{path}: not a gzip file")
    header, records = _unpickle(path)
    file_kind, version = _check_header(path, header, kind)
    return LoadedFile(records, header["metadata"], file_kind, version, Path(path))


def _file_size(path) -> int:
    """Size of a regular file, or DataFileError if there is none to read."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataFileError(f"{path}: not a regular file")
    return info.st_size


def _starts_with(path, prefix: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(prefix)) == prefix
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror})") from None


def _unpickle(path):
    """(header, records): decompress and safely unpickle, every failure a DataFileError."""
    try:
        with gzip.open(path, "rb") as stream:
            header = _SafeUnpickler(stream).load()
            if isinstance(header, dict) and "records" in header:  # the earlier single-pickle layout
                records = header["records"]
                if not isinstance(records, list):
                    raise _Malformed(f"its records are a {type(records).__name__}, not a list")
            else:
                count = header.get("n_records") if isinstance(header, dict) else None
                if type(count) is not int or count < 0:
                    raise _Malformed("no record count in the header")
                records = [_SafeUnpickler(stream).load() for _ in range(count)]
            # Reading to the end makes gzip verify its checksum and length.
            trailing = stream.read(1)
    except _Malformed as exc:
        raise DataFileError(f"{path}: not a {FORMAT_NAME} data file ({exc})") from None
    except _Refused as exc:
        raise DataFileError(f"{path}: refused to load {exc} ({_POLICY})") from None
    except gzip.BadGzipFile as exc:  # e.g. a failed checksum
        raise DataFileError(f"{path}: corrupt gzip data ({_one_line(exc)})") from None
    except EOFError as exc:
        raise DataFileError(f"{path}: file is truncated ({_one_line(exc)})") from None
    except Exception as exc:  # zlib, pickle, numpy and OS errors alike
        raise DataFileError(
            f"{path}: corrupt data file ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    if trailing:
        raise DataFileError(f"{path}: corrupt data file (unexpected data after the records)")
    return header, records


def _check_header(path, payload, expected) -> tuple:
    """Validate the envelope dict; return the file's (kind, version)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise DataFileError(f"{path}: not a {FORMAT_NAME} data file")
    missing = {"kind", "version", "metadata"} - payload.keys()
    if missing:
        raise DataFileError(f"{path}: {FORMAT_NAME} file lacks {sorted(missing)}")
    kind, version = payload["kind"], payload["version"]
    accepted = (expected,) if isinstance(expected, str) else expected
    if accepted is not None and kind not in accepted:
        wanted = " or ".join(repr(name) for name in accepted)
        raise DataFileError(f"{path}: expected a {wanted} file, got {kind!r}")
    supported = FORMAT_VERSIONS.get(kind)
    if supported is None:
        raise DataFileError(f"{path}: unknown file kind {kind!r}")
    if type(version) is not int or version < 1:
        raise DataFileError(f"{path}: invalid format version {version!r}")
    if version > supported:
        raise DataFileError(
            f"{path}: format version {version} is newer than this code supports ({supported})"
        )
    if not isinstance(payload["metadata"], dict):
        raise DataFileError(f"{path}: malformed header (metadata is a {type(payload['metadata']).__name__}, "
                            "not a dict)")
    return kind, version


def _one_line(exc) -> str:
    return " ".join(str(exc).split())


# --- provenance ---------------------------------------------------------------

def make_metadata(parameters, seed, argv=None) -> dict:
    """Provenance to store with every data file.

    `parameters` is the fully resolved configuration (a dict, or an
    argparse.Namespace). `argv` is an argument vector like sys.argv (script
    first) and defaults to sys.argv; the interpreter name is prepended so the
    recorded command can be pasted into a shell.
    """
    if not isinstance(parameters, dict):
        parameters = vars(parameters)
    interpreter = os.path.basename(sys.executable) or "python"
    return {
        "command": shlex.join([interpreter, *(sys.argv if argv is None else argv)]),
        "parameters": dict(parameters),
        "seed": seed,
        "code_version": code_version(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


@lru_cache(maxsize=1)
def code_version():
    """Git commit of the repo holding this file, "-dirty" if it has changes.

    None when git, the repository or a commit is unavailable; never raises.
    """
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None
    changes = _git("status", "--porcelain")
    return f"{head}-dirty" if changes else head


def _git(*args):
    """Stripped stdout of a git command run next to this file, or None."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


# --- command-line helper ------------------------------------------------------

@contextmanager
def exit_on_data_error():
    """Turn data-file errors into one "error: ..." line and exit status 2.

    Use as ``with exit_on_data_error():`` or as a decorator on a CLI main:
    ``@exit_on_data_error()``. Output paths that cannot be written
    (OutputError, from atomic_open or check_writable) are reported the same
    way. Other exceptions keep their traceback.
    """
    try:
        yield
    except (DataFileError, OutputError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


# --- JSON Lines ---------------------------------------------------------------

def write_jsonl(path, rows: Iterable[dict], *, overwrite: bool = True) -> int:
    """Atomically write one JSON object per line; return the number of rows.

    numpy scalars and arrays are converted to plain numbers and lists.
    """
    count = 0
    with atomic_open(path, "w", overwrite=overwrite) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=_json_default))
            handle.write("\n")
            count += 1
    return count


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} object as JSON")


def read_json(path, what: str = "file"):
    """The JSON value in `path` (a config, say); DataFileError, one line naming the file and `what` it
    should be, when it is missing, a folder, not UTF-8 text, unreadable or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFileError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise DataFileError(f"{path}: not UTF-8 text (JSON is expected)") from None
    except OSError as error:
        raise DataFileError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise DataFileError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def read_jsonl(path, *, require_nonempty: bool = False) -> Iterator[dict]:
    """Iterate over the JSON objects of a JSON Lines file; blank lines are skipped.

    A missing file is reported at call time; a bad line raises DataFileError
    ``"path:LINE: not valid JSON (...)"`` when reached. With
    ``require_nonempty=True`` a file without rows is a DataFileError too.
    """
    if _file_size(path) == 0 and require_nonempty:
        raise DataFileError(f"{path}: file is empty")
    return _iter_jsonl(path, require_nonempty)


def _iter_jsonl(path, require_nonempty: bool) -> Iterator[dict]:
    count = 0
    with open(path, encoding="utf-8") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _parse_json_line(path, number, line)
                    count += 1
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if require_nonempty and count == 0:
        raise DataFileError(f"{path}: file has no rows")


def _parse_json_line(path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFileError(
            f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(row, dict):
        raise DataFileError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    return row


def format_count(count: int) -> str:
    """Counts in data file names: 50, 1k, 2.5k, 10k, 1M; 1234 stays 1234."""
    for size, suffix in ((1_000_000, "M"), (1000, "k")):
        if count >= size and (count * 10) % size == 0:
            return f"{count / size:g}{suffix}"
    return str(count)
