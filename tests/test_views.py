"""dassl_ext.data.views: replayed train views equal torchvision's own, seeded per view."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from dataset_fixtures import WRITERS, make_cfg
from PIL import Image
from torchvision.transforms import v2

import datasets  # noqa: F401  (registers the readers)
from dassl_ext.config import get_cfg_default
from dassl_ext.data import DataManager, Datum, build_transform
from dassl_ext.data.data_manager import image_reader
from dassl_ext.data.samplers import GlobalBatchSampler
from dassl_ext.data.views import (
    PARAMS_PER_VIEW,
    REPLAYABLE_TRANSFORMS,
    ReplayTransform,
    StoredViewDataset,
    ViewBatchSampler,
    draw_views,
    stored_view_loader,
    view_for_epoch,
    view_generator,
    views_for_epoch,
)
from dassl_ext.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINES = [
    (("random_resized_crop", "random_flip", "normalize"), "bilinear"),
    (("random_crop", "random_flip", "normalize"), "bilinear"),
    (("random_crop", "random_resized_crop", "center_crop", "random_flip", "normalize"), "bicubic"),
    (("center_crop", "random_flip"), "nearest"),
    (("random_flip",), "bicubic"),
]


def _cfg(transforms, interpolation="bilinear", backend="pil", size=(12, 10)):
    cfg = get_cfg_default()
    cfg.INPUT.TRANSFORMS = tuple(transforms)
    cfg.INPUT.INTERPOLATION = interpolation
    cfg.INPUT.BACKEND = backend
    cfg.INPUT.SIZE = size
    cfg.INPUT.RRCROP_SCALE = (0.3, 1.0)
    return cfg


@pytest.fixture
def images(tmp_path):
    """Three PNG images of different shapes (exact pixels for both backends)."""
    paths = []
    for i, (h, w) in enumerate([(20, 27), (31, 14), (12, 10)]):
        rgb = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(rgb).save(paths[-1])
    return paths


def _size(img) -> tuple[int, int]:
    return img.size if isinstance(img, Image.Image) else (img.shape[-1], img.shape[-2])


@pytest.fixture
def v1_draws_in_v2(monkeypatch):
    """v2's RandomCrop / RandomResizedCrop draw as v1's get_params do (the flip draws alike):
    then a seeded v2 pipeline makes the draws of a seeded v1 pipeline."""

    def random_crop(self, flat_inputs):
        pad = self.padding or [0, 0, 0, 0]  # v2 keeps (left, right, top, bottom)
        height, width = v2.query_size(flat_inputs)
        padded = torch.empty(3, height + pad[2] + pad[3], width + pad[0] + pad[1])
        top, left, h, w = T.RandomCrop.get_params(padded, self.size)
        return {
            "needs_crop": True, "top": top, "left": left, "height": h, "width": w,
            "needs_pad": any(pad), "padding": [pad[0], pad[2], pad[1], pad[3]],
        }  # fmt: skip

    def resized_crop(self, flat_inputs):
        height, width = v2.query_size(flat_inputs)
        box = T.RandomResizedCrop.get_params(torch.empty(3, height, width), self.scale, self.ratio)
        return dict(zip(("top", "left", "height", "width"), box))

    monkeypatch.setattr(v2.RandomCrop, "make_params", random_crop)
    monkeypatch.setattr(v2.RandomResizedCrop, "make_params", resized_crop)


@pytest.mark.parametrize("backend", ["pil", "tensor"])
@pytest.mark.parametrize("transforms,interpolation", PIPELINES)
def test_apply_of_draw_is_torchvisions_train_transform(
    images, backend, transforms, interpolation, v1_draws_in_v2
):
    """Seeded alike, torchvision's train transform (its random draws from the global RNG)
    and apply(draw(generator)) give the same tensor, bit for bit."""
    cfg = _cfg(transforms, interpolation, backend)
    replay, tfm, read = ReplayTransform.from_cfg(cfg), build_transform(cfg), image_reader(cfg)
    flips = set()
    for path in images:
        img = read(path)
        for seed in range(6):
            torch.manual_seed(seed)
            want = tfm(img)
            params = replay.draw(*_size(img), torch.Generator().manual_seed(seed))
            got = replay.apply(img, params)
            assert got.dtype == torch.float32 and got.shape == (3, 12, 10)
            assert torch.equal(got, want), (path, seed, params)
            flips.add(int(params[4]))
    assert flips == {0, 1}  # both branches of the flip were compared


def test_draw_forced_into_torchvision(images, monkeypatch):
    """The other way round: torchvision's draws forced to ours (get_params, the flip)."""
    cfg = _cfg(("random_resized_crop", "random_flip", "normalize"))
    replay, tfm = ReplayTransform.from_cfg(cfg), build_transform(cfg)
    img = Image.open(images[0]).convert("RGB")
    for seed in range(4):
        params = replay.draw(27, 20, view_generator(seed, 0, 0)).tolist()
        box, coin = tuple(params[:4]), torch.tensor([0.0 if params[4] else 0.9])
        monkeypatch.setattr(T.RandomResizedCrop, "get_params", lambda *a, box=box: box)
        monkeypatch.setattr(torch, "rand", lambda *a, coin=coin, **k: coin)
        want = tfm(img)
        monkeypatch.undo()
        assert torch.equal(replay.apply(img, params), want)


