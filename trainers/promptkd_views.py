"""Stored teacher views for PromptKD (``TRAINER.PROMPTKD.STORED_VIEWS`` K > 0).

The frozen teacher's image tower runs once per dataset instead of once per step of every
student run (FKD, ECCV 2022, does the same for image classification): for each training
image, K augmented views are drawn (:func:`dassl_ext.data.views.draw_views`: the crop box and
flip that ``INPUT.TRANSFORMS`` would draw) and the teacher's image embedding of each view
(its image tower's output before normalisation, ``FrozenTeacher.image_embedding``) is stored
with its parameters, in a bank (:class:`dassl_ext.utils.shard_store.ShardedStore`:
memory-mapped ``.npy`` shards, no pickle). The embedding is stored in the dtype the teacher
computes it in (fp16 / bf16 under autocast: 2 bytes a value, lossless; fp32 teachers: 4), not
normalised, since autocast normalises in fp32 on CUDA and the normalised features would take
4 bytes. A student run replays the stored parameters on the image (the exact same crop and
flip), normalises the stored embedding as the teacher does (``PromptKD.teacher_features``)
and gets its teacher logits ``exp(logit_scale) * features @ class text features.T``, exactly
those of the live teacher on that view. Each run visits the views in an order of its own
seed; epochs beyond K reuse views.

The bank is keyed by content (:func:`bank_key`): the teacher (its trainer and config section,
backbone, file digests, compute precision), the dataset's training image list, the replayed
transform's settings, K and ``VIEW_SEED``; not by the class names (features, not logits: one
bank serves base-to-new and cross-dataset students alike) nor by anything a student run
varies (seed, LR, KD weight, temperature, epochs). It is built by the first run that needs
it, sharded over the torchrun processes, or ahead of time by scripts/promptkd/teacher_views.sh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from filelock import FileLock, Timeout
from PIL import Image
from torch.utils.data import Dataset

from dassl_ext.data.data_manager import Loader, image_reader
from dassl_ext.data.images import too_large
from dassl_ext.data.splits import Datum
from dassl_ext.data.views import PARAMS_PER_VIEW, ReplayTransform, draw_views
from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import read_json_dict, write_json_atomic
from dassl_ext.utils.distributed import (
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
)
from dassl_ext.utils.shard_store import ArraySpec, ShardedArray, ShardedStore

logger = logging.getLogger(__name__)

# Part of the bank key: raise it when the way the views or features are computed changes.
VIEWS_VERSION = 2  # 2: the embedding before normalisation (1: normalised features)
SHARD_IMAGES = 512  # images per shard: K x 512 views, e.g. 15 MB at K = 20, E = 768, fp16
BUILD_BATCH = 64  # views per teacher forward while building
# the dtypes a teacher's embedding may come in (a build probes it and stores it as it comes:
# lossless), by name
STORED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TEACHER_FILE = "teacher.json"  # in the bank's folder: the teacher's logit scale (and the key)


@dataclass(frozen=True)
class ViewBank:
    """An opened bank: ``params`` (N, K, PARAMS_PER_VIEW) int32 and ``features`` (N, K, E)
    memory-mapped rows, the teacher's raw (log) logit scale, and what it was built from."""

    folder: str
    key: str
    k: int
    replay: ReplayTransform
    params: ShardedArray
    features: ShardedArray
    logit_scale: float

    def provenance(self) -> dict:
        """results.json's teacher block: which bank the teacher's outputs came from."""
        return {"stored_views": {"key": self.key, "folder": self.folder, "views": self.k}}


def views_dir(cfg, text_cache_dir: str) -> str:
    """``VIEW_CACHE_DIR``, else ``teacher_views`` beside the text-feature cache folder."""
    return cfg.TRAINER.PROMPTKD.VIEW_CACHE_DIR or os.path.join(
        os.path.dirname(os.path.abspath(text_cache_dir)), "teacher_views"
    )


def image_list_digest(data: list[Datum], root: str) -> str:
    """sha256 of the images' paths relative to ``root`` (DATASET.ROOT), in order: the bank's
    rows are these images (the same dataset under another root is the same bank)."""
    root = os.path.abspath(os.path.expanduser(root))
    h = hashlib.sha256()
    for item in data:
        h.update(os.path.relpath(os.path.abspath(item.impath), root).encode("utf-8", "replace"))
        h.update(b"\n")
    return h.hexdigest()


