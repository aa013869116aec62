"""SimpleTrainer (data, model, evaluation, model selection, results) and TrainerX (loop).

A method subclasses :class:`TrainerX` and implements ``build_model`` (calling
``register_model``) and ``forward_backward`` (calling ``model_backward_and_update``);
``model_inference`` must return logits over ``self.eval_class_ids`` during ``test``.
Work around the epoch loop (selection, metrics, checkpoints ...) is hooks
(:mod:`dassl_ext.engine.hooks`); a method adds its own by overriding ``build_hooks``.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections import OrderedDict
from typing import Any

import torch
from tqdm import tqdm

from dassl_ext.engine.hooks import HookBase, MetricsWriter, ModelSelection, PeriodicCheckpointer
from dassl_ext.engine.precision import resolve_precision
from dassl_ext.engine.run_folder import model_files
from dassl_ext.engine.trainer import TrainerBase
from dassl_ext.errors import UserError
from dassl_ext.utils.checkpoint import checkpoint_epochs
from dassl_ext.utils.distributed import get_local_rank, get_world_size, is_main_process
from dassl_ext.utils.tools import AverageMeter, MetricMeter

logger = logging.getLogger(__name__)

FINAL_MODELS = ("last_step", "best_val")


def _tqdm_off() -> bool | None:
    return None if is_main_process() else True  # None: tqdm shows bars on a terminal only


class SimpleTrainer(TrainerBase):
    """Trainer with one data manager, an evaluator, model selection and results.json."""

    prec_section: str | None = None  # cfg.TRAINER.<section>.PREC; None: TRAINER.NAME upper

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        cuda = cfg.USE_CUDA and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{get_local_rank()}" if cuda else "cpu")
        self.output_dir = cfg.OUTPUT_DIR
        self.prec = resolve_precision(self.precision_name(), self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.prec.use_scaler)
        self.grad_clip_norm = float(cfg.TRAIN.GRAD_CLIP_NORM)
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.grad_checkpointing = bool(cfg.MODEL.GRAD_CHECKPOINTING)
        self.eval_class_ids: torch.Tensor | None = None
        self._model_epoch: int | None = None  # epoch of the weights being tested

        self.build_data_loader()
        self.build_model()
        from dassl_ext.evaluation import build_evaluator

        self.evaluator = build_evaluator(cfg, lab2cname=self.dm.lab2cname)
        self.register_hooks(self.build_hooks())

    def precision_name(self) -> str:
        """``cfg.TRAINER.<SECTION>.PREC`` of this trainer, or fp32 if it has none."""
        section = self.prec_section or str(self.cfg.TRAINER.NAME).upper()
        node = self.cfg.TRAINER.get(section)
        return str(node.PREC) if node is not None and "PREC" in node else "fp32"

    # ------------------------------------------------------------------ building
    def build_data_loader(self) -> None:
        """Create the DataManager and expose its training loader and class information."""
        from dassl_ext.data import DataManager

        self.dm = dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.eval_loaders: dict[str, Any] = dict(dm.eval_loaders)
        self.num_classes, self.classnames = dm.num_classes, dm.classnames
        # Per class, the dataset's own prompt ("{}" for the name) or None; None if it has none.
        own = getattr(dm.dataset, "class_prompts", None) or {}
        prompts = [own.get(name) for name in self.classnames]
        self.class_prompts: list[str | None] | None = prompts if any(prompts) else None
        if is_main_process():
            dm.show_dataset_summary()

    def build_model(self) -> None:
        raise NotImplementedError("A trainer builds its model(s) and calls register_model().")

    def build_hooks(self) -> list[HookBase]:
        """The hooks run around each epoch (in the order of their priority)."""
        return [ModelSelection(), MetricsWriter(), PeriodicCheckpointer()]

    # ------------------------------------------------------------------ training
    def before_train(self) -> None:
        if self.cfg.RESUME:
            self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME)
        else:
            for name in self.get_model_names():
                if checkpoint_epochs(os.path.join(self.output_dir, name)):
                    raise UserError(
                        f"{self.output_dir} already holds checkpoints of {name}; pass "
                        f"--resume {self.output_dir} to continue, or choose another --output-dir."
                    )
        super().before_train()  # the hooks (after resuming: they see start_epoch)
        if is_main_process():
            self.storage.open_tensorboard(os.path.join(self.output_dir, "tensorboard"))
        self.time_start = time.time()
        self.restore_resumed_rng()  # last: nothing may draw random numbers after it

    def before_epoch(self) -> None:
        self.dm.set_epoch(self.epoch)
        super().before_epoch()

    def after_train(self) -> None:
        logger.info("Finish training")
        self._model_epoch = self.max_epoch
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
                self._model_epoch = self._loaded_epoch
            else:
                logger.info("Deploy the last-epoch model")
            self.test()
        elif is_main_process():  # the record that it trained to the end (--skip-finished)
            self.write_results({})
        super().after_train()  # the hooks
        elapsed = datetime.timedelta(seconds=round(time.time() - self.time_start))
        logger.info(f"Elapsed: {elapsed}")
        self.close_writer()

    # ------------------------------------------------------------------ evaluation
    def _split_loader(self, split: str) -> tuple[Any, list[int]]:
        """The loader of ``split`` and the class ids of its labels."""
        dataset = self.dm.dataset
        if split == "val" and self.dm.val_loader is not None:
            val = getattr(dataset, "val_split", None)
            return self.dm.val_loader, list(val.class_ids if val else range(self.num_classes))
        if split == "val":
            split = next(iter(self.eval_loaders))
            logger.warning(f"No val split: selecting on the *{split}* split instead")
        elif split not in self.eval_loaders:
            raise UserError(
                f"Unknown evaluation split {split!r}; use val or {', '.join(self.eval_loaders)}."
            )
        return self.eval_loaders[split], list(dataset.eval_splits[split].class_ids)

    @torch.no_grad()
    def evaluate_split(self, split: str) -> OrderedDict:
        """Run the model on one split and return the evaluator's metrics (gathered)."""
        loader, class_ids = self._split_loader(split)
        self.set_model_mode("eval")
        self.eval_class_ids = torch.as_tensor(class_ids, dtype=torch.long, device=self.device)
        lab2cname = {k: self.classnames[c] for k, c in enumerate(class_ids)}
        self.evaluator.reset(lab2cname)
        logger.info(f"Evaluate on the *{split}* set")
        try:
            for batch in tqdm(loader, desc=split, leave=False, disable=_tqdm_off()):
                input, label = self.parse_batch_test(batch)
                output = self.model_inference(input)
                self.evaluator.process(output, label, batch.get("impath"), batch.get("index"))
        except (MemoryError, RuntimeError) as e:  # a batch too large: name the key, not a trace
            from dassl_ext.evaluation.memory import evaluation_memory_error, is_out_of_memory

            if not is_out_of_memory(e):
                raise
            raise evaluation_memory_error(e, self.cfg, split) from None
        self.evaluator.sync()
        results = self.evaluator.evaluate(split=split)
        for k, v in results.items():
            self.storage.put_scalar(f"{split}/{k}", v, self.epoch)
        if self.cfg.TEST.SAVE_LOGITS and split != "val" and is_main_process():
            self.evaluator.save_logits(os.path.join(self.output_dir, f"logits_{split}.pt"))
        results["num_images"] = self.evaluator.num_samples
        return results

    def test(self, split: str | None = None) -> float:
        """Evaluate ``split`` (default TEST.SPLIT). "val" just returns its accuracy; a reported
        split, or "test" meaning all reported splits (e.g. base and new), also updates
        results.json. Returns the accuracy (of the first split evaluated)."""
        split = split or self.cfg.TEST.SPLIT
        if split == "val":
            return float(self.evaluate_split("val")["accuracy"])
        unnamed = split == "test" and split not in self.eval_loaders  # all reported splits
        splits = list(self.eval_loaders) if unnamed else [split]
        results = {name: self.evaluate_split(name) for name in splits}
        if is_main_process():
            self.write_results(results)
        return float(results[splits[0]]["accuracy"])

    def write_results(self, results: dict[str, dict]) -> None:
        """Merge the given split results into ``<output>/results.json``. Under TEST.NO_TEST the
        record says ``"no_test": true``; a run that trained without evaluation writes it with
        no splits (``{}``), so that ``--skip-finished`` knows it finished."""
        from dassl_ext.evaluation import config_hash, write_results

        cfg = self.cfg
        epoch = self._model_epoch if self._model_epoch is not None else self._loaded_epoch
        selection = None
        if self.best_epoch is not None and cfg.TEST.FINAL_MODEL == "best_val":
            selection = {"split": "val", "accuracy": self.best_result, "epoch": self.best_epoch}
        elif self._loaded_val_result is not None:
            selection = {"split": "val", "accuracy": self._loaded_val_result, "epoch": epoch}
        record = {
            "trainer": cfg.TRAINER.NAME,
            "dataset": cfg.DATASET.NAME,
            "seed": cfg.SEED,
            "protocol": getattr(self.dm.dataset, "protocol", cfg.DATASET.PROTOCOL),
            "eval_splits": cfg.DATASET.EVAL_SPLITS,
            "config_hash": config_hash(cfg),
            "backbone": cfg.MODEL.BACKBONE.NAME,
            "world_size": get_world_size(),  # processes of this run; global_batch over all
            "global_batch": self.dm.global_batch,
            "splits": {
                name: {
                    **{k: float(r[k]) for k in ("accuracy", "macro_f1", "error_rate")},
                    **{"num_images": int(r["num_images"]), "epoch": epoch},
                }
                for name, r in results.items()
            },
            "selection": selection,
            **({"no_test": True} if cfg.TEST.NO_TEST else {}),
            **self._evaluated_files(),
            **self.results_provenance(),
        }
        write_results(os.path.join(self.output_dir, "results.json"), record)

    def _evaluated_files(self) -> dict[str, list[str]]:
        """results.json's ``model_files``: the checkpoints whose weights gave the numbers
        (none: the weights trained in this process), so that an evaluation of another
        model is not taken for this one (run_folder)."""
        files = self._loaded_files
        return {"model_files": model_files(files, self.output_dir)} if files else {}

    def results_provenance(self) -> dict[str, Any]:
        """Hook: more top-level results.json keys saying what the numbers came from (e.g. a
        teacher file and its digest)."""
        return {}

    def parse_batch_test(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)


