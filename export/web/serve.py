"""Serve the browser page with an export folder, or run it in headless Chromium (results as JSON, or a screenshot).

Usage (from the repository root, after `npm ci --ignore-scripts` in export/web):
  python export/web/serve.py --model_dir runs/reverse/onnx                     # prints a URL to open in a browser
  python export/web/serve.py --model_dir DIR --check "13 28 18 7 9 5" "3 4"    # headless: the page's results as JSON
  python export/web/serve.py --model_dir DIR --screenshot export/web/screenshot.png "13 28 18 7 9 5" ...
Only the standard library: the page itself does the decoding (onnxruntime-web); this file only serves it on
127.0.0.1 and, headless, waits for the page to POST its outcome to /report.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

EXPORT_DIR = Path(__file__).resolve().parents[1]  # the page imports ../js/, so the whole export/ folder is served
WEB_DIR = EXPORT_DIR / "web"
INSTALL_CHROMIUM = "apt-get update && apt-get install -y --no-install-recommends chromium"
INSTALL_NPM = "cd export/web && npm ci --ignore-scripts"
TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """GET /model/NAME from the model folder, everything else from export/; POST /report hands the page's JSON over."""

    model_dir: Path
    reports: list[dict[str, Any]]
    reported: threading.Event

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(EXPORT_DIR), **kwargs)

    def translate_path(self, path: str) -> str:
        route = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        if route.startswith("/model/"):
            name = route.removeprefix("/model/")
            return str(self.model_dir / name) if name and "/" not in name and name != ".." else ""
        return super().translate_path(path)

    def guess_type(self, path: str | os.PathLike[str]) -> str:
        return TYPES.get(Path(path).suffix, None) or super().guess_type(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # a re-exported model must never be read from a cache
        super().end_headers()

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path in ("", "/"):
            self.send_response(302)
            self.send_header("Location", "/web/index.html?model=/model/")
            self.end_headers()
            return
        super().do_GET()

    def do_POST(self) -> None:
        if self.path != "/report":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reports.append(json.loads(body))
        self.send_response(204)
        self.end_headers()
        self.reported.set()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: a test or a user reads the page, not the request log


@contextlib.contextmanager
def serving(model_dir: Path, port: int = 0) -> Iterator[tuple[str, type[_Handler]]]:
    """An HTTP server on 127.0.0.1 (a free port unless given) in a thread: yields (base URL, handler class whose
    `reports` collects what the page POSTs to /report and whose `reported` event is set on each)."""
    handler = type(
        "Handler", (_Handler,), {"model_dir": Path(model_dir).resolve(), "reports": [], "reported": threading.Event()}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def page_url(
    base: str, lines: Sequence[str], *, steps: bool = False, untrained: bool = False, report: bool = True
) -> str:
    """The page decoding `lines` as soon as the served model loads (optionally by the two-graph loop, optionally
    allowing untrained source lengths)."""
    query = {"model": "/model/", "input": "\n".join(lines), "auto": "1"}
    if steps:
        query["path"] = "steps"
    if untrained:
        query["untrained"] = "1"
    if report:
        query["report"] = "/report"
    return f"{base}/web/index.html?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def missing_tools() -> str | None:
    """What the headless run lacks, as a message naming the command that installs it; None when all is there."""
    if not (WEB_DIR / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs").exists():
        return f"onnxruntime-web is not installed in export/web: run `{INSTALL_NPM}`"
    if not (EXPORT_DIR / "js" / "lit_seq2seq.mjs").exists():
        return "export/js/lit_seq2seq.mjs is missing (the module the page decodes with)"
    if chromium() is None:
        named = os.environ.get("CHROMIUM")
        where = f"CHROMIUM={named} is not an executable" if named else "no chromium on PATH"
        return f"{where}: run `{INSTALL_CHROMIUM}` (or set CHROMIUM to a Chrome/Chromium binary)"
    return None


def chromium() -> str | None:
    """The browser binary: $CHROMIUM when set (None if it is not an executable), else chromium on PATH."""
    if named := os.environ.get("CHROMIUM"):
        return shutil.which(named)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(url: str, profile: Path, *extra: str) -> subprocess.Popen[bytes]:
    """Headless Chromium on `url` in a fresh profile, in its own process group (so its helpers die with it)."""
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check"]
    flags += ["--disable-extensions", "--disable-background-networking", "--disable-component-update"]
    log = (profile / "chromium.log").open("wb")
    return subprocess.Popen(
        [str(chromium()), *flags, f"--user-data-dir={profile}", *extra, url],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _kill(browser: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGKILL)
    browser.wait()


def _log_tail(profile: Path) -> str:
    log = profile / "chromium.log"
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def _wait_for_report(browser: subprocess.Popen[bytes], handler: type[_Handler], profile: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not handler.reported.wait(0.1):
        if browser.poll() is not None or time.monotonic() > deadline:
            why = "exited" if browser.poll() is not None else f"sent nothing within {timeout:.0f} s"
            raise RuntimeError(f"the page in headless Chromium {why}; its log:\n{_log_tail(profile)}")


def run_page(
    model_dir: Path, lines: Sequence[str], *, steps: bool = False, untrained: bool = False, timeout: float = 60
) -> dict[str, Any]:
    """Serve `model_dir`, let headless Chromium's page decode `lines`, return the JSON the page POSTs: {error,
    path, ms, results: [{line, input, tokens, text, error}]}. Raises RuntimeError naming what is missing or
    what Chromium said when the page never reports."""
    if problem := missing_tools():
        raise RuntimeError(problem)
    with tempfile.TemporaryDirectory(prefix="lit-seq2seq-chromium-") as tmp, serving(model_dir) as (base, handler):
        browser = _browser(page_url(base, lines, steps=steps, untrained=untrained), Path(tmp))
        try:
            _wait_for_report(browser, handler, Path(tmp), timeout)
        finally:
            _kill(browser)
        return handler.reports[0]


def _cdp(browser: subprocess.Popen[bytes], commands: int, results: int) -> Any:
    """A caller of the Chrome DevTools protocol over --remote-debugging-pipe: call(method, session, **params)."""
    counter = iter(range(1, 1 << 30))
    buffer = b""

    def call(method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        nonlocal buffer
        ident = next(counter)
        message = {"id": ident, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(commands, json.dumps(message).encode() + b"\0")
        while True:  # events arrive in between; the answer is the message with our id
            while b"\0" not in buffer:
                chunk = os.read(results, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe during {method}")
                buffer += chunk
            raw, buffer = buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == ident:
                if "error" in answer:
                    raise RuntimeError(f"DevTools {method}: {answer['error']}")
                return answer["result"]

    return call


def screenshot(model_dir: Path, lines: Sequence[str], png: Path, *, size: str = "900,600", timeout: float = 60) -> dict:
    """A PNG of the page once it has decoded `lines` (taken through the DevTools protocol right after the page
    reported, so the times it shows are real ones); returns the page's report."""
    if problem := missing_tools():
        raise RuntimeError(problem)
    commands_read, commands = os.pipe()
    results, results_write = os.pipe()
    with tempfile.TemporaryDirectory(prefix="lit-seq2seq-chromium-") as tmp, serving(model_dir) as (base, handler):
        # Chromium reads DevTools commands from fd 3 and answers on fd 4; bash maps our pipe ends there (dash
        # takes single-digit fds only).
        wrapper = ["bash", "-c", f'exec "$0" "$@" 3<&{commands_read} 4>&{results_write}']
        profile = Path(tmp)
        log = (profile / "chromium.log").open("wb")
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check"]
        flags += ["--disable-extensions", "--hide-scrollbars", f"--window-size={size}", "--remote-debugging-pipe"]
        browser = subprocess.Popen(
            [*wrapper, str(chromium()), *flags, f"--user-data-dir={profile}", page_url(base, lines)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            pass_fds=(commands_read, results_write),
        )  # fmt: skip
        os.close(commands_read)
        os.close(results_write)
        try:
            _wait_for_report(browser, handler, profile, timeout)
            call = _cdp(browser, commands, results)
            page = next(t for t in call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            session = call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            size = call("Page.getLayoutMetrics", session)["cssContentSize"]  # the whole page, not the window
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = call("Page.captureScreenshot", session, format="png", clip=clip, captureBeyondViewport=True)
            Path(png).write_bytes(base64.b64decode(shot["data"]))
        finally:
            _kill(browser)
            os.close(commands)
            os.close(results)
        return handler.reports[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", type=Path, required=True, help="an export folder (encoder.onnx, ...)")
    parser.add_argument("--port", type=int, default=8000, help="serving: the port on 127.0.0.1 (default 8000)")
    parser.add_argument("--check", action="store_true", help="headless: print the page's results for LINES as JSON")
    parser.add_argument("--steps", action="store_true", help="with --check: decode by the two-graph loop")
    parser.add_argument("--screenshot", type=Path, help="headless: write a PNG of the page decoding LINES")
    parser.add_argument("lines", nargs="*", help="sources for --check / --screenshot, one per argument")
    args = parser.parse_args(argv)
    if not (args.model_dir / "encoder.onnx").is_file():
        parser.exit(2, f"--model_dir {args.model_dir}: no encoder.onnx there (give an export folder)\n")
    try:
        if args.check:
            print(json.dumps(run_page(args.model_dir, args.lines, steps=args.steps), indent=1))
            return 0
        if args.screenshot:
            report = screenshot(args.model_dir, args.lines, args.screenshot)
            print(f"wrote {args.screenshot}" + (f" (the page: {report['error']})" if report.get("error") else ""))
            return 0
    except RuntimeError as err:
        parser.exit(2, f"{err}\n")
    with serving(args.model_dir, args.port) as (base, _):
        print(f"open {base}/ (the page with --model_dir loaded); Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
