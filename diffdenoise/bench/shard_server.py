"""A real HTTP server for shard folders, for the remote-shard tests and bench rows: Python's
``http.server`` on 127.0.0.1 in a thread, with the faults a network has on demand.

    with ShardServer(folder, latency=0.05) as server:
        url = f"{server.url}/train-{{000000..000003}}.tar"
"""

from __future__ import annotations

import collections
import contextlib
import functools
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def do_GET(self):  # http.server names its methods so
        name = self.path.lstrip("/").split("?")[0]
        self.server.requests[name] += 1
        time.sleep(self.server.latency)
        if self.server.failures.get(name, 0) > 0:
            self.server.failures[name] -= 1
            self.send_error(503, "Service Unavailable (injected)")
            return
        if name in self.server.truncated:
            data = (Path(self.directory) / name).read_bytes()
            cut = data[: len(data) // 2]
            self.send_response(200)
            self.send_header("Content-Length", str(len(cut)))
            self.end_headers()
            self.wfile.write(cut)
            return
        super().do_GET()

    def copyfile(self, source, outputfile):
        """The file by ``sendfile``, as a static file server sends it: the kernel copies
        it to the socket, and the server takes no CPU from the loader it feeds."""
        self.connection.sendfile(source)

    def log_message(self, *args):  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Connections waiting to be accepted, as a store's front end keeps: with socketserver's
    # 5, a loader's 16 requests at once overflow it, and a dropped SYN waits 1 s to retry.
    request_queue_size = 128
    requests: collections.Counter
    failures: dict
    truncated: set
    latency: float


class ShardServer:
    """Serves ``root`` at :attr:`url` until :meth:`stop`. ``failures[name] = n`` answers
    the next ``n`` requests for ``name`` with 503; a name in ``truncated`` is sent half
    its bytes (with a matching Content-Length); ``requests`` counts requests per name."""

    def __init__(self, root: Path, latency: float = 0.0):
        handler = functools.partial(_Handler, directory=str(root))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.requests = collections.Counter()
        self._server.failures, self._server.truncated = {}, set()
        self._server.latency = latency
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def latency(self) -> float:
        return self._server.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        """Seconds each request waits from now on."""
        self._server.latency = seconds

    @property
    def requests(self) -> collections.Counter:
        return self._server.requests

    @property
    def failures(self) -> dict:
        return self._server.failures

    @property
    def truncated(self) -> set:
        return self._server.truncated

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ShardServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def served_elsewhere(root: Path, latency: float = 0.0):
    """A :class:`ShardServer` in a child process, as a store is: its threads take no time
    from the loader being measured (a store's CPU is not the training node's, so the
    child runs at Linux's idle priority, on cores the loader leaves). Yields its base URL."""
    code = (
        "import os, sys, time; from pathlib import Path; "
        "hasattr(os, 'SCHED_IDLE') and os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); "
        "from diffdenoise.bench.shard_server import ShardServer; "
        "s = ShardServer(Path(sys.argv[1]), float(sys.argv[2])); print(s.url, flush=True); "
        "time.sleep(10**6)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(latency)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
