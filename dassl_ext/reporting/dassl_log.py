"""Read the result of a run made with Dassl / the official code from its ``log.txt``.

Dassl logs ``** Arguments **``, ``** Config **``, then ``* accuracy: X%`` after every
evaluation. Runs the ``Reference`` names as logging base and new in one log (official
PromptKD, ``TRAINER.MODAL base2novel``): base = the best per-epoch accuracy on the base
test split (before ``Finish training``), new = the accuracy after it. Any other run: the
last accuracy, of the split ``DATASET.SUBSAMPLE_CLASSES`` names; the aggregator joins the
two logs of Dassl's base-to-new scripts by trainer, config file, dataset and seed.
"""

from __future__ import annotations

import os
import re

from dassl_ext.reporting.reference import Reference

ACC_RE = re.compile(r"\* accuracy: ([0-9.]+)%")
CFG_RE = re.compile(r"^( *)([A-Z][A-Z0-9_]*):(?: (.*))?$")
ARG_RE = re.compile(r"^([a-z_]+): ?(.*)$")
FINISH_MARKERS = ("Finish training", "Deploy the model with the best val performance")


def _blocks(lines: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(arguments, flattened config) from Dassl's two banners; empty when absent."""
    args: dict[str, str] = {}
    cfg: dict[str, str] = {}
    mode = ""
    stack: list[tuple[int, str]] = []
    for line in lines:
        text = line.rstrip("\n")
        if "** Arguments **" in text:
            mode = "args"
            continue
        if "** Config **" in text:
            mode = "cfg"
            continue
        if not text.strip() or set(text.strip()) == {"*"}:
            continue
        if mode == "args":
            m = ARG_RE.match(text)
            if m:
                args[m.group(1)] = m.group(2).strip()
        elif mode == "cfg":
            m = CFG_RE.match(text)
            if not m:
                if text[:1].isspace():
                    continue  # continuation of a multi-line value
                break  # the config block is over ("Collecting env info ...")
            indent, key, value = len(m.group(1)), m.group(2), m.group(3)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            if value is None:
                stack.append((indent, key))
            else:
                cfg[".".join([k for _, k in stack] + [key])] = value.strip()
    return args, cfg


def _from_path(path: str, dataset_dirs: dict[str, str]) -> tuple[str, int | None]:
    """Dataset and seed from an official output path (``.../<dataset>/.../seed<N>/``)."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    dataset = next((dataset_dirs[p] for p in parts if p in dataset_dirs), "")
    seeds = [int(m.group(1)) for p in parts if (m := re.fullmatch(r"seed(\d+)", p))]
    return dataset, (seeds[-1] if seeds else None)


def parse_dassl_log(path: str, reference: Reference | None = None) -> dict | None:
    """A results.json-like record for one Dassl log (``config_hash``: the config file's name,
    plus shots), or None when it holds no result."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    args, cfg = _blocks(lines)
    before: list[float] = []
    after: list[float] = []
    finished = False
    for line in lines:
        if any(m in line for m in FINISH_MARKERS):
            finished = True
        m = ACC_RE.search(line)
        if m:
            (after if finished else before).append(float(m.group(1)))
    if not before and not after:
        return None

    reference = reference or Reference()
    path_dataset, path_seed = _from_path(path, reference.dataset_dirs)
    trainer = cfg.get("TRAINER.NAME") or args.get("trainer", "")
    dataset = cfg.get("DATASET.NAME") or path_dataset
    seed_text = cfg.get("SEED") or args.get("seed", "")
    seed = int(seed_text) if re.fullmatch(r"-?\d+", seed_text or "") else path_seed
    subsample = cfg.get("DATASET.SUBSAMPLE_CLASSES", "all")

    if reference.logs_base_and_new({**cfg, "TRAINER.NAME": trainer}):
        if not after or not before:
            return None  # training did not finish: no new-class result yet
        splits = {"base": max(before), "new": after[-1]}
    else:
        final = after[-1] if after else before[-1]
        name = {"base": "base", "new": "new"}.get(subsample, "test")
        splits = {name: final}

    config_file = os.path.splitext(os.path.basename(args.get("config_file", "")))[0]
    shots = cfg.get("DATASET.NUM_SHOTS", "")
    label = config_file or "official"
    if shots and shots not in ("-1", "0"):
        label += f"/{shots}shots"
    return {
        "trainer": trainer or "unknown",
        "dataset": dataset or "unknown",
        "seed": seed,
        "protocol": "official",
        "eval_splits": "base_new" if set(splits) <= {"base", "new"} else "standard",
        "backbone": cfg.get("MODEL.BACKBONE.NAME", ""),
        "config_hash": label,
        "splits": {k: {"accuracy": v} for k, v in splits.items()},
    }
