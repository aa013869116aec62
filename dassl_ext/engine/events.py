"""Where the trainer and its hooks share the values of a run (as detectron2's ``EventStorage``).

The trainer puts what it measures: the running loss means and the LR of each step
(``train/<loss>``, ``train/lr``) and each evaluation's metrics (``<split>/accuracy`` ...).
Hooks read them back with :meth:`EventStorage.latest` or :meth:`EventStorage.epoch_scalars`
instead of trainer attributes; on rank 0 every value also goes to tensorboard.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class EventStorage:
    """The latest value of each named scalar, with the epoch (0-based, set by the trainer)
    it was put in; while a tensorboard writer is open, ``put_scalar`` also writes it."""

    def __init__(self) -> None:
        self.epoch = 0
        self._latest: dict[str, tuple[float, int]] = {}
        self._writer = None

    def put_scalar(self, name: str, value: float, step: int | None = None) -> None:
        value = float(value)
        self._latest[name] = (value, self.epoch)
        if self._writer is not None:
            self._writer.add_scalar(name, value, step)

    def latest(self) -> dict[str, tuple[float, int]]:
        """``name -> (value, epoch)`` of the last value put under each name."""
        return dict(self._latest)

    def epoch_scalars(self, prefix: str = "") -> dict[str, float]:
        """The last values put during the current epoch under names starting with
        ``prefix`` (removed from the names), in the order the names first appeared."""
        return {
            name[len(prefix) :]: value
            for name, (value, epoch) in self._latest.items()
            if epoch == self.epoch and name.startswith(prefix)
        }

    def open_tensorboard(self, log_dir: str) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            logger.info(f"Initialize tensorboard (log_dir={log_dir})")
            self._writer = SummaryWriter(log_dir=log_dir)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