def bank_key(identity: dict, cfg, data: list[Datum], replay: ReplayTransform) -> tuple[str, dict]:
    """``(key, parts)``: everything the stored views depend on (``identity``: the teacher's,
    :attr:`TeacherSpec.identity`), hashed; no class names, no student settings."""
    pk = cfg.TRAINER.PROMPTKD
    parts = {
        "teacher": identity, "dataset": cfg.DATASET.NAME, "num_images": len(data),
        "images_sha256": image_list_digest(data, cfg.DATASET.ROOT),
        "transform": replay.settings(), "views": int(pk.STORED_VIEWS),
        "seed": int(pk.VIEW_SEED), "version": VIEWS_VERSION,
    }  # fmt: skip
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20], parts


def bank_arrays(k: int, width: int, dtype: str) -> list[ArraySpec]:
    """Per image: K views' parameters (int32) and teacher features (``dtype``: a STORED_DTYPES
    name)."""
    return [
        ArraySpec("params", (k, PARAMS_PER_VIEW), "int32"),
        ArraySpec("features", (k, width), dtype),
    ]


class _ShardViews(Dataset):
    """Images ``start..stop`` of ``data``: per image its K drawn views' parameters and the
    views themselves, replayed as a student run replays them."""

    def __init__(self, data, replay, reader, seed: int, k: int, start: int, stop: int) -> None:
        self.data, self.replay, self.reader = data, replay, reader
        self.seed, self.k, self.start, self.stop = seed, k, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.start + i
        path = self.data[index].impath
        try:
            img = self.reader(path)
        except Image.DecompressionBombError as e:
            raise too_large(path, e) from None
        try:
            # (width, height) of a PIL image or a (C, H, W) tensor
            size = (img.shape[-1], img.shape[-2]) if isinstance(img, torch.Tensor) else img.size
            params = draw_views(self.replay, *size, self.seed, index, self.k)
            views = torch.stack([self.replay.apply(img, p) for p in params])  # (K, 3, S, S)
        except UserError as e:
            raise UserError(f"Image {path}: {e}") from None
        return params, views


