"""Hostile input against the running app: the corpus by class, memory under huge uploads, log bytes per refusal.

    python -m benchmarks.hostile [--uploads 4] [--refusals 200]

Counts the hostile-input corpus of tests/test_hostile_inputs.py (library level)
and tests/test_hostile_app.py (through the app's HTTP API), then starts the app on
the assets/ default and measures (1) the server's peak resident memory while
several clients upload, at once, small PNG files that declare 144 million pixels,
and (2) how many bytes of log one refused request writes. Writes the "hostile"
section of docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine_line, markdown_table, write_section
from vse.testing.app_runner import api_call, concurrent_uploads
from vse.testing.hostile import blank_png
from vse.testing.memory import peak_memory_growth

CLIENT_LOGGERS = ("httpx", "httpcore", "gradio_client")
RELIABILITY = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"


class ByteCounter(logging.Handler):
    """Counts the bytes of every formatted log record, and the tracebacks among them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.bytes = self.records = self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(CLIENT_LOGGERS):  # the benchmark's own HTTP client, not the app
            return
        text = self.format(record) + "\n"
        self.bytes += len(text.encode())
        self.records += 1
        self.tracebacks += "Traceback" in text


class CountingStream:
    """Stands in for ``sys.stderr``: counts what is printed there directly (tracebacks), passing it on."""

    def __init__(self, stream) -> None:
        self.stream, self.bytes, self.tracebacks = stream, 0, 0

    def write(self, text: str) -> int:
        self.bytes += len(text.encode())
        self.tracebacks += text.count("Traceback")
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    from vse.testing.app_runner import running_app
    from vse.testing.hostile import API_CASES, IMAGE_CASES, TEXT_CASES, UPLOAD_CASES, VOTE_CASES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=4, help="concurrent uploads of a 144 Mpx PNG")
    parser.add_argument("--refusals", type=int, default=200, help="refused requests whose log is measured")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    counter = ByteCounter()
    with tempfile.TemporaryDirectory() as folder, running_app(Path(folder) / "data") as (url, app):
        rows = []
        for width, height in ((9000, 9000), (12000, 12000)):
            path = Path(folder) / f"blank-{width}x{height}.png"
            path.write_bytes(blank_png(width, height))
            concurrent_uploads(url, path, 1)  # warm: the first upload allocates Gradio's own buffers
            growth, messages = peak_memory_growth(lambda p=path: concurrent_uploads(url, p, args.uploads))
            refused = sum("too large" in message for message in messages)
            rows.append([f"{args.uploads} × {width * height / 1e6:.0f} Mpx PNG ({path.stat().st_size / 1e6:.2f} MB)",
                         f"{refused} of {args.uploads}", round(growth / 1e6, 1)])  # fmt: skip
        logging.getLogger().addHandler(counter)
        printed = CountingStream(sys.stderr)  # Gradio prints tracebacks to sys.stderr, not through logging
        sys.stderr = printed
        try:
            item = app.service.gallery.items[app.queue[0]]
            for attempt in range(args.refusals):  # a vote on a tag the image does not have: refused every time
                event, _ = api_call(url, "vote", [item.id, f"not-a-tag-{attempt}", "wrong", "bench"])
                assert event == "error"
        finally:
            logging.getLogger().removeHandler(counter)
            sys.stderr = printed.stream
    log_bytes = counter.bytes + printed.bytes
    tracebacks = counter.tracebacks + printed.tracebacks
    per_refusal = log_bytes / args.refusals
    print(markdown_table(["uploads at once", "refused as too large", "peak memory growth, MB"], rows))
    print(f"log: {log_bytes} bytes, {counter.records} records, {tracebacks} tracebacks "
          f"for {args.refusals} refused votes ({per_refusal:.0f} bytes each)")  # fmt: skip
    if not args.no_report:
        command = "python -m benchmarks.hostile " + " ".join(argv if argv is not None else sys.argv[1:])
        library = len(IMAGE_CASES) + len(TEXT_CASES) + len(VOTE_CASES)
        classes = [
            ["images (`load_image`, and each one uploaded through the app by gradio_client)", len(IMAGE_CASES),
             "`tests/test_hostile_inputs.py`, `tests/test_hostile_app.py`"],
            ["query texts", len(TEXT_CASES), "`tests/test_hostile_inputs.py`"],
            ["votes (feedback store)", len(VOTE_CASES), "`tests/test_hostile_inputs.py`"],
            ["uploads through the app's HTTP API", len(UPLOAD_CASES), "`tests/test_hostile_app.py`"],
            ["API arguments (`k` of any JSON type, missing or misshapen arguments)", len(API_CASES),
             "`tests/test_hostile_app.py`"],
        ]  # fmt: skip
        body = f"""## Bad and hostile input

The corpus is generated by `vse.testing.hostile` and checked by the tests: **{library + len(UPLOAD_CASES) + len(API_CASES)} cases**.
Each is handled or refused with a message naming the problem; none reaches a client as a bare
"Error". Uploads reach the app undecoded (a file path) and go through the same decoding rule as the
gallery and training (`vse.images.load_image`: alpha on white, 16-bit scaled, EXIF upright, first
frame, a pixel budget of {_pixel_budget()} read from the header before anything is decoded).

{markdown_table(["class", "cases", "test"], classes)}

`pytest tests/test_browser.py -k hostile` shows tags, captions and titles such as
`<img src=x onerror=alert(1)>` as literal text in Chromium, with no dialog and no element created,
and shows an undecodable upload's message in the page.

`{command.strip()}` · {machine_line()} · the app on the `assets/` default, in one process with its clients.

{markdown_table(["uploads at once", "refused as too large", "peak memory growth, MB"], rows)}

A refused request (here {args.refusals} votes on tags the image does not have) writes
**{per_refusal:.0f} bytes** of log ({counter.records} log records and {printed.bytes} bytes printed
directly to the error stream in all; {tracebacks} tracebacks).
"""
        write_section("hostile", body, RELIABILITY)
    return 0


def _pixel_budget() -> str:
    from vse.images import MAX_IMAGE_PIXELS

    return f"{MAX_IMAGE_PIXELS / 1e6:.0f} million pixels"


if __name__ == "__main__":
    sys.exit(main())
