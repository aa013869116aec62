"""Classification evaluator with Dassl's metrics and log lines (spec §5.4)."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from dassl_ext.config.rules import OneOf, register_config_rules
from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import write_torch_atomic
from dassl_ext.utils.distributed import all_gather_object, is_distributed, is_main_process

logger = logging.getLogger(__name__)


class Classification:
    """Accumulates predictions batch by batch; ``evaluate()`` returns Dassl's metrics,
    OrderedDict(accuracy, error_rate, macro_f1[, perclass_accuracy]), all in percent. Labels
    are the split's own (local) labels; ``lab2cname`` maps them to class names for the
    per-class lines and can be swapped per split in ``reset``."""

    def __init__(self, cfg: Any, lab2cname: dict[int, str] | None = None) -> None:
        self.per_class = cfg.TEST.PER_CLASS_RESULT
        self.compute_cmat = cfg.TEST.COMPUTE_CMAT
        # Logits are kept only when asked for: N x C floats can be large (ImageNet).
        self.keep_logits = cfg.TEST.SAVE_LOGITS
        self.output_dir = cfg.OUTPUT_DIR or "."
        self.lab2cname = lab2cname
        self.reset()

    def reset(self, lab2cname: dict[int, str] | None = None) -> None:
        """Forget accumulated predictions; optionally set the label -> name map."""
        if lab2cname is not None:
            self.lab2cname = lab2cname
        self._y_true: list[int] = []
        self._y_pred: list[int] = []
        self._impaths: list[str] = []
        self._indices: list[int] = []
        self._logits: list[torch.Tensor] = []
        self._non_finite = 0  # images whose logits hold NaN or inf
        self._first_non_finite: str | None = None

    def process(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        impaths: list[str] | None = None,
        indices: torch.Tensor | list[int] | None = None,
    ) -> None:
        """Add one batch: ``logits`` (B, C), ``labels`` (B,); ``indices`` = dataset order."""
        pred = logits.max(1)[1]
        bad = ~torch.isfinite(logits.detach()).all(dim=1)
        if bad.any():  # argmax of NaN is an arbitrary class: an accuracy from it is meaningless
            self._non_finite += int(bad.sum())
            if self._first_non_finite is None and impaths is not None:
                self._first_non_finite = str(impaths[int(bad.nonzero()[0])])
        self._y_true.extend(int(v) for v in labels.detach().cpu().tolist())
        self._y_pred.extend(int(v) for v in pred.detach().cpu().tolist())
        if impaths is not None:
            self._impaths.extend(str(p) for p in impaths)
        if indices is not None:
            idx = indices.tolist() if isinstance(indices, torch.Tensor) else indices
            self._indices.extend(int(i) for i in idx)
        if self.keep_logits:
            self._logits.append(logits.detach().float().cpu())

    @property
    def num_samples(self) -> int:
        return len(self._y_true)

    def sync(self) -> None:
        """Gather every rank's predictions (no-op without an initialised process group). With
        ``indices`` given to ``process``, the result is in dataset order and samples seen
        twice (padding samplers) are counted once; otherwise ranks are concatenated."""
        if not is_distributed():
            return
        logits = torch.cat(self._logits) if self._logits else None
        mine = (self._y_true, self._y_pred, self._impaths, self._indices, logits,
                self._non_finite, self._first_non_finite)  # fmt: skip
        parts: list[Any] = all_gather_object(mine)
        self._non_finite = sum(p[5] for p in parts)  # every rank raises alike in evaluate
        self._first_non_finite = next((p[6] for p in parts if p[6]), None)
        y_true, y_pred, impaths, indices = ([v for p in parts for v in p[i]] for i in range(4))
        logit_parts = [p[4] for p in parts if p[4] is not None]
        order = list(range(len(y_true)))
        if indices and len(indices) == len(y_true):
            first: dict[int, int] = {}
            for pos, i in enumerate(indices):
                first.setdefault(i, pos)
            order = [first[i] for i in sorted(first)]
        self._y_true = [y_true[k] for k in order]
        self._y_pred = [y_pred[k] for k in order]
        self._impaths = [impaths[k] for k in order] if len(impaths) == len(y_true) else impaths
        self._indices = [indices[k] for k in order] if indices else []
        self._logits = [torch.cat(logit_parts)[order]] if logit_parts else []

    def evaluate(self, split: str | None = None) -> OrderedDict:
        """Compute and log the metrics; the confusion matrix goes to ``cmat[_<split>].pt``."""
        total = len(self._y_true)
        if total == 0:
            raise UserError(
                "The evaluator received no images: the evaluated split is empty; "
                "check the dataset's split file and DATASET.SUBSAMPLE_CLASSES."
            )
        if self._non_finite:
            first = f", e.g. {self._first_non_finite}" if self._first_non_finite else ""
            raise UserError(
                f"The model's outputs are NaN or infinite for {self._non_finite} of {total} "
                f"images of the {split or 'evaluated'} split{first}, so their predictions (and "
                "the accuracy) would be meaningless; evaluate in fp32 (the trainer's PREC key, "
                "e.g. TRAINER.PROMPTKD.PREC fp32) or check the checkpoint for NaN weights."
            )
        y_true, y_pred = np.asarray(self._y_true), np.asarray(self._y_pred)
        correct = int((y_true == y_pred).sum())
        acc, err = 100.0 * correct / total, 100.0 - 100.0 * correct / total
        from sklearn.metrics import f1_score  # 0.9 s to import: only processes that evaluate

        macro_f1 = 100.0 * f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true))
        results: OrderedDict = OrderedDict(accuracy=acc, error_rate=err, macro_f1=float(macro_f1))
        for line in ("=> result", f"* total: {total:,}", f"* correct: {correct:,}",
                     f"* accuracy: {acc:.1f}%", f"* error: {err:.1f}%",
                     f"* macro_f1: {macro_f1:.1f}%"):  # fmt: skip
            logger.info(line)

        if self.per_class:
            logger.info("=> per-class result")
            accs = []
            for label in np.unique(y_true).tolist():
                mask = y_true == label
                n, c = int(mask.sum()), int((y_pred[mask] == label).sum())
                accs.append(100.0 * c / n)
                logger.info(
                    f"* class: {label} ({(self.lab2cname or {}).get(label, label)})\t"
                    f"total: {n:,}\tcorrect: {c:,}\tacc: {accs[-1]:.1f}%"
                )
            results["perclass_accuracy"] = float(np.mean(accs))
            logger.info(f"* average: {results['perclass_accuracy']:.1f}%")

        if self.compute_cmat and is_main_process():
            from sklearn.metrics import confusion_matrix

            cmat = confusion_matrix(y_true, y_pred, normalize="true")
            path = os.path.join(self.output_dir, "cmat.pt" if split is None else f"cmat_{split}.pt")
            write_torch_atomic(path, torch.from_numpy(cmat))
            logger.info(f"Confusion matrix is saved to {path}")
        return results

    def save_logits(self, path: str) -> None:
        """Write {"logits": (N, C) float32, "labels", "impaths"[, "classnames"]} to ``path``
        (loadable with ``torch.load(path, weights_only=True)``)."""
        if not self.keep_logits:
            raise RuntimeError(
                "save_logits needs TEST.SAVE_LOGITS True when the evaluator is built."
            )
        logits = torch.cat(self._logits) if self._logits else torch.zeros(0, 0)
        obj: dict[str, Any] = {
            "logits": logits,
            "labels": torch.tensor(self._y_true, dtype=torch.long),
            "impaths": list(self._impaths),
        }
        if self.lab2cname and all(k in self.lab2cname for k in range(logits.shape[1])):
            obj["classnames"] = [str(self.lab2cname[k]) for k in range(logits.shape[1])]
        write_torch_atomic(path, obj)


_EVALUATOR = OneOf("TEST.EVALUATOR", ("Classification",))
register_config_rules(_EVALUATOR)


def build_evaluator(cfg: Any, lab2cname: dict[int, str] | None = None) -> Classification:
    """The evaluator named by ``TEST.EVALUATOR`` (checked here too: trainers built without
    ``validate_config`` must not get Classification for another name silently)."""
    _EVALUATOR.check(cfg.TEST.EVALUATOR)
    return Classification(cfg, lab2cname=lab2cname)
