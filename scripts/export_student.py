"""Export a trained PromptKD student to ONE deployable file (see scripts/predict.py).

    python scripts/export_student.py RUN_DIR [-o student.pt] [--load-epoch N] [KEY VALUE ...]

RUN_DIR is a PromptKD output folder (config.yaml + VLPromptLearner/). The student is
loaded by the trainer itself (model-best.pth.tar, else the newest epoch), so the class
text features come from the checkpoint, or else from the teacher cache / the teacher.
Trailing KEY VALUE pairs override the saved config (e.g. DATASET.ROOT /new/data).
The file holds the student encoder, prompts, projector, class text features, class
names and preprocessing, and loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dassl_ext.config.setup import (  # noqa: E402
    apply_config_extensions,
    get_cfg_default,
    merge_from_file,
    merge_from_list,
)
from dassl_ext.engine import build_trainer  # noqa: E402
from dassl_ext.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="PromptKD output folder (holds config.yaml)")
    p.add_argument("-o", "--output", default="", help="file to write (RUN_DIR/student.pt)")
    p.add_argument("--load-epoch", type=int, help="model.pth.tar-<N> instead of the best file")
    args, opts = p.parse_known_args(argv)  # the rest: KEY VALUE config overrides
    import datasets  # noqa: F401  (registers the datasets)
    import trainers  # noqa: F401  (registers the trainers and their config sections)
    from trainers.promptkd_export import export_student

    try:
        cfg = apply_config_extensions(get_cfg_default())
        merge_from_file(cfg, os.path.join(args.run_dir, "config.yaml"))
        merge_from_list(cfg, opts)
        if cfg.TRAINER.NAME != "PromptKD":
            raise UserError(f"{args.run_dir} is a {cfg.TRAINER.NAME} run, not a PromptKD one.")
        cfg.freeze()
        trainer = build_trainer(cfg)
        trainer.load_model(args.run_dir, epoch=args.load_epoch)
        path = export_student(trainer, args.output or os.path.join(args.run_dir, "student.pt"))
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {path} ({len(trainer.classnames)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
