"""Config: Dassl defaults, merge order, _BASE_ inheritance, extensions, unknown keys."""

from types import SimpleNamespace

import pytest
import yaml
from yacs.config import CfgNode as CN

from dassl_ext.config import (
    get_cfg_default,
    load_yaml_with_base,
    merge_from_file,
    merge_from_list,
    register_config_extension,
    setup_cfg,
)
from dassl_ext.config import setup as config_setup
from dassl_ext.engine.run_folder import write_config
from dassl_ext.errors import UserError


def _yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_dassl_defaults_and_new_keys():
    cfg = get_cfg_default()
    assert cfg.OPTIM.NAME == "adam" and cfg.OPTIM.LR == 0.0003 and cfg.OPTIM.MAX_EPOCH == 10
    assert cfg.OPTIM.WARMUP_EPOCH == -1 and cfg.OPTIM.WARMUP_CONS_LR == 1e-5
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32 and cfg.DATALOADER.NUM_WORKERS == 4
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TRAIN.CHECKPOINT_FREQ == 0
    assert cfg.INPUT.RRCROP_SCALE == (0.08, 1.0) and cfg.SEED == -1
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all" and cfg.DATASET.NUM_SHOTS == -1
    assert cfg.MODEL.CLIP_ROOT == "" and cfg.DATASET.PROTOCOL == "paper"
    assert cfg.DATASET.EVAL_SPLITS == "standard" and cfg.TEST.SAVE_LOGITS is False
    assert cfg.TRAIN.GRAD_CLIP_NORM == 0.0 and cfg.USE_CUDA is True
    assert cfg.TRAINER.NAME == "" and "MODAL" not in cfg.TRAINER  # PromptKD's key (its test)


def test_merge_order_dataset_method_flags_opts(tmp_path):
    ds = _yaml(tmp_path / "ds.yaml", {"DATASET": {"NAME": "A", "ROOT": "r1"}, "OPTIM": {"LR": 1.0}})
    method = _yaml(tmp_path / "m.yaml", {"OPTIM": {"LR": 2.0, "MAX_EPOCH": 3}, "SEED": 5})
    args = SimpleNamespace(
        dataset_config_file=ds,
        config_file=method,
        root="r2",
        seed=0,
        output_dir="out",
        trainer="T",
        opts=["OPTIM.MAX_EPOCH", "7", "DATASET.NAME", "B"],
    )
    cfg = setup_cfg(args)
    assert cfg.OPTIM.LR == 2.0  # method yaml over dataset yaml
    assert cfg.DATASET.ROOT == "r2" and cfg.SEED == 0  # flags over yaml; seed 0 is honoured
    assert cfg.OPTIM.MAX_EPOCH == 7 and cfg.DATASET.NAME == "B"  # opts last
    assert cfg.TRAINER.NAME == "T" and cfg.OUTPUT_DIR == "out"
    assert cfg.is_frozen()


def test_base_inheritance_relative_and_nested(tmp_path):
    (tmp_path / "sub").mkdir()
    _yaml(tmp_path / "root.yaml", {"OPTIM": {"LR": 1.0, "MAX_EPOCH": 9}, "INPUT": {"SIZE": [8, 8]}})
    _yaml(tmp_path / "sub" / "mid.yaml", {"_BASE_": "../root.yaml", "OPTIM": {"LR": 2.0}})
    leaf = _yaml(tmp_path / "sub" / "leaf.yaml", {"_BASE_": "mid.yaml", "SEED": 3})
    assert load_yaml_with_base(leaf) == {
        "OPTIM": {"LR": 2.0, "MAX_EPOCH": 9},
        "INPUT": {"SIZE": [8, 8]},
        "SEED": 3,
    }
    cfg = setup_cfg(SimpleNamespace(config_file=leaf))
    assert cfg.OPTIM.LR == 2.0 and cfg.OPTIM.MAX_EPOCH == 9 and cfg.INPUT.SIZE == (8, 8)


