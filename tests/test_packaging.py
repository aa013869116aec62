"""Installing the project must not shadow Hugging Face ``datasets`` (DESIGN.md)."""

import os
import subprocess
import sys

from conftest import REPO_ROOT

PROBE = (
    "import importlib.util as u, json;"
    "s = {n: u.find_spec(n) for n in ('datasets', 'trainers', 'dassl_ext')};"
    "print(json.dumps({n: (v.origin if v else None) for n, v in s.items()}))"
)


def _probe(cwd: str) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_repo_packages_not_importable_outside_repo(tmp_path):
    found = _probe(str(tmp_path))
    for name in ("datasets", "trainers"):
        origin = found[name]
        assert origin is None or not origin.startswith(REPO_ROOT), (
            f"installing the project exposes the repository's `{name}` package: {origin}"
        )


def test_repo_datasets_wins_inside_repo():
    found = _probe(REPO_ROOT)
    assert found["datasets"] is not None
    assert found["datasets"].startswith(os.path.join(REPO_ROOT, "datasets"))
