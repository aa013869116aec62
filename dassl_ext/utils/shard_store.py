"""Arrays of many rows, computed in shards by several processes, read back memory-mapped.

A :class:`ShardedStore` is a folder: per array and shard one ``<name>-<shard:05d>.npy``
file, per finished shard a small JSON record (``shard-<shard:05d>.json``: the files' sizes
and sha256), and ``manifest.json`` once every shard exists and was verified. Each process
(torchrun rank, host) computes the shards ``s % world_size == rank``; a killed build resumes
where it stopped (a shard with a valid record is never recomputed; a damaged one is named
and recomputed). :meth:`ShardedStore.open` gives :class:`ShardedArray` views of the rows.

Why numpy ``.npy`` files, memory-mapped:

- safe to load: a fixed header and the raw bytes, read with ``allow_pickle=False`` (nothing
  is unpickled, so a store from anywhere runs no code);
- random row access: ``np.load(mmap_mode="r")`` maps a file, so a DataLoader worker reads
  the rows it needs (and the OS page cache shares them between workers and runs), never a
  whole file;
- numpy is installed with torch: no new dependency.

bfloat16 has no numpy dtype: it is stored as its raw uint16 bits and viewed back as
bfloat16 by torch (bit for bit).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import operator
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import read_json_dict, write_bytes_atomic, write_json_atomic
from dassl_ext.utils.digest import sha256_of

logger = logging.getLogger(__name__)

FORMAT = "dassl_ext.shard_store/1"
MANIFEST = "manifest.json"
# name -> (numpy dtype on disk, torch dtype in memory)
DTYPES = {
    "float16": (np.dtype(np.float16), torch.float16),
    "bfloat16": (np.dtype(np.uint16), torch.bfloat16),  # the raw bits
    "float32": (np.dtype(np.float32), torch.float32),
    "int32": (np.dtype(np.int32), torch.int32),
    "int64": (np.dtype(np.int64), torch.int64),
}
PROGRESS_SECONDS = 5.0  # between two progress lines of a build
MAX_OPEN_MAPS = 64  # per ShardedArray and process: memory maps hold a file descriptor each
_MISSING = "not built"


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store: ``item_shape`` per row, stored as ``dtype`` (a DTYPES key)."""

    name: str
    item_shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"array name {self.name!r}: use letters, digits and _")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        object.__setattr__(self, "item_shape", tuple(int(d) for d in self.item_shape))


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: '512 B', '1.5 KiB', '39.1 GiB'."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def _header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy header ``np.save`` writes for an array of ``shape`` and ``dtype``."""
    buf = io.BytesIO()
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, d)
    return buf.getvalue()


