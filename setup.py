"""Install the engine (`dassl_ext`) and the dependencies of the whole project.

Only `dassl_ext` is installed as a package: the repository's top-level `trainers`
and `datasets` folders are imported from the repository root (``train.py`` and the
scripts put it first on ``sys.path``), so installing this project never shadows
Hugging Face ``datasets`` for other software in the same environment.
"""

from setuptools import find_packages, setup

ONNX = ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.18"]
# open_clip models as backbones and teachers (open_clip:<model>:<pretrained> names,
# dassl_ext/modeling/openclip.py); tested with open-clip-torch 3.3.0.
OPENCLIP = ["open-clip-torch>=3"]

setup(
    name="promptkd-dassl",
    version="0.1.0",
    description="Dassl-style framework for CLIP prompt learning and PromptKD distillation",
    python_requires=">=3.10",
    packages=find_packages(include=["dassl_ext", "dassl_ext.*"]),
    # The pretrained CLIP stand-ins (dassl_ext/modeling/standins.py) and their manifests.
    package_data={"dassl_ext.modeling": ["weights/*.pt", "weights/*.json"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        # OpenAI CLIP from PyPI; it imports pkg_resources, removed in setuptools 81.
        "clip-anytorch>=2.6",
        "setuptools<81",
        "yacs",
        "filelock>=3.12",  # one live run per output folder (dassl_ext/utils/run_lock.py)
        "gdown",
        "tabulate",
        "scikit-learn",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "numpy",
        "Pillow",
    ],
    extras_require={
        # scripts/export_student.py --onnx (torch.export-based exporter: onnxscript) and
        # scripts/predict.py -m student.onnx (onnxruntime); tested with onnx 1.23,
        # onnxscript 0.7, onnxruntime 1.32.
        "onnx": ONNX,
        "openclip": OPENCLIP,
        "test": ["pytest>=7", "ruff>=0.5", *ONNX, *OPENCLIP],  # so CI runs these tests too
    },
)