def test_base_cycle_and_missing_file(tmp_path):
    a = _yaml(tmp_path / "a.yaml", {"_BASE_": "b.yaml"})
    _yaml(tmp_path / "b.yaml", {"_BASE_": "a.yaml"})
    with pytest.raises(UserError, match="inherits from itself"):
        load_yaml_with_base(a)
    with pytest.raises(UserError, match="does not exist"):
        setup_cfg(SimpleNamespace(config_file=str(tmp_path / "nope.yaml")))


def test_unknown_keys_name_the_key(tmp_path):
    bad = _yaml(tmp_path / "bad.yaml", {"OPTIM": {"LRR": 0.1}})
    with pytest.raises(UserError, match=r"OPTIM\.LRR.*bad\.yaml.*did you mean OPTIM\.LR"):
        setup_cfg(SimpleNamespace(config_file=bad))
    with pytest.raises(UserError, match=r"TRAINER\.NO_SUCH_METHOD"):
        setup_cfg(SimpleNamespace(opts=["TRAINER.NO_SUCH_METHOD.N_CTX", "4"]))
    with pytest.raises(UserError, match="KEY VALUE pairs"):
        setup_cfg(SimpleNamespace(opts=["OPTIM.LR"]))
    with pytest.raises(UserError, match="OPTIM.MAX_EPOCH"):
        setup_cfg(SimpleNamespace(opts=["OPTIM.MAX_EPOCH", "'ten'"]))


def test_register_config_extension(tmp_path, monkeypatch):
    monkeypatch.setattr(config_setup, "_EXTENSIONS", list(config_setup._EXTENSIONS))

    @register_config_extension
    def add_tiny(cfg):
        cfg.TRAINER.TINY = CN()
        cfg.TRAINER.TINY.PREC = "fp16"  # the trainer's own section

    register_config_extension(add_tiny)  # re-registration (module re-import) is harmless
    y = _yaml(tmp_path / "t.yaml", {"TRAINER": {"TINY": {"PREC": "bf16"}}})
    cfg = setup_cfg(SimpleNamespace(config_file=y))
    assert cfg.TRAINER.TINY.PREC == "bf16"
    assert sum(f.__name__ == "add_tiny" for f in config_setup._EXTENSIONS) == 1


def test_write_config_round_trip(tmp_path):
    cfg = setup_cfg(SimpleNamespace(opts=["OPTIM.LR", "0.5"]))
    path = write_config(cfg, str(tmp_path / "out"))
    with open(path) as f:
        assert CN.load_cfg(f).OPTIM.LR == 0.5


def test_retired_keys_are_accepted_ignored_and_hashed_as_before(tmp_path):
    """Dassl keys nothing read (DATALOADER.TRAIN_U ...) left the defaults: a run's older
    config.yaml that holds them still merges and compares equal, and the config hash of the
    defaults is the one from before the removal."""
    from dassl_ext.config.compare import config_differences
    from dassl_ext.evaluation import config_hash

    cfg = get_cfg_default()
    assert "TRAIN_U" not in cfg.DATALOADER and "HEAD" not in cfg.MODEL
    older = yaml.safe_load(cfg.dump())
    older["DATALOADER"]["TRAIN_U"] = {"SAME_AS_X": True, "BATCH_SIZE": 32}
    older["MODEL"]["HEAD"] = {"NAME": "", "DROPOUT": 0.0}
    older["VERSION"] = 1
    assert merge_from_file(get_cfg_default(), _yaml(tmp_path / "config.yaml", older)) == cfg
    assert merge_from_list(get_cfg_default(), ["DATALOADER.TRAIN_U.BATCH_SIZE", "64"]) == cfg
    assert config_differences(older, cfg) == []
    assert config_hash(cfg) == "cf76ab172f85"  # with the retired keys, before their removal
    with pytest.raises(UserError, match="Unknown config key DATALOADER.TRAIN_Z"):
        merge_from_list(get_cfg_default(), ["DATALOADER.TRAIN_Z.BATCH_SIZE", "64"])