def test_unreplayable_transforms_are_refused():
    for name in ("colorjitter", "cutout", "gaussian_noise", "random_translation"):
        with pytest.raises(UserError, match=f"'{name}'") as e:
            ReplayTransform.from_cfg(_cfg(("random_flip", name)))
        assert "stored views replay only" in str(e.value).lower()
        assert "PROMPTKD" not in str(e.value)
    cfg = _cfg(("random_flip",))
    cfg.INPUT.NO_TRANSFORM = True
    with pytest.raises(UserError, match="INPUT.NO_TRANSFORM"):
        ReplayTransform.from_cfg(cfg)
    assert set(REPLAYABLE_TRANSFORMS) >= set(PIPELINES[2][0])


def test_settings_and_bad_params():
    a = ReplayTransform.from_cfg(_cfg(("random_flip", "random_resized_crop")))
    b = ReplayTransform.from_cfg(_cfg(("random_resized_crop", "random_flip")))
    assert a.settings() == b.settings()  # the order of INPUT.TRANSFORMS does not matter
    assert a.settings() != ReplayTransform.from_cfg(_cfg(("random_resized_crop",))).settings()
    img = Image.new("RGB", (10, 8))
    with pytest.raises(UserError, match="do not fit an image of 10x8"):
        a.apply(img, [2, 3, 8, 4, 0])
    with pytest.raises(UserError, match="smaller than the random_crop size"):
        crop = ReplayTransform.from_cfg(_cfg(("random_crop",), size=(40, 40)))
        crop.draw(10, 8, torch.Generator())


