"""Build the stored teacher views (``TRAINER.PROMPTKD.STORED_VIEWS`` K > 0) of a PromptKD
student configuration ahead of time, and its teacher text features: the arguments of the
student's ``train.py`` run (``--output-dir`` only places the caches: beside it, as for a run
there; nothing is written into it). Under torchrun every process builds its shards.

    python scripts/promptkd/build_teacher_views.py --root DATA --trainer PromptKD \
        --dataset-config-file ... --config-file ... --output-dir OUT/seed1 \
        TRAINER.PROMPTKD.STORED_VIEWS 20 ...

Used by scripts/promptkd/teacher_views.sh. Prints the bank's folder.
"""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import train  # noqa: E402
from dassl_ext.config import setup_cfg, validate_config  # noqa: E402
from dassl_ext.engine import build_trainer  # noqa: E402
from dassl_ext.engine.faults import as_user_error  # noqa: E402
from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.utils import set_random_seed, setup_logger  # noqa: E402
from dassl_ext.utils.distributed import (  # noqa: E402
    destroy_distributed,
    init_distributed_from_env,
    is_main_process,
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = train.parse_args(argv)
    trainer = None
    try:
        train.check_argv_text(argv)
        train.import_plugins()
        cfg = setup_cfg(args)
        if cfg.TRAINER.NAME != "PromptKD":
            raise UserError(f"--trainer is {cfg.TRAINER.NAME or 'empty'}; use PromptKD.")
        if cfg.TRAINER.PROMPTKD.STORED_VIEWS < 1:
            raise UserError(
                "TRAINER.PROMPTKD.STORED_VIEWS is 0 (no stored views); set it to the number of "
                "views per image the students use (e.g. their OPTIM.MAX_EPOCH)."
            )
        validate_config(cfg, will_train=True)
        init_distributed_from_env(use_cuda=cfg.USE_CUDA, timeout_s=cfg.DIST.TIMEOUT)
        setup_logger()
        if cfg.SEED >= 0:
            set_random_seed(cfg.SEED)
        trainer = build_trainer(cfg)  # the student's: resolves the teacher, its text features
        bank = trainer.use_stored_views()
        if is_main_process():
            print(f"Stored teacher views: {bank.folder}", flush=True)
    except Exception as e:  # bad input or a fault: one line; a programming error: raised
        error = as_user_error(e, trainer)
        if error is None:
            raise
        print(f"Error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
