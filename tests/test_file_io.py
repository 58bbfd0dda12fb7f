"""Tests for file_io: round trips, determinism, error messages, safe loading."""

import gzip
import os
import pickle
import re
import subprocess
from collections import OrderedDict

import numpy as np
import pytest

import file_io
from file_io import DataFileError, load, save


def _records():
    return [
        {
            "f32": np.linspace(0, 1, 7, dtype=np.float32),
            "f64": np.arange(6, dtype=np.float64).reshape(2, 3).T,  # not contiguous
            "i64": np.arange(5),
            "i32": np.array([[1, -2], [3, 4]], dtype=np.int32),
            "scalar": np.float32(2.5),
            "nested": {"a": [1, (2, 3), None], "b": {"c": True, "d": False}},
            "text": "x0 * sin(x1)",
            "raw": b"\x00\x01",
            "none": None,
        },
        (1, 2.0, "three"),
    ]


def _metadata():
    return {"seed": 3, "parameters": {"n": 10}}


def _write_raw(path, obj):
    """Gzip-pickle `obj` by hand, bypassing save()'s checks."""
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=5)))


def _envelope(records, kind="traces", version=1):
    return {"format": "ttsr", "kind": kind, "version": version,
            "metadata": {}, "records": records}


def _assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


# --- round trip and determinism ----------------------------------------------

def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "dir" / "traces.pkl.gz"
    assert save(path, "traces", _records(), _metadata()) == path
    loaded = load(path, "traces")
    _assert_same(loaded.records, _records())
    assert loaded.metadata == _metadata()
    assert (loaded.kind, loaded.version, loaded.path) == ("traces", 1, path)
    records, metadata = load(path)
    _assert_same(records, _records())


def test_accepts_tuple_of_kinds(tmp_path):
    path = tmp_path / "e.pkl.gz"
    save(path, "evaluation", [], {})
    assert load(path, ("traces", "evaluation")).kind == "evaluation"


def test_same_data_gives_identical_bytes(tmp_path):
    first, second = tmp_path / "a.pkl.gz", tmp_path / "b.pkl.gz"
    save(first, "traces", _records(), _metadata())
    save(second, "traces", _records(), _metadata())
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[3] == 0  # gzip FLG: no file name stored


def test_unknown_kind_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="unknown file kind"):
        save(tmp_path / "x.pkl.gz", "nonsense", [], {})


# --- error messages ----------------------------------------------------------

def test_wrong_kind_names_both_kinds(tmp_path):
    path = tmp_path / "e.pkl.gz"
    save(path, "expressions", [], {})
    with pytest.raises(DataFileError) as err:
        load(path, "traces")
    message = str(err.value)
    assert message.startswith(str(path))
    assert "expected a 'traces' file, got 'expressions'" in message


def test_newer_version_is_refused(tmp_path):
    path = tmp_path / "v.pkl.gz"
    _write_raw(path, _envelope([], version=7))
    with pytest.raises(DataFileError, match=r"format version 7 is newer than this code supports \(1\)"):
        load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pkl.gz"
    with pytest.raises(DataFileError, match="file not found") as err:
        load(path)
    assert str(err.value).startswith(str(path))


def test_truncated_file(tmp_path):
    path = tmp_path / "t.pkl.gz"
    save(path, "traces", _records(), _metadata())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError) as err:
        load(path)
    assert str(err.value).startswith(str(path))
    assert "\n" not in str(err.value)


def test_corrupt_checksum(tmp_path):
    path = tmp_path / "c.pkl.gz"
    save(path, "traces", _records(), _metadata())
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC32 of the gzip trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DataFileError, match="corrupt gzip data"):
        load(path)


