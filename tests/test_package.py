"""The installed package: importable from anywhere, light, and complete in layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("gradio", "accelerate", "datasets", "faiss", "matplotlib", "training", "vse.serving", "vse.testing")


def test_vse_imports_from_another_directory_without_training_dependencies(tmp_path):
    code = (
        "import sys; from vse import VSEModel, VSEConfig, retrieval_metrics; "
        f"heavy = [m for m in {TRAINING_ONLY!r} if m in sys.modules]; "
        "print('heavy:', heavy); assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def imports_of(folder: str, prefixes: tuple[str, ...], skip: tuple[str, ...] = ()) -> list[str]:
    """file:line of every import statement in ``folder`` starting with one of ``prefixes``."""
    return [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name not in skip
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip().startswith(prefixes)
    ]


def test_benchmarks_and_tests_share_fixtures_through_vse_testing_only():
    """tests/ is imported by nothing but pytest; benchmarks/ only by the tests that run the benchmarks."""
    for folder in ("benchmarks", "vse", "training"):
        assert not imports_of(folder, ("from tests", "import tests")), folder
    assert not imports_of("tests", ("from benchmarks", "import benchmarks"), skip=("test_benchmarks.py",))


def test_layout_of_the_design_card():
    for name in ("app.py", "vse", "training", "assets", "tests", "requirements.txt", "README.md", ".ci/run"):
        assert (ROOT / name).exists(), name
    requirements = (ROOT / "requirements.txt").read_text()
    for package in ("torch==2.13.0", "gradio", "transformers", "faiss-cpu", "datasets", "huggingface_hub"):
        assert package in requirements, package


def test_binary_files_go_through_large_file_storage():
    """The Hub refuses binary files pushed without LFS: every tracked one must match a .gitattributes LFS rule."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    binary = [name.decode() for name in files if name and b"\0" in (ROOT / name.decode()).read_bytes()[:8000]]
    assert binary  # assets/ has weights, parquet shards, images
    attributes = subprocess.run(["git", "check-attr", "filter", "--", *binary], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.splitlines()  # fmt: skip
    not_lfs = [line for line in attributes if not line.endswith(": filter: lfs")]
    assert not not_lfs, not_lfs


@pytest.mark.slow
def test_the_package_installs_into_a_clean_environment(tmp_path):
    """pip install brings the dependencies, the training package and the console scripts."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             f"{ROOT}[train]"], capture_output=True, text=True, timeout=3000)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    code = "import vse, training.train; from vse import VSEModel, tag_suspicion; print(vse.__version__)"
    result = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for script in ("vse-train", "vse-evaluate", "vse-push", "vse-feedback", "vse-close-loop"):
        result = subprocess.run([str(venv / "bin" / script), "--help"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "usage" in result.stdout, (script, result.stderr[-2000:])
