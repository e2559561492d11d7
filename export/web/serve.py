"""Serve the browser page with an export folder, or run it in headless Chromium (results as JSON, or a screenshot).

Usage (from the repository root, after `npm ci --ignore-scripts` in export/web):
  python export/web/serve.py --model_dir runs/reverse/onnx                     # prints a URL to open in a browser
  python export/web/serve.py --model_dir DIR --check "13 28 18 7 9 5" "3 4"  # headless: JSON results (1: an error)
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
from collections.abc import Callable, Iterator, Sequence
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


PATHS = ("auto", "steps", "beam")  # the page's "decode with": greedy.onnx, the two-graph loop, beam search (4 beams)


def page_url(
    base: str, lines: Sequence[str], *, path: str = "auto", untrained: bool = False, served: bool = True
) -> str:
    """The page decoding `lines` as soon as a model is open and reporting to /report: the served model, or (not
    `served`) the files a user picks; by `path` (one of PATHS), optionally allowing untrained source lengths."""
    query = {"model": "/model/"} if served else {}
    query |= {"input": "\n".join(lines), "auto": "1", "report": "/report"}
    if path != "auto":
        query["path"] = path
    if untrained:
        query["untrained"] = "1"
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


def _kill(browser: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGKILL)
    browser.wait()


def _log_tail(profile: Path) -> str:
    log = profile / "chromium.log"
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def _cdp(commands: int, results: int) -> Callable[..., dict[str, Any]]:
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


class _Page:
    """Headless Chromium (fresh profile, own process group) showing one page, driven over the DevTools pipe."""

    def __init__(self, url: str, profile: Path, size: str) -> None:
        commands_read, self._commands = os.pipe()
        self._results, results_write = os.pipe()
        # Chromium reads DevTools commands from fd 3 and answers on fd 4; bash maps our pipe ends there (dash
        # takes single-digit fds only).
        wrapper = ["bash", "-c", f'exec "$0" "$@" 3<&{commands_read} 4>&{results_write}']
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check"]
        flags += ["--disable-extensions", "--disable-background-networking", "--disable-component-update"]
        flags += ["--hide-scrollbars", f"--window-size={size}", "--remote-debugging-pipe", f"--user-data-dir={profile}"]
        self.profile = profile
        with (profile / "chromium.log").open("wb") as log:
            self.browser = subprocess.Popen(
                [*wrapper, str(chromium()), *flags, url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                pass_fds=(commands_read, results_write),
            )  # fmt: skip
        os.close(commands_read)
        os.close(results_write)
        self.call = _cdp(self._commands, self._results)
        self._session: str | None = None

    def close(self) -> None:
        _kill(self.browser)
        os.close(self._commands)
        os.close(self._results)

    def session(self) -> str:
        """The DevTools session of the page's tab (attached on first use)."""
        if self._session is None:
            page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self._session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        return self._session

    def evaluate(self, expression: str) -> dict[str, Any]:
        return self.call("Runtime.evaluate", self.session(), expression=expression, returnByValue=True)["result"]

    def pick(self, files: Sequence[Path], deadline: float) -> None:
        """Give `files` to the page's file picker, as a user choosing them (once the page waits for a model)."""
        while self.evaluate("document.body.dataset.state").get("value") != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the page never got ready for a model; its log:\n{_log_tail(self.profile)}")
            time.sleep(0.05)
        picker = self.call("Runtime.evaluate", self.session(), expression="document.getElementById('pick-files')")
        paths = [str(Path(f).resolve()) for f in files]
        self.call("DOM.setFileInputFiles", self.session(), files=paths, objectId=picker["result"]["objectId"])

    def wait_for(self, handler: type[_Handler], deadline: float) -> dict[str, Any]:
        while not handler.reported.wait(0.1):
            if self.browser.poll() is not None or time.monotonic() > deadline:
                why = "exited" if self.browser.poll() is not None else "sent nothing in time"
                raise RuntimeError(f"the page in headless Chromium {why}; its log:\n{_log_tail(self.profile)}")
        return handler.reports[0]

    def screenshot(self, png: Path) -> None:
        """The whole page (not only the window) as a PNG."""
        size = self.call("Page.getLayoutMetrics", self.session())["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", self.session(), format="png", clip=clip, captureBeyondViewport=True)
        Path(png).write_bytes(base64.b64decode(shot["data"]))