def test_not_gzip(tmp_path):
    path = tmp_path / "g.pkl.gz"
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataFileError, match="not a gzip file") as err:
        load(path)
    assert str(err.value).startswith(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pkl.gz"
    path.write_bytes(b"")
    with pytest.raises(DataFileError, match="file is empty") as err:
        load(path)
    assert str(err.value).startswith(str(path))


def test_not_a_ttsr_file(tmp_path):
    path = tmp_path / "list.pkl.gz"
    _write_raw(path, [1, 2, 3])
    with pytest.raises(DataFileError, match="not a ttsr data file"):
        load(path)


# --- safe loading ------------------------------------------------------------

class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl.gz"
    _write_raw(path, _envelope([_Evil(f"echo pwned > {marker}")]))
    with pytest.raises(DataFileError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "'posix.system'" in message or "'os.system'" in message or "'nt.system'" in message
    assert "only plain data and numpy arrays are allowed" in message
    assert not marker.exists()


@pytest.mark.parametrize("array", [
    np.array([1, None], dtype=object),
    np.zeros(2, dtype=[("a", "f4"), ("b", object)]),
])
def test_object_dtype_is_refused_on_load(tmp_path, array):
    path = tmp_path / "obj.pkl.gz"
    _write_raw(path, _envelope([array]))
    with pytest.raises(DataFileError, match="object-dtype"):
        load(path)


def test_numpy1_module_names_load(tmp_path):
    # numpy 1.x pickles name numpy.core.*; protocol 3 spells globals as text.
    array = np.arange(9.0).reshape(3, 3)[::2]
    data = pickle.dumps(_envelope([array]), protocol=3)
    assert b"numpy._core.multiarray\n_reconstruct" in data
    path = tmp_path / "old.pkl.gz"
    path.write_bytes(gzip.compress(data.replace(b"numpy._core.", b"numpy.core.")))
    _assert_same(load(path).records, [array])


def test_structured_dtype_without_objects_loads(tmp_path):
    path = tmp_path / "s.pkl.gz"
    array = np.zeros(3, dtype=[("a", "f4"), ("b", "i8")])
    save(path, "traces", [array], {})
    _assert_same(load(path).records, [array])


def test_save_refuses_what_load_would_refuse(tmp_path):
    path = tmp_path / "obj.pkl.gz"
    with pytest.raises(TypeError, match="numpy.ndarray"):
        save(path, "traces", [np.array([1, None], dtype=object)], {})
    with pytest.raises(TypeError, match="collections.OrderedDict"):
        save(path, "traces", [OrderedDict(a=1)], {})
    assert list(tmp_path.iterdir()) == []


# --- atomic writing ----------------------------------------------------------

def test_failed_save_leaves_no_files(tmp_path):
    path = tmp_path / "out.pkl.gz"
    with pytest.raises(TypeError):
        save(path, "traces", [lambda: None], {})
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_existing_file(tmp_path):
    path = tmp_path / "out.pkl.gz"
    save(path, "traces", [1, 2], {})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save(path, "traces", [lambda: None], {})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.pkl.gz"]


def test_overwrite_false_refuses_existing_file(tmp_path):
    path = tmp_path / "out.pkl.gz"
    save(path, "traces", [1], {})
    with pytest.raises(FileExistsError, match="out.pkl.gz"):
        save(path, "traces", [2], {}, overwrite=False)
    assert load(path).records == [1]


def test_overwrite_true_replaces(tmp_path):
    path = tmp_path / "out.pkl.gz"
    save(path, "traces", [1], {})
    save(path, "traces", [2], {})
    assert load(path).records == [2]


# --- provenance ----------------------------------------------------------------

METADATA_KEYS = {"command", "parameters", "seed", "code_version", "timestamp",
                 "hostname", "python", "numpy"}


def test_make_metadata_keys():
    meta = file_io.make_metadata({"n": 3}, seed=7, argv=["gen.py", "--name", "a b"])
    assert set(meta) == METADATA_KEYS
    assert meta["command"].endswith("gen.py --name 'a b'")
    assert meta["parameters"] == {"n": 3} and meta["seed"] == 7
    assert meta["code_version"] is None or isinstance(meta["code_version"], str)


def test_make_metadata_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(file_io.subprocess, "run", no_git)
    file_io.code_version.cache_clear()
    try:
        meta = file_io.make_metadata({}, seed=None)
    finally:
        file_io.code_version.cache_clear()
    assert set(meta) == METADATA_KEYS
    assert meta["code_version"] is None


def test_make_metadata_with_empty_path(monkeypatch):
    monkeypatch.setenv("PATH", "")
    file_io.code_version.cache_clear()
    try:
        assert file_io.make_metadata({}, seed=1)["code_version"] is None
    finally:
        file_io.code_version.cache_clear()


def test_code_version_reports_dirty_tree(monkeypatch):
    outputs = {"rev-parse": "abc123\n", "status": " M file_io.py\n"}

    def fake_git(command, **kwargs):
        return subprocess.CompletedProcess(command, 0, stdout=outputs[command[1]], stderr="")

    monkeypatch.setattr(file_io.subprocess, "run", fake_git)
    file_io.code_version.cache_clear()
    try:
        assert file_io.code_version() == "abc123-dirty"
    finally:
        file_io.code_version.cache_clear()


# --- JSON Lines ----------------------------------------------------------------

def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"a": 1, "b": [1, 2]}, {"x": np.float32(0.5), "y": np.arange(2)}]
    assert file_io.write_jsonl(path, rows) == 2
    assert list(file_io.read_jsonl(path)) == [{"a": 1, "b": [1, 2]}, {"x": 0.5, "y": [0, 1]}]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataFileError, match="^" + re.escape(f"{path}:2: not valid JSON")):
        list(file_io.read_jsonl(path))