def test_draw_views_depend_on_seed_index_view_only():
    replay = ReplayTransform.from_cfg(_cfg(("random_resized_crop", "random_flip")))
    forward = [draw_views(replay, 27, 20, 7, i, 4) for i in range(5)]
    torch.manual_seed(123)  # the global RNG plays no part
    backward = [draw_views(replay, 27, 20, 7, i, 4) for i in reversed(range(5))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert forward[0].shape == (4, PARAMS_PER_VIEW) and forward[0].dtype == torch.int32
    assert len({tuple(v.tolist()) for p in forward for v in p}) > 15  # views differ
    assert not torch.equal(draw_views(replay, 27, 20, 8, 0, 4), forward[0])  # another seed
    code = (
        "from dassl_ext.data.views import ReplayTransform, draw_views\n"
        "r = ReplayTransform(('random_resized_crop', 'random_flip'), (12, 10), scale=(0.3, 1))\n"
        "print(draw_views(r, 27, 20, 7, 3, 4).tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(forward[3].tolist())  # a fresh process draws the same


def test_view_for_epoch_visits_every_view_once_per_cycle():
    k = 4
    for seed in (0, 1):
        for index in range(20):
            seen = [view_for_epoch(seed, e, index, k) for e in range(3 * k)]
            cycles = [seen[c * k : (c + 1) * k] for c in range(3)]
            assert all(sorted(c) == list(range(k)) for c in cycles)
    orders = {
        s: [[view_for_epoch(s, e, i, k) for e in range(k)] for i in range(20)] for s in (0, 1)
    }
    assert orders[0] != orders[1]  # another seed, another order
    cycle0 = [[view_for_epoch(0, e, i, k) for e in range(k)] for i in range(20)]
    cycle1 = [[view_for_epoch(0, e, i, k) for e in range(k, 2 * k)] for i in range(20)]
    assert cycle0 != cycle1  # each cycle its own order
    assert {tuple(o) for o in cycle0} != {tuple(cycle0[0])}  # and each image its own
    batch = views_for_epoch(3, 5, [4, 0, 9], k).tolist()
    assert batch == [view_for_epoch(3, 5, i, k) for i in (4, 0, 9)]
    assert [view_for_epoch(9, e, 2, 1) for e in range(3)] == [0, 0, 0]
    assert [view_for_epoch(0, e, 0, 4) for e in range(8)] == [2, 1, 0, 3, 1, 3, 2, 0]  # pinned


def test_view_batch_sampler_follows_set_epoch():
    g = torch.Generator().manual_seed(0)
    base = GlobalBatchSampler(10, 4, generator=g, drop_last=True)
    sampler = ViewBatchSampler(base, k=3, seed=5)
    assert len(sampler) == len(base) == 2

    def epoch(e):
        g.manual_seed(e)
        sampler.set_epoch(e)
        return list(sampler)

    first = epoch(0)
    g.manual_seed(0)
    assert [[i for i, _ in b] for b in first] == list(base)  # the same indices, in order
    assert all(v == view_for_epoch(5, 0, i, 3) for b in first for i, v in b)
    assert epoch(1) != first and epoch(0) == first


def test_stored_view_dataset_items(images):
    cfg = _cfg(("random_resized_crop", "random_flip", "normalize"))
    replay, read = ReplayTransform.from_cfg(cfg), image_reader(cfg)
    data = [Datum(p, label=i, domain=0, classname=str(i)) for i, p in enumerate(images)]
    sizes = [_size(read(p)) for p in images]
    params = torch.stack([draw_views(replay, w, h, 1, i, 2) for i, (w, h) in enumerate(sizes)])
    features = torch.randn(len(images), 2, 6).to(torch.bfloat16)
    ds = StoredViewDataset(data, replay, read, params, features)
    item = ds[(1, 1)]
    assert item["index"] == 1 and item["view"] == 1 and item["label"] == 1
    assert item["impath"] == images[1] and item["domain"] == 0
    assert torch.equal(item["img"], replay.apply(read(images[1]), params[1, 1]))
    assert item["view_features"].dtype == torch.bfloat16
    assert torch.equal(item["view_features"], features[1, 1])
    lists = StoredViewDataset(data, replay, read, params.tolist())  # any [index][view] works
    assert "view_features" not in lists[(0, 0)] and torch.equal(lists[(1, 1)]["img"], item["img"])
    again = pickle.loads(pickle.dumps(ds))  # as DataLoader workers get it
    assert torch.equal(again[(1, 1)]["img"], item["img"])
    bad = params.clone()
    bad[2, 0, :4] = torch.tensor([0, 0, 50, 50])
    with pytest.raises(UserError, match=f"Image {images[2]}: Stored view parameters"):
        StoredViewDataset(data, replay, read, bad)[(2, 0)]


def test_stored_view_loader_replaces_the_train_loader(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    cfg = make_cfg(
        tmp_path, "DescribableTextures", "SEED", 3, "DATALOADER.NUM_WORKERS", 0,
        "DATALOADER.TRAIN_X.BATCH_SIZE", 4, "INPUT.SIZE", "(8, 8)",
        "INPUT.TRANSFORMS", "('random_resized_crop', 'random_flip', 'normalize')",
    )  # fmt: skip
    dm = DataManager(cfg)
    replay = ReplayTransform.from_cfg(cfg)
    data = dm.dataset.train_x
    params = torch.stack([draw_views(replay, 16, 16, 0, i, 3) for i in range(len(data))])
    features = torch.arange(len(data) * 3 * 2, dtype=torch.float16).view(len(data), 3, 2)
    dm.set_epoch(2)
    plain = [b["index"].tolist() for b in dm.train_loader_x]
    loader = stored_view_loader(dm, replay, params, features, k=3)
    dm.train_loader_x = loader
    dm.set_epoch(2)
    assert loader.batch_sampler.epoch == 2  # DataManager.set_epoch reached it
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == plain  # the same order of images
    for b in batches:
        assert b["img"].shape == (len(b["index"]), 3, 8, 8)
        want = [view_for_epoch(dm.seed, 2, i, 3) for i in b["index"].tolist()]
        assert b["view"].tolist() == want
        assert torch.equal(b["view_features"], features[b["index"], b["view"]])
    assert stored_view_loader(dm, replay, params, None, 3).batch_sampler.batch_sampler is (
        loader.batch_sampler.batch_sampler
    )  # built from a stored-view loader: the same index sampler
    with pytest.raises(UserError, match="hold 3 views of 14 images"):
        stored_view_loader(dm, replay, params[:-1], None, 3)