def _header_problem(path: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why the .npy file ``path`` is not an array of ``shape`` and ``dtype`` with all its
    bytes (from its header and size), or None."""
    try:
        with open(path, "rb") as f:
            if np.lib.format.read_magic(f) == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            else:
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except FileNotFoundError:
        return f"{os.path.basename(path)} is missing"
    except (OSError, ValueError) as e:
        return f"{os.path.basename(path)} has no readable .npy header ({e})"
    if got_shape != shape or got_dtype != dtype or fortran:
        return f"{os.path.basename(path)} holds {got_dtype} {got_shape}, expected {dtype} {shape}"
    size, want = os.path.getsize(path), offset + math.prod(shape) * dtype.itemsize
    if size != want:
        return f"{os.path.basename(path)} has {size} bytes, expected {want}"
    return None


class _Progress:
    """Log lines ``label: done/total rows (x%), r rows/s, ETA h:mm:ss`` every
    PROGRESS_SECONDS (and at the end)."""

    def __init__(self, label: str | None, total: int) -> None:
        self.label, self.total = label, total
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.label is None or (now - self.last < PROGRESS_SECONDS and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        h, rest = divmod(round(eta), 3600)
        logger.info(
            f"{self.label}: {done:,}/{self.total:,} rows ({100 * done / max(self.total, 1):.0f}%)"
            f", {rate:,.1f} rows/s, ETA {h}:{rest // 60:02d}:{rest % 60:02d}"
        )


class ShardedStore:
    """Arrays of ``n_items`` rows in shards of ``shard_size`` rows (the layout: module docstring).

    ``meta`` (JSON-able) describes what the rows were computed from; a store whose manifest
    holds other settings is not complete for this one. Multi-process: decide on one rank
    whether :meth:`is_complete` (and share the answer), let each rank :meth:`build`, then
    after a barrier rank 0 calls :meth:`finish`."""

    def __init__(
        self, folder: str, n_items: int, arrays: list[ArraySpec], shard_size: int, meta: dict
    ) -> None:
        if n_items < 0 or shard_size < 1:
            raise ValueError(f"n_items {n_items} and shard_size {shard_size}: need >= 0 and >= 1")
        names = [a.name for a in arrays]
        if not arrays or len(set(names)) != len(names):
            raise ValueError(f"arrays {names}: need at least one, with distinct names")
        self.folder, self.n_items, self.shard_size = folder, int(n_items), int(shard_size)
        self.arrays = list(arrays)
        spec = {
            "format": FORMAT,
            "n_items": self.n_items,
            "shard_size": self.shard_size,
            "arrays": [asdict(a) for a in arrays],
            "meta": meta,
        }
        self.spec = json.loads(json.dumps(spec))  # as it reads back from JSON
        text = json.dumps(self.spec, sort_keys=True).encode()
        self.spec_digest = hashlib.sha256(text).hexdigest()

    # ---------------------------------------------------------------- layout
    def file(self, name: str, shard: int) -> str:
        return os.path.join(self.folder, f"{name}-{shard:05d}.npy")

    def record_file(self, shard: int) -> str:
        return os.path.join(self.folder, f"shard-{shard:05d}.json")

    def shards(self) -> list[tuple[int, int, int]]:
        """``(shard_id, start, stop)`` of every shard."""
        n, size = self.n_items, self.shard_size
        return [(s, s * size, min(n, (s + 1) * size)) for s in range(math.ceil(n / size))]

    def estimate_bytes(self) -> int:
        """The size of the finished store on disk (shard files; records and manifest not
        counted)."""
        total = 0
        for a in self.arrays:
            np_dtype = DTYPES[a.dtype][0]
            for _, start, stop in self.shards():
                shape = self._shape(a, start, stop)
                total += len(_header(shape, np_dtype)) + math.prod(shape) * np_dtype.itemsize
        return total

    def _shape(self, a: ArraySpec, start: int, stop: int) -> tuple[int, ...]:
        return (stop - start, *a.item_shape)

    # ---------------------------------------------------------------- checks
    def _problem(self, shard: int, start: int, stop: int, full: bool) -> str | None:
        """Why shard ``shard`` is not finished (``_MISSING``: nothing of it exists), or None;
        ``full``: also compare each file's sha256 with its record."""
        record = read_json_dict(self.record_file(shard))
        paths = {a.name: self.file(a.name, shard) for a in self.arrays}
        if record is None:
            if not any(os.path.exists(p) for p in paths.values()):
                return _MISSING
            return f"its record {os.path.basename(self.record_file(shard))} is missing"
        expected = {"spec": self.spec_digest, "shard": shard, "start": start, "stop": stop}
        if any(record.get(k) != v for k, v in expected.items()):
            return "its record is unreadable or was written for other settings"
        files = record.get("files")
        for a in self.arrays:
            entry = files.get(a.name) if isinstance(files, dict) else None
            if not isinstance(entry, dict):
                return f"its record has no entry for {os.path.basename(paths[a.name])}"
            why = self._file_problem(a, shard, start, stop, entry, "its record")
            if why:
                return why
            if full and sha256_of(paths[a.name]) != entry.get("sha256"):
                return f"{os.path.basename(paths[a.name])} does not match its sha256"
        return None

    def _manifest(self) -> dict | None:
        """The manifest if it holds this store's settings and every shard, else None."""
        manifest = read_json_dict(os.path.join(self.folder, MANIFEST)) or {}
        if any(manifest.get(k) != v for k, v in self.spec.items()):
            return None
        shards = manifest.get("shards", [])
        listed = [(s.get("shard"), s.get("start"), s.get("stop")) for s in shards]
        return manifest if listed == self.shards() else None

    def _file_problems(self, manifest: dict) -> list[tuple[str, str]]:
        """``(path, why)`` of shard files whose header or size is not what the manifest says."""
        problems = []
        for s, entry in zip(self.shards(), manifest["shards"]):
            for a in self.arrays:
                info = entry.get("files", {}).get(a.name, {})
                if why := self._file_problem(a, *s, info, "the manifest"):
                    problems.append((self.file(a.name, s[0]), why))
        return problems

    def _file_problem(
        self, a: ArraySpec, shard: int, start: int, stop: int, entry: dict, source: str
    ) -> str | None:
        """Why array ``a``'s file of ``shard`` does not have its header, or the size that
        ``entry`` (of ``source``: a record or the manifest) lists, or None."""
        path = self.file(a.name, shard)
        why = _header_problem(path, self._shape(a, start, stop), DTYPES[a.dtype][0])
        if why is None and os.path.getsize(path) != entry.get("bytes"):
            why = f"{os.path.basename(path)} differs in size from {source}"
        return why

    def is_complete(self) -> bool:
        """manifest.json present and agreeing with this store's settings, and every shard file
        there with the header and size it lists (no full read)."""
        manifest = self._manifest()
        return manifest is not None and not self._file_problems(manifest)

    # ---------------------------------------------------------------- writing
    def build(
        self,
        compute: Callable[[int, int], Mapping[str, torch.Tensor]],
        rank: int = 0,
        world_size: int = 1,
        progress: str | None = "views",
    ) -> int:
        """Compute and write this rank's unfinished shards (``s % world_size == rank``):
        ``compute(start, stop)`` gives ``{name: tensor (stop - start, *item_shape)}`` (cast to
        the array's dtype). A finished shard (record, files of the recorded size and sha256)
        is never recomputed; a damaged one is named in a warning and recomputed. Files are
        written atomically, the record last (a full disk: FileWriteError, nothing
        half-written); a shard is held in memory twice while it is written. ``progress``:
        the label of the start line and progress lines (None: silent). Returns the number
        of rows computed."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world_size {world_size}")
        mine = [s for s in self.shards() if s[0] % world_size == rank]
        todo = []
        for shard in mine:
            why = self._problem(*shard, full=True)
            if why not in (None, _MISSING):
                logger.warning(
                    f"Shard {shard[0]} of {self.folder} is damaged ({why}); rebuilding it."
                )
            if why is not None:
                todo.append(shard)
        rows = sum(stop - start for _, start, stop in todo)
        if progress is not None:
            share = f" (this process: rank {rank} of {world_size})" if world_size > 1 else ""
            logger.info(
                f"{progress}: about {human_bytes(self.estimate_bytes())} in "
                f"{len(self.shards())} shards at {self.folder}; {len(todo)} shards "
                f"({rows:,} rows) left to compute{share}."
            )
        if not todo:
            return 0
        os.makedirs(self.folder, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # incomplete until finish() verifies it
            os.remove(os.path.join(self.folder, MANIFEST))
        meter, done = _Progress(progress, rows), 0
        for shard, start, stop in todo:
            self._write_shard(shard, start, stop, compute(start, stop))
            done += stop - start
            meter.update(done)
        return done

    def _write_shard(self, shard: int, start: int, stop: int, out: Mapping) -> None:
        files = {}
        for a in self.arrays:
            shape = self._shape(a, start, stop)
            value = out.get(a.name) if isinstance(out, Mapping) else None
            if value is None or tuple(value.shape) != shape:
                got = "nothing" if value is None else f"shape {tuple(value.shape)}"
                raise ValueError(f"compute({start}, {stop}) gave {got} for {a.name}, not {shape}")
            t = torch.as_tensor(value).detach().to("cpu", DTYPES[a.dtype][1]).contiguous()
            bits = a.dtype == "bfloat16"  # numpy has no bfloat16: its raw bits
            arr = t.view(torch.int16).numpy().view(np.uint16) if bits else t.numpy()
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            data = buf.getvalue()
            write_bytes_atomic(self.file(a.name, shard), data)
            files[a.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        record = {"format": FORMAT, "spec": self.spec_digest, "shard": shard}
        record.update(start=start, stop=stop, files=files)
        write_json_atomic(self.record_file(shard), record)

    def finish(self) -> None:
        """Verify every shard (record, header, size: the sha256 was taken from the bytes as
        they were written, and a resumed build checks it) and write manifest.json atomically
        (rank 0, after every rank's build); a missing or damaged shard is a UserError naming it
        (a new build recomputes it)."""
        problems = [(s, why) for s in self.shards() if (why := self._problem(*s, full=False))]
        if problems:
            (s, why), more = problems[0], len(problems) - 1
            state = why if why == _MISSING else f"damaged ({why})"
            raise UserError(
                f"Cannot finish {self.folder}: shard {s[0]} is {state}"
                + (f" (and {more} more shards are not finished)" if more else "")
                + "; run the build again: it computes only the missing and damaged shards."
            )
        shards = []
        for shard, start, stop in self.shards():
            record = read_json_dict(self.record_file(shard)) or {}
            shards.append({"shard": shard, "start": start, "stop": stop, "files": record["files"]})
        write_json_atomic(os.path.join(self.folder, MANIFEST), {**self.spec, "shards": shards})

    # ---------------------------------------------------------------- reading
    def open(self) -> dict[str, ShardedArray]:
        """``{name: ShardedArray}`` of a complete store; UserError if it is not complete or a
        shard file is damaged (checks header and size of each file; no full read)."""
        manifest = self._manifest()
        if manifest is None:
            raise UserError(
                f"{self.folder} holds no complete store for these settings ({MANIFEST} is "
                "missing or was written for other settings); build it first."
            )
        problems = self._file_problems(manifest)
        if problems:
            path, why = problems[0]
            raise UserError(
                f"Stored array file {path} is damaged ({why}); run again: the store counts as "
                "incomplete now, and its build recomputes only the damaged shards."
            )
        starts = [start for _, start, _ in self.shards()]
        paths = {a.name: [self.file(a.name, s) for s, _, _ in self.shards()] for a in self.arrays}
        return {a.name: ShardedArray(paths[a.name], starts, self.n_items, a) for a in self.arrays}


class ShardedArray:
    """Read-only, memory-mapped rows across the shards: shape, dtype (torch dtype),
    __len__, __getitem__(i) -> torch.Tensor of one row (a copy, in the stored dtype; bf16 as bf16);
    picklable (reopens its maps lazily in each DataLoader worker).

    ``a[i, j, ...]`` reads only that part of row ``i``. At most MAX_OPEN_MAPS shard files
    are mapped at once (the least recently used is closed)."""

    def __init__(self, paths: list[str], starts: list[int], n_items: int, spec: ArraySpec) -> None:
        self.paths, self.starts = list(paths), np.asarray(starts, dtype=np.int64)
        self.shape = (int(n_items), *spec.item_shape)
        self.stored_dtype = spec.dtype
        self.dtype = DTYPES[spec.dtype][1]
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        shards = len(self.paths)
        return f"ShardedArray(shape={self.shape}, dtype={self.stored_dtype}, shards={shards})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": OrderedDict()}  # maps do not cross processes

    def _map(self, shard: int) -> np.ndarray:
        m = self._maps.get(shard)
        if m is None:
            m = np.load(self.paths[shard], mmap_mode="r", allow_pickle=False)
            self._maps[shard] = m
            if len(self._maps) > MAX_OPEN_MAPS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(shard)
        return m

    def __getitem__(self, key) -> torch.Tensor:
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        i = operator.index(key)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {key} of {n}")
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        row = np.array(self._map(shard)[(i - int(self.starts[shard]), *rest)])  # a copy
        if self.stored_dtype == "bfloat16":
            out = torch.from_numpy(row.view(np.int16)).view(torch.bfloat16)
        else:
            out = torch.from_numpy(row)
        if out.is_floating_point() and not torch.isfinite(out).all():
            # the build stored finite values only: the bytes changed after it (a sha256 would
            # tell, but opening a bank reads no shard in full)
            raise UserError(
                f"Stored array file {self.paths[shard]} holds NaN or infinite values in row "
                f"{i}: it changed after it was written; delete that file and run again (the "
                "build recomputes only its shard)."
            )
        return out