class TrainerX(SimpleTrainer):
    """Trainer on labelled data ``train_loader_x``: Dassl's epoch loop and log lines."""

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time, data_time = AverageMeter(), AverageMeter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        desc = f"epoch {self.epoch + 1}/{self.max_epoch}"
        bar = tqdm(self.train_loader_x, desc=desc, leave=False, disable=_tqdm_off())
        end = time.time()
        for self.batch_idx, batch in enumerate(bar):
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)

            meet_freq = (self.batch_idx + 1) % print_freq == 0
            if meet_freq or self.num_batches < print_freq:
                nb_remain = self.num_batches - self.batch_idx - 1
                nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = datetime.timedelta(seconds=int(batch_time.avg * nb_remain))
                logger.info(
                    f"epoch [{self.epoch + 1}/{self.max_epoch}] "
                    f"batch [{self.batch_idx + 1}/{self.num_batches}] "
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) "
                    f"data {data_time.val:.3f} ({data_time.avg:.3f}) "
                    f"{losses} lr {self.get_current_lr():.4e} eta {eta}"
                )
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():  # the last step's: the epoch's means
                self.storage.put_scalar("train/" + name, meter.avg, n_iter)
            self.storage.put_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    parse_batch_train = SimpleTrainer.parse_batch_test  # (images, labels) on the device
