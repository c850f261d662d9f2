"""The Space, built the way Spaces builds it: a fresh environment from requirements.txt alone, app.py on 0.0.0.0.

Slow (it installs every requirement into a new virtual environment, from pip's cache when warm); CI runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vse.testing.app_runner import ASSETS, ROOT, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ASSETS / "model" / "config.json").is_file(), reason="assets/ not built"),
]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def space_env(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("space") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*pip, "-r", str(ROOT / "requirements.txt")], capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\nSpace environment: {folder_size(venv) / 1e9:.2f} GB installed")
    return venv


def app_client(url: str):
    """A client of the app at ``url``; None while nothing listens or the start-up status page answers there."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
    except Exception:  # not listening yet
        return None
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    return client if "/search" in endpoints else None


def test_the_space_starts_and_serves_search_and_votes(space_env, tmp_path):
    space = tmp_path / "space"  # the repository as a Space checks it out
    shutil.copytree(ROOT, space, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "cache", "data", "feedback",
                                                                "__pycache__", ".pytest_cache", ".ruff_cache"))  # fmt: skip
    port = free_port()
    env = {
        "PATH": f"{space_env / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path), "SPACE_ID": "someone/vse-demo",
        "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port), "VSE_DATA_DIR": str(tmp_path / "data"),
        "VSE_FEEDBACK_REPO": str(tmp_path / "votes-repo"), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
    }  # fmt: skip
    process = subprocess.Popen([str(space_env / "bin" / "python"), "app.py"], cwd=space, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline, client = time.monotonic() + 300, None
        while client is None and time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()[-3000:]
            client = app_client(f"http://127.0.0.1:{port}/")
            if client is None:
                time.sleep(1)
        assert client is not None, "the Space did not start within 5 minutes"
        gallery, table = client.predict("a red apple", 5, api_name="/search")
        assert len(table["data"]) == 5
        task = client.predict("space-tester", api_name="/review_next")
        counter = client.predict(task["image_id"], task["tags"][0]["tag"], "wrong", "space-tester", api_name="/vote")
        assert "1 images reviewed by you" in counter
    finally:
        process.terminate()  # a Space stops its container with SIGTERM: the votes are flushed on the way out
        process.wait(timeout=60)
    journal = list((tmp_path / "votes-repo" / "votes").glob("*.jsonl"))
    assert journal and task["image_id"] in journal[0].read_text()
