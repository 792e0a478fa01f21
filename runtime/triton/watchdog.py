"""Bringing a python model back when its stub process dies.

Each python model instance runs in a stub process that the server starts. The server of the
serve extra (Triton 2.51) does not restart a stub that died (killed, out of memory): every
later request to that model fails ("Stub process ... is not healthy") while the server and the
model still say they are ready. ``StubWatchdog`` watches the server's stubs and, when a model
has fewer than it started with, loads that model again through the repository API (the server
runs with explicit model control; the model's file is touched first, so that the server does
not take the load for a no-op), which starts new stubs in about two seconds. A model it cannot
load again is reported (``failed``), for the caller to stop the server with one line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from inctrl_runtime.triton.names import PYTHON_MODEL, VERSION
from inctrl_runtime.triton.server import STUB

if TYPE_CHECKING:
    from inctrl_runtime.triton.server import TritonServer

LOAD_TIMEOUT_S = 60.0


def stubs(server_pid: int) -> dict[str, list[int]]:
    """The pids of the server's python stubs, by model (from /proc: the stubs are the server's
    children, started on ``<repository>/<model>/1/model.py``)."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        parent = stat.rsplit(")", 1)[-1].split()[1]  # after the command: state, ppid, ...
        if parent == str(server_pid) and len(words) > 1 and words[0].endswith(STUB.encode()):
            model = Path(words[1].decode(errors="replace")).parent.parent.name
            found.setdefault(model, []).append(int(entry.name))
    return found


class StubWatchdog:
    """Watches a started, ready server's python stubs every ``interval`` seconds, in a thread
    of its own, and loads a model again when one of its stubs died; ``report`` hears one line
    of each event. ``failed`` holds why a model could not be brought back (None: all well)."""

    def __init__(
        self,
        server: TritonServer,
        interval: float = 0.5,
        report: Callable[[str], None] = lambda line: None,
    ) -> None:
        if server.process is None:
            raise RuntimeError("start the server first")
        self.server, self.interval, self.report = server, interval, report
        self.expected = {model: len(pids) for model, pids in stubs(server.process.pid).items()}
        self.failed: str | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stub-watchdog", daemon=True)

    def start(self) -> StubWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> None:
        """Load again every model that has fewer stubs than it started with."""
        process = self.server.process
        if process is None or process.poll() is not None:
            return
        running = stubs(process.pid)
        for model, count in self.expected.items():
            if len(running.get(model, ())) < count and self.failed is None:
                self._load_again(model)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def _load_again(self, model: str) -> None:
        from tritonclient.utils import InferenceServerException

        began = time.monotonic()
        (self.server.repository / model / VERSION / PYTHON_MODEL).touch()
        client = self.server.http_client(LOAD_TIMEOUT_S)
        try:
            client.load_model(model)
        except (InferenceServerException, OSError) as err:
            self.failed = f"{model}: a python stub died and the model did not load again ({err})"
            self.report(self.failed)
            return
        finally:
            client.close()
        self.restarts += 1
        self.report(
            f"{model}: a python stub died; loaded it again in {time.monotonic() - began:.1f} s"
        )
