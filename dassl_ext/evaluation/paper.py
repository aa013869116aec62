"""Published base-to-new numbers: PromptKD (CVPR 2024) Table 1b, ViT-B/16, 3 seeds.

Source: ../shared/reference/paper-numbers.md §1b (the paper's image, identical to the
authors' Chinese translation). Values are (base, new, HM) in %, HM as printed (two
printed HMs, StanfordCars and UCF101 of PromptKD, differ from HM(base, new)).
Keys are our registered trainer and dataset names.
"""

from __future__ import annotations

DATASETS = (
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "OxfordFlowers",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DescribableTextures",
    "EuroSAT",
    "UCF101",
)

# One tuple per method, in DATASETS order.
_TABLE_1B = {
    "ZeroshotCLIP": (
        (72.43, 68.14, 70.22), (96.84, 94.00, 95.40), (91.17, 97.26, 94.12),
        (63.37, 74.89, 68.65), (72.08, 77.80, 74.83), (90.10, 91.22, 90.66),
        (27.19, 36.29, 31.09), (69.36, 75.35, 72.23), (53.24, 59.90, 56.37),
        (56.48, 64.05, 60.03), (70.53, 77.50, 73.85),
    ),
    "CoOp": (
        (76.47, 67.88, 71.92), (98.00, 89.81, 93.73), (93.67, 95.29, 94.47),
        (78.12, 60.40, 68.13), (97.60, 59.67, 74.06), (88.33, 82.26, 85.19),
        (40.44, 22.30, 28.75), (80.60, 65.89, 72.51), (79.44, 41.18, 54.24),
        (92.19, 54.74, 68.69), (84.69, 56.05, 67.46),
    ),
    "CoCoOp": (
        (75.98, 70.43, 73.10), (97.96, 93.81, 95.84), (95.20, 97.69, 96.43),
        (70.49, 73.59, 72.01), (94.87, 71.75, 81.71), (90.70, 91.29, 90.99),
        (33.41, 23.71, 27.74), (79.74, 76.86, 78.27), (77.01, 56.00, 64.85),
        (87.49, 60.04, 71.21), (82.33, 73.45, 77.64),
    ),
    "MaPLe": (
        (76.66, 70.54, 73.47), (97.74, 94.36, 96.02), (95.43, 97.76, 96.58),
        (72.94, 74.00, 73.47), (95.92, 72.46, 82.56), (90.71, 92.05, 91.38),
        (37.44, 35.61, 36.50), (80.82, 78.70, 79.75), (80.36, 59.18, 68.16),
        (94.07, 73.23, 82.35), (83.00, 78.66, 80.77),
    ),
    "PromptSRC": (
        (77.60, 70.73, 74.01), (98.10, 94.03, 96.02), (95.33, 97.30, 96.30),
        (78.27, 74.97, 76.58), (98.07, 76.50, 85.95), (90.67, 91.53, 91.10),
        (42.73, 37.87, 40.15), (82.67, 78.47, 80.52), (83.37, 62.97, 71.75),
        (92.90, 73.90, 82.32), (87.10, 78.80, 82.74),
    ),
    "PromptKD": (
        (80.83, 74.66, 77.62), (98.91, 96.65, 97.77), (96.30, 98.01, 97.15),
        (82.80, 83.37, 83.13), (99.42, 82.62, 90.24), (92.43, 93.68, 93.05),
        (49.12, 41.81, 45.17), (83.69, 81.54, 82.60), (85.84, 71.37, 77.94),
        (97.54, 82.08, 89.14), (89.71, 82.27, 86.10),
    ),
}  # fmt: skip

PAPER_BASE2NEW: dict[str, dict[str, tuple[float, float, float]]] = {
    method: dict(zip(DATASETS, rows)) for method, rows in _TABLE_1B.items()
}

# The paper's 11-dataset "Average" rows (HM of the averaged base and new).
PAPER_AVERAGE: dict[str, tuple[float, float, float]] = {
    "ZeroshotCLIP": (69.34, 74.22, 71.70),
    "CoOp": (82.69, 63.22, 71.66),
    "CoCoOp": (80.47, 71.69, 75.83),
    "MaPLe": (82.28, 75.14, 78.55),
    "PromptSRC": (84.26, 76.10, 79.97),
    "PromptKD": (86.96, 80.73, 83.73),
}


def paper_numbers(trainer: str) -> tuple[str, dict[str, tuple[float, float, float]]]:
    """(method, per-dataset numbers): the trainer's own row if published, else PromptKD's."""
    method = trainer if trainer in PAPER_BASE2NEW else "PromptKD"
    return method, PAPER_BASE2NEW[method]
