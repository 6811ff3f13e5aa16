"""Which Prefect API a train.py run talks to: a server that is already up, or Prefect's temporary server started
beside the run, without importing Prefect here (the CLI starts it before its heavy imports, so that both proceed at
once).

Order: PREFECT_API_URL (environment, or the active Prefect profile) when it answers; else the local stack that
`make demo` (scripts/local_stack.py) started, when it answers and this process uses the default Prefect home; else a
temporary server. The temporary server is the one Prefect itself would start (`prefect.server.api.server:create_app`
under uvicorn, UI off, ephemeral services), launched the way SubprocessASGIServer launches it; starting it here
instead of through that class saves importing Prefect's server package (~3 s) into this process.
"""
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPORARY_HOME = REPO / ".torchyard" / "prefect"  # a temporary server's state, inside the project (not ~/.prefect)
STACK_STATE = REPO / ".torchyard" / "stack"  # scripts/local_stack.py writes server.url and server.home here
START_TIMEOUT = float(os.environ.get("TORCHYARD_PREFECT_START_TIMEOUT", "300"))  # a cap; a dead server fails at once


def answers(api_url: str, timeout: float = 2.0) -> bool:
    """True when something answers HTTP at `api_url`/health (any status: an auth error still means a server)."""
    try:
        urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout).close()
        return True
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return isinstance(exc, urllib.error.HTTPError)


def configured_api_url(env=os.environ) -> str | None:
    """PREFECT_API_URL from the environment, else from the active profile in profiles.toml (what Prefect would use)."""
    if env.get("PREFECT_API_URL"):
        return env["PREFECT_API_URL"]
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(env.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = env.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") or None


def local_stack_url(env=os.environ, state: Path = STACK_STATE) -> str | None:
    """The API URL of the server `make demo` started, when it answers. Skipped when this process has a Prefect home
    of its own (PREFECT_HOME set to another folder, as the tests do): that asks for separate Prefect state."""
    try:
        url = (state / "server.url").read_text().strip()
        home = (state / "server.home").read_text().strip()
    except OSError:
        return None
    if env.get("PREFECT_HOME") and Path(env["PREFECT_HOME"]).expanduser().resolve() != Path(home).resolve():
        return None
    return url if url and answers(url) else None


def free_port() -> int:
    """A loopback port nothing listens on (the OS's pick, released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In a child process (the server before it starts, a warm process's run): the kernel sends it SIGTERM when its
    parent dies, even by kill -9, so no temporary server outlives the run that started it (Linux's
    PR_SET_PDEATHSIG; it follows the thread that started the child, train.py's main thread for the server)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class TemporaryServer:
    """Prefect's temporary API server in a child process; `wait()` until it answers, `stop()` when done."""

    def __init__(self, env=os.environ):
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        prefect_dir = Path(find_spec("prefect").origin).parent
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
                   "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                   "--log-level", "error", "--lifespan", "on"]
        server_env = {**env, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                      "PREFECT__SERVER_FINAL": "1"}
        server_env.pop("PREFECT_API_URL", None)
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, env=server_env, stdin=subprocess.DEVNULL,
                                        preexec_fn=die_with_parent if sys.platform == "linux" else None)
        self.ready_seconds: float | None = None

    def wait(self, timeout: float = START_TIMEOUT) -> float:
        """Seconds from the start until the server answered. RuntimeError if it exits or never answers."""
        while self.ready_seconds is None:
            if answers(self.api_url, timeout=1.0):
                self.ready_seconds = time.monotonic() - self.started
            elif self.process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode} before "
                                   "it answered")
            elif time.monotonic() - self.started > timeout:
                self.stop()
                raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s")
            else:
                time.sleep(0.05)
        return self.ready_seconds

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (uvicorn shuts down cleanly, as when Prefect stops it), SIGKILL after `timeout`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def connect(env=os.environ) -> tuple[str, TemporaryServer | None, str]:
    """(API URL, the temporary server or None, where it came from). Sets PREFECT_API_URL in `env` so that Prefect,
    imported after this, uses it; a temporary server gets no UI URL (it is gone after the run, so MLflow runs are not
    tagged with a link to it). Call before importing prefect."""
    configured = configured_api_url(env)
    if configured and answers(configured):
        env["PREFECT_API_URL"] = configured
        return configured, None, "PREFECT_API_URL"
    stack = None if configured else local_stack_url(env)
    if stack:
        env["PREFECT_API_URL"] = stack
        return stack, None, "the local stack (make demo)"
    if not env.get("PREFECT_HOME"):  # the server's SQLite database and this process's Prefect files stay here
        env["PREFECT_HOME"] = str(TEMPORARY_HOME)
    Path(env["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)  # the server does not create it
    server = TemporaryServer(env)
    env["PREFECT_API_URL"] = server.api_url
    env["PREFECT_UI_URL"] = ""
    why = f"{configured} does not answer; " if configured else ""
    return server.api_url, server, f"{why}a temporary server"