def view_features_compute(
    features: Callable[[torch.Tensor], torch.Tensor],
    cfg,
    data: list[Datum],
    replay: ReplayTransform,
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[int, int], dict[str, torch.Tensor]]:
    """``compute(start, stop)`` for :meth:`ShardedStore.build`: the views of those images
    and ``features(views)`` of each (the teacher's, as the live step computes them)."""
    pk = cfg.TRAINER.PROMPTKD
    k, seed, reader = int(pk.STORED_VIEWS), int(pk.VIEW_SEED), image_reader(cfg)
    workers = cfg.DATALOADER.NUM_WORKERS

    @torch.no_grad()
    def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
        shard = _ShardViews(data, replay, reader, seed, k, start, stop)
        loader = Loader(shard, batch_size=max(1, BUILD_BATCH // k), num_workers=workers)
        params, feats = [], []
        for p, views in loader:  # (b, K, 5), (b, K, 3, S, S)
            out = features(views.flatten(0, 1).to(device))  # (b K, E)
            out = out.to(dtype).cpu().unflatten(0, (p.shape[0], k))
            finite = torch.isfinite(out).flatten(1).all(1)
            if not finite.all():  # never stored: every student run would stop at a NaN loss
                bad = start + sum(len(f) for f in feats) + int((~finite).nonzero()[0])
                raise UserError(
                    f"The teacher's image features are NaN or infinite for image "
                    f"{data[bad].impath} (one of its stored views); build the stored views "
                    "with TRAINER.PROMPTKD.TEACHER_PREC fp32, or check the teacher's "
                    "checkpoint for NaN weights."
                )
            feats.append(out)
            params.append(p)
        return {"params": torch.cat(params), "features": torch.cat(feats)}

    return compute


def _read_logit_scale(folder: str, key: str) -> float | None:
    """The teacher's raw logit scale recorded beside the bank (TEACHER_FILE), or None."""
    record = read_json_dict(os.path.join(folder, TEACHER_FILE)) or {}
    scale = record.get("logit_scale")
    return scale if record.get("key") == key and isinstance(scale, float) else None


def prepare_bank(
    cfg,
    identity: dict,
    text_cache_dir: str,
    data: list[Datum],
    width: int,
    teacher: Callable[[], tuple[Callable[[torch.Tensor], torch.Tensor], float, torch.device]],
) -> ViewBank:
    """The bank of this configuration, opened; built first when it is not complete, with
    ``teacher()`` -> (features function, raw logit scale, device), called only then. Every
    process builds its shards, then rank 0 finishes the bank (a barrier on each side)."""
    k = int(cfg.TRAINER.PROMPTKD.STORED_VIEWS)
    replay = ReplayTransform.from_cfg(cfg)
    key, parts = bank_key(identity, cfg, data, replay)
    folder = os.path.join(views_dir(cfg, text_cache_dir), key)

    def store_of(dtype: str) -> ShardedStore:
        return ShardedStore(folder, len(data), bank_arrays(k, width, dtype), SHARD_IMAGES,
                            {"key": parts})  # fmt: skip

    with _build_lock(folder) if is_main_process() else contextlib.nullcontext():
        store = _complete_or_built(store_of, folder, key, k, width, replay, cfg, data, teacher)
    opened = store.open()
    logit_scale = _read_logit_scale(folder, key)
    if logit_scale is None:
        raise UserError(
            f"The stored teacher views in {folder} lack their {TEACHER_FILE} (the teacher's "
            "logit scale); delete the folder to build them again."
        )
    return ViewBank(folder, key, k, replay, opened["params"], opened["features"], logit_scale)


@contextlib.contextmanager
def _build_lock(folder: str) -> Iterator[None]:
    """Held by rank 0 while it decides whether the bank is complete and, if not, until it is
    built: runs started together (seeds with SEED_JOBS, a sweep) wait for one build instead of
    each building it. A folder where no lock can be made (read-only) is used without one."""
    try:
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        lock = FileLock(folder + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info(f"Another run is building the stored teacher views {folder}; waiting")
            lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _complete_or_built(store_of, folder, key, k, width, replay, cfg, data, teacher):
    """The complete store of the bank, built first (by every process) when it is not."""
    # the complete bank, whatever its features' dtype; one decision for all processes
    # (rank 0's): they all build, or none does
    done = None
    if _read_logit_scale(folder, key) is not None:
        done = next((d for d in STORED_DTYPES if store_of(d).is_complete()), None)
    done = broadcast_object(done)
    if done:
        return store_of(done)
    features, logit_scale, device = teacher()
    with torch.no_grad():  # the dtype its features come in: stored as they come
        probe = features(torch.zeros(1, 3, *replay.size, device=device))
    dtype = next((n for n, d in STORED_DTYPES.items() if d == probe.dtype), "float32")
    store = store_of(dtype)
    logger.info(
        f"Building the stored teacher views: {len(data):,} images x {k} views, teacher "
        f"features of width {width} in {dtype}"
    )
    if is_main_process():  # first: a resumed build has it (the key fixes the teacher)
        os.makedirs(folder, exist_ok=True)
        write_json_atomic(os.path.join(folder, TEACHER_FILE),
                          {"key": key, "logit_scale": logit_scale})  # fmt: skip
    compute = view_features_compute(features, cfg, data, replay, device, STORED_DTYPES[dtype])
    with torch.random.fork_rng(devices=[]):  # the run's random stream stays where it was
        store.build(compute, get_rank(), get_world_size(), progress="stored views")
    barrier()
    if is_main_process():
        store.finish()
    barrier()
    return store


def log_view_schedule(k: int, epochs: int, seed: int) -> None:
    """One line at the start: how a run of ``epochs`` visits K stored views."""
    if epochs > k:
        logger.info(
            f"Stored teacher views: {epochs} epochs over {k} views per image: every {k} epochs "
            f"visit each view once (order of seed {seed}); epochs beyond {k} reuse views"
        )
    else:
        logger.info(
            f"Stored teacher views: each of {epochs} epochs a different one of the {k} views "
            f"per image (order of seed {seed})"
        )
