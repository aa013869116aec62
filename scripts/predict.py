"""Classify images with an exported PromptKD student (no teacher, no other weight files).

    python scripts/predict.py -m student.pt [--topk 5] [--device cpu] [--json] FILE_OR_FOLDER...
    python scripts/predict.py -m student.onnx ...   # the same with onnxruntime

``-m`` is either file of scripts/export_student.py: ``.onnx`` runs with onnxruntime
(``pip install -e ".[onnx]"``), anything else with PyTorch; both classify the same way.

Folders are searched recursively for images (sorted; hidden files and folders skipped); a
pattern the shell did not expand (``"imgs/*.png"``) is expanded here. Prints the top-k
classes with their probabilities for each image, or one JSON list with ``--json``. A file
that cannot be used (missing, empty, not an image, truncated, unreadable) or a folder without
images is reported in one line on stderr and the others are classified.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_TOPK = 5
EXIT_STATUS = (
    "exit status: 0 every input was classified; 1 some input was skipped (each named on "
    "stderr; the others were classified) or nothing could be classified (a bad -m file, "
    "--device or no image at all); 2 bad command-line arguments"
)


def list_images(inputs: list[str]) -> tuple[list[str], list[str]]:
    """``(image files, problems)``: the files named or found (recursively, sorted) under the
    given folders, and one sentence per input that gave none (missing, empty folder ...)."""
    from dassl_ext.data.splits import IMAGE_EXTENSIONS  # the datasets' list (torch: lazily)

    paths, problems = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = _images_under(item, problems)
            if not found:
                problems.append(
                    f"{item} is a folder with no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
            paths += found
        elif os.path.isfile(item):
            paths.append(item)  # named explicitly: tried whatever its extension
        elif os.path.exists(item):
            problems.append(f"{item} is neither a file nor a folder")
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            paths += [m for m in matches if os.path.isfile(m)]
            if not matches:
                problems.append(f"{item} matches no file")
        else:
            problems.append(f"{item} does not exist")
    return paths, problems


def _images_under(folder: str, problems: list[str]) -> list[str]:
    from dassl_ext.data.splits import IMAGE_EXTENSIONS

    found = []

    def unreadable(e: OSError) -> None:
        problems.append(f"{e.filename} cannot be listed ({e.strerror})")

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        # hidden files and folders skipped, as the datasets skip them (macOS's ._photo.jpg
        # beside photo.jpg is no image; .thumbnails/ holds copies)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images = [f for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS) and f[0] != "."]
        found += [os.path.join(root, f) for f in images]
    return found


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


class OutputError(Exception):
    """Standard output cannot be written (full disk, closed pipe)."""


def emit(text: str) -> None:
    """Print ``text`` to stdout now (results come out as they are computed)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `| head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        raise OutputError("") from None
    except OSError as e:
        message = f"Cannot write the predictions to standard output ({e.strerror or e})"
        raise OutputError(message) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=EXIT_STATUS)
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_FOLDER")
    p.add_argument(
        "-m", "--model", required=True, help="student.pt or student.onnx (export_student.py)"
    )
    p.add_argument("--topk", type=positive_int, help="classes shown (default 5, at most all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON list")
    args = p.parse_args(argv)
    from dassl_ext.errors import UserError
    from trainers.promptkd_onnx import open_student

    paths, problems = list_images(args.inputs)
    for problem in problems:
        print(f"Skipped: {problem}.", file=sys.stderr)
    try:
        student = open_student(args.model, args.device)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if not paths:
        print(
            "Error: no image to classify; name image files or folders that hold them.",
            file=sys.stderr,
        )
        return 1
    if args.topk is None:
        args.topk = DEFAULT_TOPK
    elif args.topk > len(student.classnames):  # asked for explicitly: say why fewer come
        print(
            f"Note: --topk {args.topk} is more than the {len(student.classnames)} classes "
            f"of {args.model}; all of them are shown.",
            file=sys.stderr,
        )
    skipped, classified, results = len(problems), 0, []
    try:
        for r in student.iter_predictions(paths, args.topk, args.batch_size):
            if "error" in r:
                print(f"Skipped: {r['error']}.", file=sys.stderr)
                skipped += 1
                continue
            classified += 1
            if args.json:
                results.append(r)
            else:
                top = ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"])
                emit(f"{r['image']}: {top}")
        if args.json:
            emit(json.dumps(results, indent=1))
    except UserError as e:  # e.g. a batch that does not fit in memory
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except OutputError as e:
        if str(e):
            print(f"Error: {e}.", file=sys.stderr)
        return 1
    if skipped:
        print(
            f"{skipped} input(s) skipped (named above); {classified} image(s) classified.",
            file=sys.stderr,
        )
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
