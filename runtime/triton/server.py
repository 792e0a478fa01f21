"""The real ``tritonserver`` of the serve extra (``nvidia-pytriton``), run on a repository.

    with TritonServer("repo/") as server:        # started, and ready
        print(server.http_url, server.grpc_url)
                                                 # stopped, its temporary folder removed

The wheel carries the server and its python backend; the backend's folder is laid out in the
server's own temporary folder (``--backend-directory``; nothing is written into
site-packages), with the stub built for the running Python. The stub is started by the server
and runs the models' code in this environment: its ``bin`` first on PATH (the stub finds this
Python's numpy and packages that way), the interpreter's LIBDIR on LD_LIBRARY_PATH (the stub
links libpython), and the wheel's own libraries there too.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

from inctrl_runtime.errors import InputError

INSTALL_SERVE = 'pip install "inctrl[serve]"'
LOG = "tritonserver.log"
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB = "triton_python_backend_stub"  # the program each python model instance runs in
# How long the server may take to finish in-flight requests once told to stop.
EXIT_TIMEOUT_S = 10
# Where the python backend keeps what its stubs share with the server: regions named
# <prefix><uuid> (each server gets a prefix of its own, to find them by), and a folder a stub
# makes for its Python environment.
SHARED_MEMORY = Path("/dev/shm")
PYTHON_ENVS = "/tmp/python_env_*"


def serving_problem() -> str | None:
    """Why this environment cannot serve (one line that says what to install), or None."""
    if not all(_installed(name) for name in ("pytriton", "tritonclient")):
        return f"serving needs the serve extra (nvidia-pytriton, tritonclient): {INSTALL_SERVE}"
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        return (
            f"serving needs numpy<2 (Triton's python backend fails every response with numpy "
            f"{numpy.__version__}): {INSTALL_SERVE}"
        )
    if not _server_binary().is_file() or not _stub_source().is_file():
        return (
            f"the serve extra has no tritonserver or no python backend stub for Python "
            f"{sys.version_info.major}.{sys.version_info.minor}: {INSTALL_SERVE}"
        )
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules: blocked, as if not installed
        return False


def _distribution() -> Path:
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "tritonserver"


def _server_binary() -> Path:
    return _distribution() / "bin" / "tritonserver"


def _stub_source() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return _distribution() / "python_backend_stubs" / version / STUB


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_address(host: str, ports: dict[str, int]) -> None:
    """Refuse, in one line, a host this machine cannot listen on and a port out of range
    (``ports``: option -> port; 0 is a free one)."""
    for option, port in ports.items():
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InputError(f"{option} {port}: not a port; give 1 to 65535, or 0 for a free one")
    try:
        free_port(host)
    except OSError as err:  # socket.gaierror too: a name that does not resolve
        raise InputError(
            f"--host {host}: this machine cannot listen there ({err.strerror or err}); give one "
            "of its addresses, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (all)"
        ) from None


def server_environment() -> dict[str, str]:
    """This environment for the server and its stub (see the module's docstring)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), env.get("PATH", "")])
    libraries = [
        sysconfig.get_config_var("LIBDIR") or "",
        str(_distribution().parent.parent / "nvidia_pytriton.libs"),
        env.get("LD_LIBRARY_PATH", ""),
    ]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libraries if p)
    return env


