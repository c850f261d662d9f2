"""Launching the real app of a source checkout (app.py, on the assets/ default) on a loopback port.

Tests and benchmarks drive the app the way clients do, over HTTP: ``running_app``
starts it in-process on a free port and closes it afterwards; ``api_call`` is one
call of Gradio's HTTP API, ``concurrent_uploads`` several uploads at once.
"""

from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx

JSON = {"content-type": "application/json"}

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


def concurrent_uploads(url: str, path: Path, clients: int) -> list[str]:
    """Upload ``path`` to ``/describe`` from ``clients`` gradio_client clients at once; each one's error message."""
    from gradio_client import Client, handle_file

    messages: list[str] = [""] * clients

    def upload(slot: int) -> None:
        try:
            Client(url, verbose=False).predict(handle_file(str(path)), api_name="/describe")
            messages[slot] = "accepted"
        except Exception as err:  # noqa: BLE001 - the refusal is the expected outcome, recorded
            messages[slot] = str(err)

    threads = [threading.Thread(target=upload, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return messages


def api_call(url: str, api: str, data: list) -> tuple[str, dict | list | None]:
    """One call through Gradio's HTTP API: ("complete" | "error", payload)."""
    body = json.dumps({"data": data})  # NaN and Infinity allowed: clients send them
    response = httpx.post(f"{url}gradio_api/call/{api}", content=body, headers=JSON, timeout=60)
    response.raise_for_status()
    stream = httpx.get(f"{url}gradio_api/call/{api}/{response.json()['event_id']}", timeout=60).text
    event = next(line.removeprefix("event: ") for line in stream.splitlines() if line.startswith("event: "))
    data_line = next((line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")), "null")
    return event, json.loads(data_line)