def test_jsonl_empty_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("")
    assert list(file_io.read_jsonl(path)) == []
    with pytest.raises(DataFileError, match="file is empty") as err:
        file_io.read_jsonl(path, require_nonempty=True)
    assert str(err.value).startswith(str(path))
    path.write_text("\n\n")
    with pytest.raises(DataFileError, match="no rows"):
        list(file_io.read_jsonl(path, require_nonempty=True))


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="file not found"):
        file_io.read_jsonl(tmp_path / "nope.jsonl")


def test_failed_jsonl_write_leaves_no_files(tmp_path):
    with pytest.raises(TypeError):
        file_io.write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"b": object()}])
    assert list(tmp_path.iterdir()) == []


# --- command-line helper -------------------------------------------------------

def test_exit_helper_as_context_manager(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        with file_io.exit_on_data_error():
            load(tmp_path / "nope.pkl.gz")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'nope.pkl.gz'}: file not found")


def test_exit_helper_as_decorator(capsys):
    @file_io.exit_on_data_error()
    def main():
        raise FileExistsError("out.pkl.gz: already exists")

    for _ in range(2):  # the decorator must work on repeated calls
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: out.pkl.gz: already exists\n" * 2


def test_exit_helper_lets_other_errors_through():
    with pytest.raises(KeyError):
        with file_io.exit_on_data_error():
            raise KeyError("x")


# --- the record-stream layout ------------------------------------------------

def test_records_encoded_anywhere_give_the_same_file(tmp_path):
    # Records pickled and compressed one by one (by workers) and joined give
    # the bytes save() writes, and load back as the records.
    saved = save(tmp_path / "saved.pkl.gz", "traces", _records(), _metadata())
    encoded = [file_io.encode_record(record) for record in _records()]
    joined = file_io.save_encoded(tmp_path / "joined.pkl.gz", "traces", encoded, _metadata())
    assert saved.read_bytes() == joined.read_bytes()
    _assert_same(load(joined, kind="traces").records, _records())
    # Each record is its own gzip member: the file is the header member plus them.
    header = file_io.encode_record({"format": "ttsr", "kind": "traces", "version": file_io.FORMAT_VERSIONS["traces"],
                                    "metadata": _metadata(), "n_records": 2})
    assert joined.read_bytes() == header + b"".join(encoded)


def test_earlier_single_pickle_layout_still_loads(tmp_path):
    path = tmp_path / "old.pkl.gz"
    _write_raw(path, _envelope(_records()))
    _assert_same(load(path, kind="traces").records, _records())


def test_missing_records_are_a_truncated_file(tmp_path):
    path = file_io.save_encoded(tmp_path / "short.pkl.gz", "traces", [file_io.encode_record(1)], {})
    data = path.read_bytes()
    # Claim three records, store one.
    header = file_io.encode_record({"format": "ttsr", "kind": "traces", "version": 1, "metadata": {},
                                    "n_records": 3})
    path.write_bytes(header + data[len(file_io.encode_record({"format": "ttsr", "kind": "traces", "version": 1,
                                                              "metadata": {}, "n_records": 1})):])
    with pytest.raises(DataFileError, match="truncated"):
        load(path)


def test_a_malicious_record_after_the_header_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl.gz"
    header = file_io.encode_record({"format": "ttsr", "kind": "traces", "version": 1, "metadata": {}, "n_records": 1})
    path.write_bytes(header + gzip.compress(pickle.dumps(_Evil(f"echo pwned > {marker}"), protocol=5)))
    with pytest.raises(DataFileError, match="refused to load"):
        load(path)
    assert not marker.exists()


def test_a_header_without_a_record_count_is_not_a_data_file(tmp_path):
    path = tmp_path / "nocount.pkl.gz"
    _write_raw(path, {"format": "ttsr", "kind": "traces", "version": 1, "metadata": {}})
    with pytest.raises(DataFileError, match="not a ttsr data file"):
        load(path)


def test_save_wants_a_list_of_records(tmp_path):
    with pytest.raises(TypeError, match="records must be a list"):
        save(tmp_path / "x.pkl.gz", "traces", {"a": 1}, {})
    assert not (tmp_path / "x.pkl.gz").exists()


def test_a_header_whose_metadata_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "badmeta.pkl.gz"
    path.write_bytes(file_io.encode_record({"format": "ttsr", "kind": "traces", "version": 1, "metadata": ["x"],
                                            "n_records": 0}))
    with pytest.raises(DataFileError, match="metadata is a list"):
        load(path)


def test_single_pickle_layout_with_records_not_a_list_is_refused(tmp_path):
    path = tmp_path / "old.pkl.gz"
    _write_raw(path, {**_envelope([]), "records": "not records"})
    with pytest.raises(DataFileError, match="records are a str"):
        load(path)


