"""The PromptKD student as an ONNX model, and a student that runs it with onnxruntime.

``export_onnx(student.pt, student.onnx)`` turns an export of ``trainers.promptkd_export``
into one ONNX file: input ``image`` float32 (N, 3, H, W), preprocessed; outputs ``probs``
(N, C), the softmax over the classes, and ``logits`` (N, C); the class text features are
constants inside; N is dynamic. Its ``metadata_props`` hold the format, the class names in
label order, the preprocessing (JSON and a sentence), the architecture and the source, so
the file is usable with onnxruntime alone. Exported with the torch.export-based exporter
(``dynamo=True``, needs ``onnxscript``): the TorchScript-based one warns that it is
deprecated and will be removed. The new file is checked against PyTorch before it is put in
place.

``OnnxStudent`` reads such a file with onnxruntime and offers ``ExportedStudent``'s
interface (``predict``, ``iter_predictions``, ``logits``, ``load_image``, ``classnames``);
``open_student`` picks the right one by the file's suffix. onnx, onnxscript and onnxruntime
are an optional extra (``pip install -e ".[onnx]"``).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import warnings
import zipfile
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dassl_ext.errors import UserError, first_line
from dassl_ext.utils.atomic import atomic_write
from trainers.promptkd_export import (
    ExportedStudent,
    load_export,
    preprocess_transform,
    require_export_file,
    student_architecture,
)

ONNX_FORMAT = "promptkd-student-onnx/1"
OPSET = 18  # read by onnxruntime >= 1.14
INPUT_NAME, OUTPUT_NAMES = "image", ("probs", "logits")
TOLERANCE = 1e-4  # largest |p_onnx - p_torch| accepted when a file is written
INSTALL = 'pip install -e ".[onnx]"'


class Probabilities(nn.Module):
    """``image`` (N, 3, H, W) -> (softmax probabilities, logits), each (N, C), of a model
    mapping images to logits (for a student: against its stored class text features)."""

    def __init__(self, logits: nn.Module) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(image)
        return F.softmax(logits, dim=1), logits


class StudentLogits(nn.Module):
    """A PromptKD student with its class text features built in: images -> logits."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image, self.student.class_text_features)


def _require(*modules: str, purpose: str) -> None:
    """Import ``modules``; a missing one is a UserError saying how to install the extra."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(
                f"{purpose} needs the Python package {name}, which is not installed here; "
                f"install the ONNX extra with {INSTALL}."
            ) from None


def require_onnx_packages() -> None:
    """Writing (and checking) an ONNX model: onnx, onnxscript and onnxruntime are there."""
    _require("onnx", "onnxscript", "onnxruntime", purpose="Writing an ONNX model")


def preprocessing_sentence(preprocess: dict) -> str:
    """The test-time preprocessing of an export, in words (as ``build_transform`` does it)."""
    size = preprocess["SIZE"]
    h, w = (size, size) if isinstance(size, int) else size
    steps = [
        "RGB image",
        f"resize the shorter side to {max(h, w)} ({preprocess['INTERPOLATION']})",
        f"center crop {h}x{w}",
        "scale to [0, 1] as float32 (C, H, W)",
    ]
    transforms = list(preprocess.get("TRANSFORMS", ()))
    if "normalize" in transforms:
        steps.append(
            f"subtract mean {list(preprocess['PIXEL_MEAN'])} and divide by std "
            f"{list(preprocess['PIXEL_STD'])} per channel"
        )
    if "instance_norm" in transforms:
        steps.append("normalise each image to mean 0 and std 1 per channel")
    return "; ".join(steps) + "; stack into (N, 3, H, W)"


def student_metadata(export: dict, architecture: dict) -> dict[str, str]:
    """The ONNX ``metadata_props`` of a student export's contents and its ``architecture``
    (strings; JSON values)."""
    return {
        "format": ONNX_FORMAT,
        "student_format": str(export["format"]),
        "classnames": json.dumps([str(c) for c in export["classnames"]]),
        "preprocess": json.dumps(export["preprocess"]),
        "preprocessing": preprocessing_sentence(export["preprocess"]),
        "architecture": json.dumps(architecture),
        "source": json.dumps(export.get("source") or {}),
        "input": f"{INPUT_NAME}: float32 (N, 3, H, W), preprocessed as 'preprocessing' says",
        "outputs": f"{OUTPUT_NAMES[0]}: (N, C) softmax over 'classnames' (label order); "
        f"{OUTPUT_NAMES[1]}: (N, C) logits",
    }


def write_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str,
    metadata: dict[str, str],
    opset: int = OPSET,
    check=None,
) -> str:
    """Export ``model`` (image -> (probs, logits)) to ``path`` with a dynamic batch size and
    ``metadata``; ``check(tmp_path)`` may inspect the written file before it is put in place
    (raising leaves ``path`` as it was). ``example`` needs a batch of 2 or more (a batch of
    1 would be specialised)."""
    _require("onnx", "onnxscript", purpose="Writing an ONNX model")
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"image": {0: batch}},
            verbose=False,
        )
    program.model.metadata_props.update(metadata)

    def write(tmp: str) -> None:
        program.save(tmp, external_data=False)
        if check is not None:
            check(tmp)

    return atomic_write(path, write)


@contextlib.contextmanager
def _quiet_loggers():
    """The exporter's INFO records (one per folded constant) kept off a run's console."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(pt_path: str, onnx_path: str, opset: int = OPSET) -> float:
    """Write the student of export file ``pt_path`` as an ONNX model to ``onnx_path``;
    returns the largest |probability difference| to PyTorch on random images (batches of 1
    and 3); a difference above ``TOLERANCE`` is a UserError and nothing is written."""
    require_onnx_packages()
    export = load_export(pt_path)
    student = ExportedStudent(pt_path)
    model = Probabilities(StudentLogits(student.model)).eval()
    size = student.model.image_encoder.input_resolution
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, size, size, generator=generator)
    diffs = []

    def check(tmp: str) -> None:
        session = onnx_session(tmp, "cpu")
        for batch in (images[:1], images[1:]):
            probs = session.run([OUTPUT_NAMES[0]], {INPUT_NAME: batch.numpy()})[0]
            with torch.no_grad():
                ref = model(batch)[0]
            diffs.append(float((torch.from_numpy(probs) - ref).abs().max()))
        if max(diffs) > TOLERANCE:
            raise UserError(
                f"The ONNX model of {pt_path} disagrees with PyTorch (largest probability "
                f"difference {max(diffs):.2g} > {TOLERANCE:g}), so {onnx_path} was not "
                "written; please report it with your torch, onnx and onnxruntime versions."
            )

    metadata = student_metadata(
        export, export.get("architecture") or student_architecture(student.model)
    )
    write_onnx(model, images[:2], onnx_path, metadata, opset, check)
    return max(diffs)