def _die_with_parent() -> None:
    # The server goes when the process that started it dies, even by SIGKILL (Linux).
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """One ``tritonserver`` on a model repository, bound to ``host``; a port of 0 is a free
    one. Use it as a context manager (started and ready inside, stopped after) or call
    ``start``, ``wait_ready`` and ``stop``."""

    def __init__(
        self,
        repository: str | os.PathLike,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
        check_address(host, ports)
        self.repository = Path(repository)
        self.workdir = workdir  # where its temporary folder goes (None: the system's)
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None
        # This server's shared-memory prefix, and the stubs' folders that were there before it.
        self.shm_prefix = f"inctrl_{os.getpid()}_{uuid.uuid4().hex[:12]}_"
        self._envs_before: set[str] = set()

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log(self) -> Path | None:
        """The server's log (stdout and stderr), while it runs."""
        return None if self.folder is None else self.folder / LOG

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log ("" when there is none)."""
        if self.log is None or not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def command(self) -> list[str]:
        """The server's command line (once ``start`` laid out its backend folder)."""
        assert self.folder is not None
        return [
            str(_server_binary()),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self.folder / 'backends'}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            # every model loaded at start, and loadable again (a stub that died: watchdog)
            "--model-control-mode=explicit",
            "--load-model=*",
            "--log-verbose=0",
        ]

    def start(self) -> TritonServer:
        """Lay out the python backend in a new temporary folder and start the server."""
        problem = serving_problem()
        if problem:
            raise InputError(problem)
        if self.process is not None:
            raise RuntimeError("this server is already started")
        if not self.repository.is_dir():
            raise InputError(f"{self.repository}: no such model repository folder")
        self.folder = Path(tempfile.mkdtemp(prefix="inctrl-triton-", dir=self.workdir))
        self._envs_before = set(glob.glob(PYTHON_ENVS))
        try:
            backend = self.folder / "backends" / "python"
            backend.mkdir(parents=True)
            source = _distribution() / "backends" / "python"
            for name in _BACKEND_FILES:
                (backend / name).symlink_to(source / name)
            (backend / STUB).symlink_to(_stub_source())
            with open(self.folder / LOG, "wb") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=server_environment(),
                    start_new_session=True,  # its own group: the stubs go with it (stop)
                    preexec_fn=_die_with_parent,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def http_client(self, timeout: float):
        """A ``tritonclient.http`` client of this server, from this machine."""
        import tritonclient.http

        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return tritonclient.http.InferenceServerClient(
            f"{host}:{self.http_port}", connection_timeout=timeout, network_timeout=timeout
        )

    def ready(self) -> bool:
        """Whether the server answers ready on HTTP (every model loaded)."""
        client = self.http_client(2.0)
        try:
            return bool(client.is_server_ready())
        except Exception:  # refused or reset while it starts: not ready yet
            return False
        finally:
            client.close()

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until the server is ready; returns the seconds waited. A server that exits or
        is not ready in ``timeout`` seconds is stopped, and the one-line error quotes its
        log's last lines."""
        if self.process is None:
            raise RuntimeError("start the server first")
        began = time.monotonic()
        while not self.ready():
            code = self.process.poll()
            waited = time.monotonic() - began
            if code is not None or waited > timeout:
                self.stop_with(
                    f"exited with code {code}"
                    if code is not None
                    else f"not ready after {timeout:g} s"
                )
            time.sleep(0.2)
        return time.monotonic() - began

    def stop_with(self, what: str) -> None:
        """Stop the server and raise the one-line error that says ``what`` happened to it,
        quoting the last lines of its log."""
        tail = self.log_tail(200).splitlines()
        # Triton's error lines ('E1202 10:00:00.1 123 file.cc:45] "..."'): a model's failed
        # load first, else a service's failed start (a port in use), else the last one (a CPU
        # machine logs a CUDA error at every start); a python model's traceback follows its
        # message after an escaped newline.
        errors = [line.split("] ", 1)[-1] for line in tail if re.match(r"E\d{4} ", line)]
        errors = (
            [e for e in errors if "failed to load" in e]
            or [e for e in errors if "failed to start" in e]
            or errors[-1:]
        )
        said = errors[0].split("\\n")[0].strip('" ') if errors else " | ".join(tail[-3:])
        self.stop()
        raise InputError(f"tritonserver on {self.repository}: {what}; its log says: {said}")

    def stop(self, timeout: float = EXIT_TIMEOUT_S + 10) -> None:
        """SIGTERM the server (it unloads its models and stops their stubs), SIGKILL what is
        left of its process group after ``timeout`` seconds, and remove the temporary folder
        and what its stubs leave when one is killed before it cleans up (every exit path,
        a failed start included): its shared-memory regions (by its prefix) and the empty
        folders its stubs made for their Python environment."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # the group it leads: itself and stubs
            process.wait()
            for region in SHARED_MEMORY.glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)
            for folder in set(glob.glob(PYTHON_ENVS)) - self._envs_before:
                with contextlib.suppress(OSError):  # not empty, or not ours to remove
                    os.rmdir(folder)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