def test_overwrite_false_keeps_a_file_that_appears_while_writing(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(FileExistsError, match="out.json"):
        with file_io.atomic_open(path, "w", overwrite=False) as handle:
            path.write_text("the other run's")  # another run finishes first
            handle.write("ours")
    assert path.read_text() == "the other run's"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --- outputs that must not be written ------------------------------------------

def test_atomic_open_refuses_a_fifo_and_leaves_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(file_io.OutputError, match=f"{fifo}: exists and is not a regular file"):
        with file_io.atomic_open(fifo, "w") as handle:
            handle.write("data")
    assert fifo.is_fifo()
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


@pytest.mark.parametrize("target, message", [
    ("folder", "is a folder, not a file"),
    ("file/out.json", "cannot be written (a file is in the way of its folder)"),
    ("file/deeper/out.json", "cannot be written (a file is in the way of its folder)"),
])
def test_atomic_open_and_check_writable_name_the_final_path(tmp_path, target, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep")
    path = tmp_path / target
    with pytest.raises(file_io.OutputError) as info:
        file_io.check_writable(path)
    assert str(info.value) == f"{path}: {message}"
    with pytest.raises(file_io.OutputError) as info:
        with file_io.atomic_open(path, "w") as handle:
            handle.write("data")
    assert str(info.value).startswith(f"{path}: ") and ".tmp." not in str(info.value)
    assert (tmp_path / "file").read_text() == "keep" and (tmp_path / "folder").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert list((tmp_path / "folder").iterdir()) == []


def test_a_failed_rename_is_reported_with_the_final_path(tmp_path, monkeypatch):
    def refuse(source, target):
        raise PermissionError(13, "Permission denied", str(source))
    monkeypatch.setattr(file_io.os, "replace", refuse)
    path = tmp_path / "out.json"
    with pytest.raises(file_io.OutputError) as info:
        with file_io.atomic_open(path, "w") as handle:
            handle.write("x")
    assert str(info.value) == f"{path}: cannot be written (Permission denied)"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_the_block_is_one_line_naming_the_output(tmp_path):
    """ENOSPC from a write inside the block is the output's problem; other errors keep their own type."""
    import errno

    path = tmp_path / "out.pkl.gz"
    save(path, "traces", [1], {})
    before = path.read_bytes()
    with pytest.raises(file_io.OutputError) as info:
        with file_io.atomic_open(path, "wb"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(info.value) == f"{path}: cannot be written (No space left on device)"
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.pkl.gz"]
    with pytest.raises(FileNotFoundError):  # e.g. an input the block reads: not the output's fault
        with file_io.atomic_open(path, "wb"):
            open(tmp_path / "no_such_input")
    assert path.read_bytes() == before


def test_check_writable_makes_the_folder_and_leaves_no_probe(tmp_path):
    path = tmp_path / "new" / "out.pkl.gz"
    assert file_io.check_writable(path) == path
    assert path.parent.is_dir() and list(path.parent.iterdir()) == []


def test_check_writable_finds_a_folder_it_cannot_write(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args)
    monkeypatch.setattr(file_io.os, "open", read_only)
    with pytest.raises(file_io.OutputError, match=f"{tmp_path / 'out.json'}: cannot be written \\(Read-only"):
        file_io.check_writable(tmp_path / "out.json")


def test_exit_helper_reports_an_unwritable_output_in_one_line(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        with file_io.exit_on_data_error():
            save(tmp_path / "folder", "traces", [], {})
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'folder'}: is a folder, not a file\n"


def test_refuse_input_as_output_sees_through_links_and_dots(tmp_path):
    source = tmp_path / "in.pkl.gz"
    source.write_text("input")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pkl.gz").symlink_to(source)
    os.link(source, tmp_path / "hard.pkl.gz")
    for output in (source, tmp_path / "sub" / ".." / "in.pkl.gz", tmp_path / "link.pkl.gz", tmp_path / "hard.pkl.gz"):
        with pytest.raises(file_io.OutputError, match="is the input file"):
            file_io.refuse_input_as_output(output, [None, source])
    file_io.refuse_input_as_output(tmp_path / "other.pkl.gz", [source, None])
    assert source.read_text() == "input"


@pytest.mark.parametrize("seed, ids, message", [(-1, (), "seed -1: must be a non-negative integer"),
                                                (3, (0, -5), "item id -5: must be a non-negative integer")])
def test_derive_seed_names_a_negative_seed(seed, ids, message):
    from random_stream import derive_seed, make_generator
    with pytest.raises(ValueError, match=message):
        derive_seed(seed, *ids)
    with pytest.raises(ValueError, match=message):
        make_generator(seed, *ids)