def onnx_path_for(pt_path: str) -> str:
    """Where the ONNX model of ``pt_path`` goes: beside it, suffix ``.onnx``."""
    root, ext = os.path.splitext(pt_path)
    return (root if ext == ".pt" else pt_path) + ".onnx"


def open_student(path: str, device: str = "cpu") -> ExportedStudent:
    """The student in ``path``: an ``OnnxStudent`` for a ``.onnx`` file, else the PyTorch
    ``ExportedStudent``."""
    if path.lower().endswith(".onnx"):
        return OnnxStudent(path, device)
    return ExportedStudent(path, device)


class OnnxStudent(ExportedStudent):
    """A student ONNX model run by onnxruntime, with ``ExportedStudent``'s interface."""

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None) -> None:
        self.path = path
        self.session = onnx_session(path, device, threads)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if meta.get("format") != ONNX_FORMAT:
            what = f"format {meta['format']!r}" if "format" in meta else "no format"
            raise UserError(
                f"{path} is an ONNX model but not a PromptKD student export (its metadata "
                f"has {what}; this version reads {ONNX_FORMAT}); write one with python "
                "scripts/export_student.py RUN_DIR --onnx."
            )
        try:
            self.classnames: list[str] = [str(c) for c in json.loads(meta["classnames"])]
            self.transform = preprocess_transform(json.loads(meta["preprocess"]))
            outputs = [o.name for o in self.session.get_outputs()]
            if self.session.get_inputs()[0].name != INPUT_NAME or OUTPUT_NAMES[1] not in outputs:
                raise ValueError(f"inputs/outputs are not {INPUT_NAME} -> {OUTPUT_NAMES}")
            classes = self.session.get_outputs()[outputs.index(OUTPUT_NAMES[1])].shape[1]
            if classes != len(self.classnames):
                raise ValueError(f"{len(self.classnames)} class names for {classes} outputs")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, UserError) as e:
            reason = first_line(e)
            raise UserError(
                f"{path} is a damaged PromptKD student ONNX model ({type(e).__name__}: "
                f"{reason}); export the run again with scripts/export_student.py RUN_DIR --onnx."
            ) from None
        self.device = torch.device("cpu")  # the images; onnxruntime places the model itself

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of preprocessed images (B, 3, H, W) over all classes."""
        try:
            out = self.session.run(
                [OUTPUT_NAMES[1]], {INPUT_NAME: images.float().cpu().contiguous().numpy()}
            )
        except Exception as e:  # noqa: BLE001  onnxruntime's errors share no base class
            text = str(e)
            if "alloc" in text.lower() or "memory" in text.lower():
                raise MemoryError(text) from None  # -> "use a smaller --batch-size"
            raise UserError(
                f"onnxruntime could not run {self.path} on a batch of {len(images)} images "
                f"({first_line(e)})."
            ) from None
        return torch.from_numpy(out[0])

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own ``probs`` output (B, C) for preprocessed images."""
        feed = {INPUT_NAME: images.float().cpu().contiguous().numpy()}
        return torch.from_numpy(self.session.run([OUTPUT_NAMES[0]], feed)[0])


def onnx_session(path: str, device: str = "cpu", threads: int | None = None) -> Any:
    """An onnxruntime session of ``path`` on ``device`` (cpu, or cuda with
    onnxruntime-gpu); a missing, foreign or corrupt file is a UserError."""
    _require("onnxruntime", purpose=f"Reading {path}")
    import onnxruntime as ort

    providers = _providers(device, ort.get_available_providers())
    require_export_file(path, "student ONNX model", " --onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings on stderr
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as e:  # noqa: BLE001  onnxruntime's errors share no base class
        if zipfile.is_zipfile(path):
            reason = "it is a PyTorch file; name it .pt"
        else:
            reason = first_line(e, None).split("] ")[-1][:160] or type(e).__name__
        raise UserError(
            f"{path} is not a readable ONNX model ({reason}); export the run again with "
            "scripts/export_student.py RUN_DIR --onnx, or pass an intact copy."
        ) from None


def _providers(device: str, available: list[str]) -> list[str]:
    """onnxruntime's execution providers for ``--device``; one it lacks is a UserError."""
    kind = device.split(":")[0]
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda" and "CUDAExecutionProvider" not in available:
        raise UserError(
            f"--device {device}: this onnxruntime has no CUDA provider (it has "
            f"{', '.join(available)}); use --device cpu, or install onnxruntime-gpu."
        )
    index = device.split(":")[1] if ":" in device else "0"
    if kind == "cuda" and index.isdigit():
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise UserError(
        f"--device {device} is not a device onnxruntime knows; use cpu, cuda or cuda:<index>."
    )
