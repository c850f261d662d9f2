"""The installed package: importable from anywhere, light, and complete in layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("gradio", "accelerate", "datasets", "faiss", "matplotlib", "training")


def test_vse_imports_from_another_directory_without_training_dependencies(tmp_path):
    code = (
        "import sys; from vse import VSEModel, VSEConfig, retrieval_metrics; "
        f"heavy = [m for m in {TRAINING_ONLY!r} if m in sys.modules]; "
        "print('heavy:', heavy); assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_layout_of_the_design_card():
    for name in ("app.py", "vse", "training", "assets", "tests", "requirements.txt", "README.md", ".ci/run"):
        assert (ROOT / name).exists(), name
    requirements = (ROOT / "requirements.txt").read_text()
    for package in ("torch==2.13.0", "gradio", "transformers", "faiss-cpu", "datasets", "huggingface_hub"):
        assert package in requirements, package
