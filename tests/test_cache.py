import json
import multiprocessing
import os
import time

import pytest

from idistill.data.cache import CacheError, cached, file_sha256, verify

SETTINGS = {"n": 3, "vocab_size": 200}


def _builder(counter):
    """A build that writes two files and records each run in `counter`."""

    def build(out):
        with open(counter, "a") as f:
            f.write("built\n")
        (out / "data.txt").write_text("hello\n")
        (out / "sub").mkdir()
        (out / "sub" / "more.bin").write_bytes(b"\x00\x01")

    return build


def _builds(counter) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def test_second_call_reuses_the_directory_without_building(tmp_path):
    counter = tmp_path / "count"
    a = cached(tmp_path / "cache", "toy", SETTINGS, _builder(counter))
    b = cached(tmp_path / "cache", "toy", dict(reversed(SETTINGS.items())), _builder(counter))
    assert a == b and (a / "data.txt").read_text() == "hello\n"
    assert _builds(counter) == 1


def test_other_settings_get_another_directory(tmp_path):
    counter = tmp_path / "count"
    a = cached(tmp_path, "toy", SETTINGS, _builder(counter))
    b = cached(tmp_path, "toy", {**SETTINGS, "n": 4}, _builder(counter))
    assert a != b and a.parent == b.parent == tmp_path / "toy"
    assert _builds(counter) == 2


def test_manifest_records_settings_sizes_and_sha256(tmp_path):
    path = cached(tmp_path, "toy", SETTINGS, _builder(tmp_path / "count"))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["settings"] == SETTINGS
    assert set(manifest["files"]) == {"data.txt", os.path.join("sub", "more.bin")}
    entry = manifest["files"]["data.txt"]
    assert entry == {"size": 6, "sha256": file_sha256(path / "data.txt")}
    assert manifest["idistill_version"] and manifest["created"]


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(out):
        (out / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cached(tmp_path, "toy", SETTINGS, broken)
    assert [p.name for p in (tmp_path / "toy").iterdir() if not p.name.endswith(".lock")] == []
    cached(tmp_path, "toy", SETTINGS, _builder(tmp_path / "count"))
    assert _builds(tmp_path / "count") == 1


def test_leftovers_of_a_killed_build_are_cleared(tmp_path):
    path = cached(tmp_path, "toy", SETTINGS, _builder(tmp_path / "count"))
    (path / "manifest.json").unlink()  # as if killed before the manifest was written
    stale = path.parent / f".{path.name}.tmp-dead"
    stale.mkdir()
    again = cached(tmp_path, "toy", SETTINGS, _builder(tmp_path / "count"))
    assert again == path and (again / "manifest.json").is_file() and not stale.exists()
    assert _builds(tmp_path / "count") == 2


def test_verify_passes_on_intact_data_and_names_a_changed_file(tmp_path):
    path = cached(tmp_path, "toy", SETTINGS, _builder(tmp_path / "count"))
    verify(path)
    (path / "data.txt").write_text("HELLO\n")
    with pytest.raises(CacheError, match="data.txt"):
        verify(path)
    (path / "data.txt").unlink()
    with pytest.raises(CacheError, match="missing"):
        verify(path)


def _worker(root, counter, barrier, queue):
    def slow_build(out):
        _builder(counter)(out)
        time.sleep(0.3)  # widen the window in which the others ask

    barrier.wait()
    queue.put(str(cached(root, "toy", SETTINGS, slow_build)))


def test_parallel_processes_build_only_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    n = 4
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    counter = tmp_path / "count"
    procs = [
        ctx.Process(target=_worker, args=(tmp_path / "cache", counter, barrier, queue))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    paths = [queue.get(timeout=30) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    assert len(set(paths)) == 1
    assert _builds(counter) == 1


def test_a_handed_over_load_is_taken_once_by_the_next_identical_call():
    from idistill.data.cache import handed_over

    loads = []

    @handed_over
    def load(name, size):
        loads.append(name)
        return [name] * size

    first = load("a", 2)  # the preflight's load ...
    assert load("a", 2) is first and loads == ["a"]  # ... is the recipe's
    assert load("a", 2) is not first and loads == ["a", "a"]  # any later call loads afresh
    load("b", 1)  # another load replaces the one kept
    assert load("a", 2) is not first and loads == ["a", "a", "b", "a"]
