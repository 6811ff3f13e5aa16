"""A warm process for train.py: the imports, the Prefect API and the first-use loads done once, each run a fork.

Most of a small train.py run is start-up that is the same every time (bench/bench_startup.py: ~7 s of imports, a
temporary Prefect server, torch._dynamo and MLflow's package map on first use). After a run, train.py leaves a
process behind that has done all of that and waits on a Unix socket (in a 0700 folder of the user's temporary
directory). The next train.py with the same interpreter, project and environment hands it its arguments, working
folder, environment and its stdin/stdout/stderr (SCM_RIGHTS); the warm process forks, and the child runs
`train.main()` exactly as the cold process would (the same flow, a fresh MLflow client and Prefect run; nothing
from one run is seen by the next, since each is a fork of the same never-used state), writes to the caller's
terminal, and sends back its exit code. Ctrl-C in the caller is passed on to the child.

What keeps it honest:
- one warm process per (interpreter, project, environment): a run with any other environment variable set or
  changed starts cold (Prefect and torch read some of them at import time);
- it is not used, and exits, when a project module it loaded or the installed packages changed since it started;
- it exits after TORCHYARD_WARM_PROCESS seconds without a run (default 600; "0" turns the whole thing off), never
  while a run is going; `make stop` / `python -m flows.warm_process stop` stops every one of this user's;
- it never touches torch's thread pools, CUDA or a database before forking (imports only), so each child starts
  as clean as a new process.
"""
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTING = "TORCHYARD_WARM_PROCESS"
DEFAULT_IDLE_SECONDS = 600.0
# Variables a shell changes from one command to the next, or that only say how the caller was started: not part of
# what a run sees. Every other variable must match for a run to use a warm process.
VOLATILE = {"_", "OLDPWD", "PWD", "SHLVL", "COLUMNS", "LINES", "TERM", "COLORTERM", "TERM_PROGRAM",
            "TERM_PROGRAM_VERSION", "TERM_SESSION_ID", "SSH_TTY", "WINDOWID", "PS1", "TORCHYARD_STARTUP_TRACE",
            "PYTEST_CURRENT_TEST"}


def idle_seconds(env=os.environ) -> float:
    """How long a warm process waits for a run; 0 when warm processes are off (the setting, or no fork here)."""
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        return 0.0
    value = env.get(SETTING, "").strip().lower()
    if value in ("", "1", "on", "true", "yes"):
        return DEFAULT_IDLE_SECONDS
    if value in ("0", "off", "false", "no"):
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return DEFAULT_IDLE_SECONDS


def folder(env=os.environ) -> Path:
    """This user's socket folder (in TMPDIR): created 0700, refused when another user owns it or others can enter."""
    path = Path(env.get("TMPDIR") or tempfile.gettempdir()) / f"torchyard-warm-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path} must belong to this user with mode 0700")
    return path


def key(env=os.environ) -> str:
    """What a warm process must share with a run: interpreter, project and the environment (less VOLATILE)."""
    kept = sorted((k, v) for k, v in env.items() if k not in VOLATILE)
    text = json.dumps([sys.executable, str(REPO), kept])
    return hashlib.sha256(text.encode()).hexdigest()


def socket_path(env=os.environ) -> Path:
    return folder(env) / f"{key(env)[:20]}.sock"


# ----------------------------------------------------------------------------------------------------------- client

def run(argv: list[str], env=os.environ) -> int | None:
    """Run train.py's `argv` in the warm process for this environment and return its exit code; None when there is
    none ready for it (not started, stale, stopped, or turned off), and the caller runs cold."""
    if not idle_seconds(env):
        return None
    try:
        path = socket_path(env)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(path))
    except OSError:
        return None
    with conn:
        request = json.dumps({"argv": argv, "env": dict(env), "cwd": os.getcwd(), "key": key(env)}).encode()
        try:
            _send(conn, request, [0, 1, 2])
            replies = conn.makefile("r")
            first = json.loads(replies.readline() or "{}")
        except (OSError, ValueError):
            return None
        child = first.get("pid")
        if not child:
            return None  # stale or stopping: it says so and exits; this run goes cold
        forward = lambda signum, frame: _signal(child, signum)  # noqa: E731
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            last = replies.readline()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    try:
        return int(json.loads(last)["exit"])
    except (ValueError, KeyError, TypeError):
        print(f"error: the run in the warm process (pid {child}) ended without an exit code; it was killed",
              file=sys.stderr)
        return 1


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def start(env=os.environ) -> int | None:
    """Start a warm process for `env` in the background (its own session: a Ctrl-C in this terminal does not reach
    it); its pid, or None when they are off or one is already there."""
    idle = idle_seconds(env)
    if not idle:
        return None
    try:
        path = socket_path(env)
    except OSError:
        return None
    if _answers(path):
        return None
    try:
        with open(path.with_suffix(".log"), "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "flows.warm_process", "serve"], cwd=REPO,
                                       env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
    except OSError as exc:  # the run itself is done; only the next one is cold
        print(f"warning: no warm process for the next run: {exc}", file=sys.stderr)
        return None
    return process.pid


def _send(conn: socket.socket, message: bytes, fds: list[int] = ()) -> None:
    """One byte carrying the file descriptors (SCM_RIGHTS), then the JSON message, then end of writing."""
    socket.send_fds(conn, [b"\0"], list(fds))
    conn.sendall(message)
    conn.shutdown(socket.SHUT_WR)


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(path))
            _send(probe, b'{"ping": true}')
        return True
    except OSError:
        return False


