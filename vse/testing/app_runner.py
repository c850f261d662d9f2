"""Launching the real app of a source checkout (app.py, on the assets/ default) on a loopback port.

Tests and benchmarks drive the app the way clients do, over HTTP; this starts it
in-process on a free port and closes it afterwards.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: app.py and assets/
ASSETS = ROOT / "assets"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(data_dir: Path, **config):
    """The app of app.py on the assets default, served on a free loopback port."""
    import app as app_module

    config.setdefault("model", str(ASSETS / "model"))
    config.setdefault("gallery", str(ASSETS / "gallery"))
    settings = app_module.AppConfig(data_dir=str(data_dir), **config)
    demo, app = app_module.create_demo(settings)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app_module.launch_options())  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/", app
    finally:
        demo.close()
        app.close()
