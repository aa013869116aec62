"""Classify images with an exported PromptKD student (no teacher, no other weight files).

    python scripts/predict.py -m student.pt [--topk 5] [--device cpu] [--json] FILE_OR_FOLDER...

Folders are searched recursively for images (sorted). Prints the top-k classes with their
probabilities for each image, or one JSON list with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_images(inputs: list[str]) -> list[str]:
    """Image files named or found (recursively, sorted) under the given folders."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs.sort()
                paths += [
                    os.path.join(root, f)
                    for f in sorted(files)
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                ]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item} is neither an image file nor a folder.")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_FOLDER")
    p.add_argument("-m", "--model", required=True, help="file from scripts/export_student.py")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON list")
    args = p.parse_args(argv)
    from dassl_ext.errors import UserError
    from trainers.promptkd_export import ExportedStudent

    try:
        paths = list_images(args.inputs)
        student = ExportedStudent(args.model, args.device)
    except (FileNotFoundError, ValueError, UserError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    results = student.predict(paths, args.topk, args.batch_size)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        top = ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"])
        print(f"{r['image']}: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