def test_ints_widen_to_float_keys_but_not_the_reverse(tmp_path):
    """Official files and scripts write ``KD_WEIGHT 1000`` / ``LR: 1`` for float keys."""
    method = _yaml(tmp_path / "m.yaml", {"OPTIM": {"LR": 1, "MAX_EPOCH": 3}})
    args = SimpleNamespace(config_file=method, opts=["OPTIM.WARMUP_CONS_LR", "0"])
    cfg = setup_cfg(args)
    assert cfg.OPTIM.LR == 1.0 and isinstance(cfg.OPTIM.LR, float)
    assert cfg.OPTIM.WARMUP_CONS_LR == 0.0 and isinstance(cfg.OPTIM.WARMUP_CONS_LR, float)
    with pytest.raises(UserError, match="OPTIM.MAX_EPOCH"):
        setup_cfg(SimpleNamespace(opts=["OPTIM.MAX_EPOCH", "2.5"]))
    bad = _yaml(tmp_path / "bad.yaml", {"OPTIM": {"MAX_EPOCH": 2.5}})
    with pytest.raises(UserError, match="bad.yaml"):
        setup_cfg(SimpleNamespace(config_file=bad))


def test_duplicated_key_names_the_file_the_key_and_both_lines(tmp_path):
    """yaml keeps the last of two equal keys: the first OPTIM block was silently dropped."""
    (tmp_path / "base.yaml").write_text("OPTIM:\n  LR: 0.1\n\nOPTIM:\n  MAX_EPOCH: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nTRAINER:\n  COOP:\n    N_CTX: 4\n    N_CTX: 16\n")
    with pytest.raises(UserError) as e:
        setup_cfg(SimpleNamespace(config_file=str(tmp_path / "base.yaml")))
    assert str(e.value) == (
        f"Config file {tmp_path / 'base.yaml'} sets OPTIM twice, on lines 1 and 4 (yaml would "
        "silently keep only the second); keep one of them."
    )
    (tmp_path / "base.yaml").write_text("OPTIM:\n  LR: 0.1\n")
    with pytest.raises(
        UserError, match=r"child\.yaml sets TRAINER\.COOP\.N_CTX twice, on lines 4 and 5"
    ):
        setup_cfg(SimpleNamespace(config_file=str(child)))


def test_negative_seed_other_than_minus_one_is_refused(tmp_path):
    """``--seed -3`` used to mean "no fixed seed" and results.json said -1."""
    with pytest.raises(UserError, match=r"^--seed -3 is not a seed; use -1 \(no fixed seed"):
        setup_cfg(SimpleNamespace(seed=-3))
    assert setup_cfg(SimpleNamespace(seed=-1)).SEED == -1
    assert setup_cfg(SimpleNamespace(seed=7)).SEED == 7


def test_keys_added_later_keep_hashes_and_resume(tmp_path):
    """A section added after runs were recorded (ImageFolder's) changes neither the config
    hash of a run that leaves it at its defaults nor its --resume comparison; set to
    something else, it counts."""
    import datasets  # noqa: F401  (registers ImageFolder's section)
    from dassl_ext.config import apply_config_extensions
    from dassl_ext.config.compare import config_differences
    from dassl_ext.evaluation import config_hash

    cfg = apply_config_extensions(get_cfg_default())
    older = yaml.safe_load(cfg.dump())
    del older["DATASET"]["IMAGE_FOLDER"]
    assert config_differences(older, cfg) == []
    without = cfg.clone()
    del without.DATASET["IMAGE_FOLDER"]
    assert config_hash(cfg) == config_hash(without)
    cfg.DATASET.IMAGE_FOLDER.TRAIN_DIR = "photos"
    assert config_hash(cfg) != config_hash(without)
    assert [k for k, *_ in config_differences(older, cfg)] == ["DATASET.IMAGE_FOLDER.TRAIN_DIR"]