class Headless:
    """One local server and one headless Chromium tab for any number of page runs (Chromium starts once, which is
    most of a run's time): `with Headless() as browser: browser.run(model_dir, lines)`."""

    def __init__(self, size: str = "900,600") -> None:
        self.size = size

    def __enter__(self) -> Headless:
        if problem := missing_tools():
            raise RuntimeError(problem)
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lit-seq2seq-chromium-")))
            self.base, self.handler = stack.enter_context(serving(tmp))  # each run sets the model folder
            self.page = _Page("about:blank", tmp, self.size)
            stack.callback(self.page.close)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def run(
        self,
        model_dir: Path,
        lines: Sequence[str],
        *,
        path: str = "auto",
        untrained: bool = False,
        pick: Sequence[Path] | None = None,
        screenshot: Path | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        """Serve `model_dir`, let the page decode `lines`, return the JSON the page POSTs: {error, path, ms,
        results: [{line, input, tokens, text, error}]}. With `pick`, the page gets those files through its file
        picker instead of the served folder. With `screenshot`, a PNG of the page once it reported (through the
        DevTools protocol, so the times it shows are real ones). RuntimeError with Chromium's log when the page never
        reports."""
        self.handler.model_dir = Path(model_dir).resolve()
        self.handler.reports.clear()
        self.handler.reported.clear()
        deadline = time.monotonic() + timeout
        url = page_url(self.base, lines, path=path, untrained=untrained, served=pick is None)
        self.page.call("Page.navigate", self.page.session(), url=url)
        if pick is not None:
            self.page.pick(pick, deadline)
        report = self.page.wait_for(self.handler, deadline)
        if screenshot is not None:
            self.page.screenshot(screenshot)
        return report


def run_page(model_dir: Path, lines: Sequence[str], **options: Any) -> dict[str, Any]:
    """Headless().run(...) in a browser of its own (see Headless.run); RuntimeError naming what is missing."""
    with Headless() as browser:
        return browser.run(model_dir, lines, **options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", type=Path, required=True, help="an export folder (encoder.onnx, ...)")
    parser.add_argument("--port", type=int, default=8000, help="serving: the port on 127.0.0.1 (default 8000)")
    parser.add_argument("--check", action="store_true", help="headless: print the page's results for LINES as JSON")
    parser.add_argument(
        "--path",
        choices=PATHS,
        default="auto",
        help="with --check: decode by greedy.onnx (auto, the default), the two-graph loop (steps) or beam search",
    )
    parser.add_argument("--screenshot", type=Path, help="headless: write a PNG of the page decoding LINES")
    parser.add_argument("lines", nargs="*", help="sources for --check / --screenshot, one per argument")
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        parser.error(f"--model_dir {args.model_dir}: no such folder")
    if not (args.model_dir / "encoder.onnx").is_file():
        parser.error(f"--model_dir {args.model_dir}: no encoder.onnx there (give an export folder)")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in [0, 65535], got {args.port}")
    if args.path != "auto" and not args.check:
        parser.error("--path goes with --check")
    if args.screenshot and not args.screenshot.resolve().parent.is_dir():
        parser.error(f"--screenshot {args.screenshot}: no folder {args.screenshot.parent} to write it in")
    try:
        if args.check:  # exit code 1 when the page reports an error: a script can tell
            report = run_page(args.model_dir, args.lines, path=args.path)
            print(json.dumps(report, indent=1))
            return 1 if report.get("error") else 0
        if args.screenshot:
            report = run_page(args.model_dir, args.lines, screenshot=args.screenshot)
            print(f"wrote {args.screenshot}" + (f" (the page: {report['error']})" if report.get("error") else ""))
            return 0
    except RuntimeError as err:
        parser.exit(2, f"{err}\n")
    try:
        with serving(args.model_dir, args.port) as (base, _):
            print(f"open {base}/ (the page with --model_dir loaded); Ctrl-C stops", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    except OSError as err:  # the port is taken, or not ours to bind
        parser.exit(2, f"{parser.prog}: error: --port {args.port}: {err.strerror}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
