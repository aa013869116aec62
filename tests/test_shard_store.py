"""dassl_ext.utils.shard_store: sharded, resumable, verified .npy arrays read memory-mapped."""

import errno
import json
import logging
import os
import pathlib
import pickle

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import FileWriteError
from dassl_ext.utils.shard_store import (
    MANIFEST,
    ArraySpec,
    ShardedArray,
    ShardedStore,
    human_bytes,
)

ARRAYS = [ArraySpec("params", (3, 5), "int32"), ArraySpec("features", (3, 4), "bfloat16")]


def rows(start: int, stop: int) -> dict:
    """Deterministic rows: what a teacher would compute for items start..stop-1."""
    g = torch.Generator().manual_seed(start)
    idx = torch.arange(start, stop, dtype=torch.int32)
    return {
        "params": idx.view(-1, 1, 1).expand(-1, 3, 5).clone(),
        "features": torch.randn(stop - start, 3, 4, generator=g),  # cast to bf16 on writing
    }


class Counting:
    """compute() that counts its calls and can fail after `fail_after` of them."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail_after = fail_after

    def __call__(self, start: int, stop: int) -> dict:
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt  # the build is killed
        self.calls.append((start, stop))
        return rows(start, stop)


def store(folder, n=10, shard_size=3, meta=None) -> ShardedStore:
    return ShardedStore(str(folder), n, ARRAYS, shard_size, meta or {"teacher": "abc"})


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


def test_two_ranks_write_what_one_writes(tmp_path):
    one = store(tmp_path / "one")
    assert one.shards() == [(0, 0, 3), (1, 3, 6), (2, 6, 9), (3, 9, 10)]
    assert one.build(Counting(), progress=None) == 10
    one.finish()
    two = store(tmp_path / "two")
    computed = [two.build(Counting(), rank=r, world_size=2, progress=None) for r in (0, 1)]
    assert computed == [6, 4]  # shards 0, 2 and 1, 3
    two.finish()
    assert files(tmp_path / "one") == files(tmp_path / "two")  # byte-identical, records too
    assert one.is_complete() and two.is_complete()
    names = set(files(tmp_path / "one"))
    assert {MANIFEST, "params-00003.npy", "features-00000.npy", "shard-00002.json"} <= names
    size = sum(os.path.getsize(tmp_path / "one" / n) for n in names if n.endswith(".npy"))
    assert one.estimate_bytes() == size


def test_open_reads_rows_in_their_dtype(tmp_path):
    s = store(tmp_path)
    s.build(rows, progress=None)
    s.finish()
    arrays = s.open()
    params, features = arrays["params"], arrays["features"]
    assert len(params) == 10 and params.shape == (10, 3, 5) and params.dtype == torch.int32
    assert torch.equal(params[7], torch.full((3, 5), 7, dtype=torch.int32))
    assert torch.equal(params[-1], params[9]) and params[4, 2].tolist() == [4] * 5
    want = rows(9, 10)["features"][0].to(torch.bfloat16)
    got = features[9]
    assert got.dtype == torch.bfloat16 and torch.equal(
        got.view(torch.int16), want.view(torch.int16)
    )
    assert torch.equal(features[9, 1], want[1])  # a part of a row
    with pytest.raises(IndexError):
        params[10]
    again = pickle.loads(pickle.dumps(params))
    assert isinstance(again, ShardedArray) and torch.equal(again[3], params[3])


def test_killed_build_resumes_without_recomputing(tmp_path):
    s = store(tmp_path)
    first = Counting(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        s.build(first, progress=None)
    assert first.calls == [(0, 3), (3, 6)] and not s.is_complete()
    with pytest.raises(UserError, match="shard 2 is not built .and 1 more"):
        s.finish()
    second = Counting()
    assert s.build(second, progress=None) == 4
    assert second.calls == [(6, 9), (9, 10)]  # the 2 finished shards were not recomputed
    s.finish()
    third = Counting()
    assert s.build(third, progress=None) == 0 and third.calls == []
    assert files(tmp_path) == files(_fresh(tmp_path.parent / "fresh"))


def _fresh(folder) -> pathlib.Path:
    s = store(folder)
    s.build(rows, progress=None)
    s.finish()
    return folder


def test_damaged_shards_are_named_and_rebuilt(tmp_path, caplog):
    s = store(tmp_path)
    s.build(rows, progress=None)
    s.finish()
    good = files(tmp_path)
    flipped = tmp_path / "features-00001.npy"  # same size and header: only sha256 finds it
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF
    flipped.write_bytes(bytes(data))
    (tmp_path / "params-00002.npy").write_bytes(b"\x93NUMPY")  # truncated
    (tmp_path / "shard-00003.json").unlink()  # record missing
    assert not s.is_complete()
    with pytest.raises(UserError, match="params-00002.npy is damaged") as e:
        s.open()
    assert "run again" in str(e.value)
    counting = Counting()
    with caplog.at_level(logging.WARNING, logger="dassl_ext.utils.shard_store"):
        assert s.build(counting, progress=None) == 7
    assert counting.calls == [(3, 6), (6, 9), (9, 10)]
    text = caplog.text
    assert "Shard 1 of" in text and "features-00001.npy does not match its sha256" in text
    assert "Shard 2 of" in text and "params-00002.npy" in text
    assert "Shard 3 of" in text and "its record shard-00003.json is missing" in text
    assert "Shard 0" not in text
    s.finish()
    assert files(tmp_path) == good


def test_open_refuses_an_incomplete_or_other_store(tmp_path):
    s = store(tmp_path)
    with pytest.raises(UserError, match="holds no complete store for these settings"):
        s.open()
    s.build(rows, progress=None)
    assert not s.is_complete()  # built, not finished
    with pytest.raises(UserError, match="build it first"):
        s.open()
    s.finish()
    assert s.is_complete()
    other = store(tmp_path, meta={"teacher": "another"})
    assert not other.is_complete()
    assert not store(tmp_path, shard_size=4).is_complete()


def test_start_and_progress_lines(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("dassl_ext.utils.shard_store.PROGRESS_SECONDS", 0.0)
    s = store(tmp_path)
    with caplog.at_level(logging.INFO, logger="dassl_ext.utils.shard_store"):
        s.build(rows, rank=1, world_size=2, progress="teacher views")
    lines = [r.getMessage() for r in caplog.records]
    size = human_bytes(s.estimate_bytes())
    assert lines[0].startswith(f"teacher views: about {size} in 4 shards at {tmp_path};")
    assert "2 shards (4 rows) left to compute (this process: rank 1 of 2)" in lines[0]
    assert lines[-1].startswith("teacher views: 4/4 rows (100%),") and "rows/s, ETA" in lines[-1]
    assert human_bytes(512) == "512 B" and human_bytes(3 * 2**30) == "3.0 GiB"


def test_a_full_disk_leaves_no_half_written_shard(tmp_path, monkeypatch):
    s = store(tmp_path)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(FileWriteError, match="params-00000.npy .No space left"):
        s.build(rows, progress=None)
    assert os.listdir(tmp_path) == []  # no shard file, no record, no temporary file
    monkeypatch.undo()
    assert s.build(rows, progress=None) == 10


def test_bad_compute_output_and_specs(tmp_path):
    with pytest.raises(ValueError, match="gave shape .2, 3, 5. for params"):
        store(tmp_path).build(lambda a, b: {**rows(a, b), "params": torch.zeros(2, 3, 5)})
    with pytest.raises(ValueError, match="dtype"):
        ArraySpec("x", (2,), "float64")
    with pytest.raises(ValueError, match="distinct"):
        ShardedStore(str(tmp_path), 3, ARRAYS + ARRAYS[:1], 2, {})
    empty = ShardedStore(str(tmp_path / "empty"), 0, ARRAYS, 2, {})
    assert empty.build(rows, progress=None) == 0
    empty.finish()
    assert len(empty.open()["params"]) == 0
    manifest = json.loads((tmp_path / "empty" / MANIFEST).read_text())
    assert manifest["n_items"] == 0 and manifest["shards"] == []


class Rows(Dataset):
    def __init__(self, array: ShardedArray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.array[i]


def test_sharded_array_in_dataloader_workers(tmp_path):
    s = store(tmp_path, n=12, shard_size=5)
    s.build(rows, progress=None)
    s.finish()
    features = s.open()["features"]
    features[0]  # a map opened here does not travel to the workers
    loader = DataLoader(Rows(features), batch_size=4, num_workers=2)
    got = torch.cat(list(loader))
    want = torch.cat([rows(a, b)["features"] for _, a, b in s.shards()]).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(
        got.view(torch.int16), want.view(torch.int16)
    )