def stop_all(env=os.environ) -> int:
    """Ask every warm process of this user to stop (each exits once its running children are done); how many."""
    return sum(_stop(path) for path in folder(env).glob("*.sock"))


def stop(env=os.environ) -> bool:
    """Ask the warm process for `env` to stop; False when there was none."""
    return _stop(socket_path(env))


def _stop(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(path))
            _send(conn, b'{"stop": true}')
            conn.recv(100)
        return True
    except OSError:
        path.unlink(missing_ok=True)  # left by a process that was killed
        return False


# ----------------------------------------------------------------------------------------------------------- server

class _Fingerprint:
    """mtimes of the project's loaded modules and of the site-packages folders (an install or upgrade changes
    them): when any differs, the loaded code is not what a new process would load."""

    def __init__(self):
        self.files = self._files()

    @staticmethod
    def _files() -> dict[str, int]:
        paths = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
        paths = {p for p in paths if p and Path(p).resolve().is_relative_to(REPO)}
        paths |= {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
        found = {}
        for path in paths:
            try:
                found[path] = os.stat(path).st_mtime_ns
            except OSError:
                found[path] = -1
        return found

    def changed(self) -> bool:
        for path, mtime in self.files.items():
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return True
            except OSError:
                if mtime != -1:
                    return True
        return False


def serve() -> int:
    """The warm process: listen first (a run that comes meanwhile waits in the backlog rather than going cold), then
    the Prefect API and the imports, then one fork per run until idle or stopped."""
    # as `python train.py` has it: the project first and no working folder (`-m` put it there), so that a module
    # in the caller's folder can never shadow a library the run imports later
    sys.path[:] = [str(REPO), *(p for p in sys.path if p not in ("", os.getcwd(), str(REPO)))]
    idle, my_key, path = idle_seconds(), key(), socket_path()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError:
        if _answers(path):
            return 0  # another one got there first
        path.unlink(missing_ok=True)
        listener.bind(str(path))
    listener.listen(16)
    mine = os.stat(path).st_ino  # a later warm process may bind the same path once this one stops listening
    server = None
    try:
        from flows import prefect_server

        before = dict(os.environ)
        api_url, server, source = prefect_server.connect()  # sets PREFECT_API_URL (and PREFECT_HOME) here
        added = {k: v for k, v in os.environ.items() if before.get(k) != v}  # ... and so in every run
        import train

        train.load_ahead()  # while the temporary server starts
        if server is not None:
            server.wait()
            source = "a temporary server kept by the warm process"
        fingerprint = _Fingerprint()
        print(f"warm process {os.getpid()} ready on {path} (Prefect API {api_url})", flush=True)
        _loop(listener, idle, my_key, fingerprint, {"added": added, "private": server is not None,
                                                    "banner": f"Prefect API: {api_url} ({source}"})
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == mine:
                path.unlink()
        if server is not None:
            server.stop()
    return 0


def _loop(listener: socket.socket, idle: float, my_key: str, fingerprint: _Fingerprint, setup: dict) -> None:
    """Accept runs until idle (and no run going) or told to stop; a stale request stops it too (the run goes cold
    and starts a fresh warm process after)."""
    children: set[int] = set()
    last_run, stopping = time.monotonic(), False
    listener.settimeout(2.0)
    while True:
        children = {pid for pid in children if not _reaped(pid)}
        if not children and (stopping or time.monotonic() - last_run > idle):
            return
        if stopping:
            time.sleep(0.5)
            continue
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(10)
            try:
                message, fds = _receive(conn)
            except OSError:
                continue
            try:
                if message.get("stop"):
                    stopping = True
                    conn.sendall(b"{}\n")
                elif "argv" in message:
                    if message.get("key") != my_key or fingerprint.changed():
                        stopping = True
                        conn.sendall(b'{"stale": true}\n')
                    else:
                        children.add(_fork_run(message, fds, conn, listener, setup))
                        last_run = time.monotonic()
            except OSError:
                pass
            finally:
                for fd in fds:
                    os.close(fd)
        if stopping:
            listener.close()


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return True


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
    chunks = []
    while data := conn.recv(1 << 20):
        chunks.append(data)
    try:
        return json.loads(b"".join(chunks) or b"{}"), fds
    except ValueError:
        return {}, fds


def _fork_run(message: dict, fds: list[int], conn: socket.socket, listener: socket.socket, setup: dict) -> int:
    """The child: the caller's stdin/stdout/stderr, folder, environment (plus the Prefect API this process
    connected to) and arguments, then train.py's own run-and-finish; the exit code goes back over `conn`."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        listener.close()
        conn.settimeout(None)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True)
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(message["env"])
        os.environ.update(setup["added"])
        sys.argv = ["train.py", *message["argv"]]
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        print(f"{setup['banner']}; warm process {os.getppid()})", file=sys.stderr, flush=True)
        import train

        code = train.run_and_finish(message["argv"], None, private_api=setup["private"])
    finally:
        try:
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        finally:
            os._exit(code)


def main(argv=None) -> int:
    command = (argv if argv is not None else sys.argv[1:]) or ["serve"]
    if command[0] == "serve":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return serve()
    if command[0] == "stop":
        print(f"stopped {stop_all()} warm process(es)")
        return 0
    print("usage: python -m flows.warm_process [serve|stop]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
