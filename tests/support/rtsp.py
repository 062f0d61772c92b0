"""Start and stop the test RTSP server (``rtsp_server.py``) as a subprocess on 127.0.0.1."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


@functools.lru_cache(maxsize=1)
def system_python() -> str | None:
    """A Python that can import GStreamer's RTSP server bindings, or None."""
    candidates = [os.environ.get("SALSTREAM_GI_PYTHON"), "/usr/bin/python3", shutil.which("python3")]
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import GstRtspServer")
    for exe in candidates:
        if not exe or not Path(exe).exists():
            continue
        try:
            ok = subprocess.run([exe, "-c", probe], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return exe
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class RtspTestServer:
    """One server process; ``start()`` waits until it accepts connections, ``kill()`` by PID."""

    def __init__(self, port: int | None = None, *, mount: str = "/live", audio: bool = True,
                 width: int = 320, height: int = 240, fps: int = 30, file: str | Path | None = None):
        self.port = port or free_port()
        self.mount = mount if mount.startswith("/") else "/" + mount
        self.args = ["--port", str(self.port), "--mount", self.mount, "--width", str(width),
                     "--height", str(height), "--fps", str(fps)] + ([] if audio else ["--no-audio"])
        if file is not None:
            self.args += ["--file", str(Path(file).resolve())]
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="rtsp-server-", suffix=".log", delete=False)
        self.ready_at: float | None = None  # monotonic time the server last became ready

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 20.0) -> "RtspTestServer":
        exe = system_python()
        if exe is None:
            raise RuntimeError("no Python with GStreamer's RTSP server bindings (install python3-gi and "
                               "gir1.2-gst-rtsp-server-1.0, see scripts/install-system-deps)")
        self.proc = subprocess.Popen([exe, str(SERVER_SCRIPT), *self.args], stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        ready = threading.Event()

        def watch(proc: subprocess.Popen) -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.startswith("READY"):
                    ready.set()
        threading.Thread(target=watch, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if ready.is_set() and port_accepts(self.port):
                self.ready_at = time.monotonic()
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"RTSP test server did not start on port {self.port}: {self.log_text()[-2000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server process abruptly (a camera losing power)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def log_text(self) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.kill()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> "RtspTestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
