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
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTING = "TORCHYARD_WARM_PROCESS"
DEFAULT_IDLE_SECONDS = 600.0
START_WAIT = 300.0  # how long a run waits for a warm process that is still starting (imports on a busy machine)
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


# Files Prefect reads from the working folder when it is imported (its settings sources): a folder with any of them
# gets warm processes of its own, started there.
FOLDER_SETTINGS = ("prefect.toml", ".env", "pyproject.toml")


def key(env=os.environ, cwd: str | None = None) -> str:
    """What a warm process must share with a run: interpreter, project, the environment (less VOLATILE), and the
    working folder with the contents of its FOLDER_SETTINGS when it has any."""
    kept = sorted((k, v) for k, v in env.items() if k not in VOLATILE)
    folder_settings = []
    cwd = cwd or os.getcwd()
    for name in FOLDER_SETTINGS:
        with contextlib.suppress(OSError):
            folder_settings.append([name, hashlib.sha256(Path(cwd, name).read_bytes()).hexdigest()])
    text = json.dumps([sys.executable, str(REPO), kept, [cwd, folder_settings] if folder_settings else None])
    return hashlib.sha256(text.encode()).hexdigest()


def socket_path(env=os.environ, cwd: str | None = None) -> Path:
    return folder(env) / f"{key(env, cwd)[:20]}.sock"


# ----------------------------------------------------------------------------------------------------------- client

def run(argv: list[str], env=os.environ) -> int | None:
    """Run train.py's `argv` in the warm process for this environment and return its exit code; None when there is
    none ready for it (not started, stale, stopped, stuck, or turned off), and the caller runs cold."""
    if not idle_seconds(env):
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(socket_path(env)))
    except OSError:
        return None
    with conn:  # kept open both ways until the end: the child stops its run when this process is gone
        request = {"argv": argv, "argv0": sys.argv[0], "env": dict(env), "cwd": os.getcwd(), "key": key(env)}
        try:
            _send(conn, request, [0, 1, 2])
            replies = conn.makefile("r")
            first = _first_reply(conn, replies)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (OSError, ValueError):
            return None
        if not (child := first.get("pid")):
            return None  # stale or stopping: it says so and exits; this run goes cold
        forwarded = []

        def forward(signum, frame):
            forwarded.append(signum)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            last = replies.readline()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    try:
        return int(json.loads(last)["exit"])
    except (ValueError, KeyError, TypeError):
        if forwarded:  # it ended by the signal this process passed on (Prefect re-raises SIGTERM): as a shell says
            return 128 + forwarded[-1]
        print(f"error: the run in the warm process (pid {child}) ended without an exit code; it was killed",
              file=sys.stderr)
        return 1


def _first_reply(conn: socket.socket, replies) -> dict:
    """The warm process's answer: at once when it is ready; a warm process still starting (the one the previous run
    left) is waited for, saying so, up to START_WAIT seconds; one that does not answer by then is left for a cold
    run (ValueError)."""
    if not select.select([conn], [], [], 1.0)[0]:
        print("waiting for the warm process to finish starting ...", file=sys.stderr, flush=True)
        if not select.select([conn], [], [], START_WAIT)[0]:
            print(f"warning: the warm process did not answer in {START_WAIT:.0f} s; running without it",
                  file=sys.stderr, flush=True)
            raise ValueError("no answer")
    return json.loads(replies.readline() or "{}")


def start(env=os.environ) -> int | None:
    """Start a warm process for `env` in the background (its own session: a Ctrl-C in this terminal does not reach
    it); its pid, or None when they are off or one is already there."""
    if not idle_seconds(env):
        return None
    try:
        path = socket_path(env)
    except OSError:
        return None
    if _call(path, {"ping": True}):
        return None
    try:
        with open(path.with_suffix(".log"), "wb") as log:  # this warm process's log, beside its socket
            process = subprocess.Popen([sys.executable, "-m", "flows.warm_process", "serve"], cwd=os.getcwd(),
                                       env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
    except OSError as exc:  # the run itself is done; only the next one is cold
        print(f"warning: no warm process for the next run: {exc}", file=sys.stderr)
        return None
    return process.pid


def _send(conn: socket.socket, message: dict, fds: list[int] = ()) -> None:
    """One byte carrying the file descriptors (SCM_RIGHTS), then the message: one line of JSON."""
    socket.send_fds(conn, [b"\0"], list(fds))
    conn.sendall(json.dumps(message).encode() + b"\n")


def _call(path: Path, message: dict) -> bool:
    """Send `message` ({"ping": true} or {"stop": true}) to the warm process at `path`, and for a stop wait for its
    answer; False when none answers (a stop then removes the socket, left by a process that was killed)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(path))
            _send(conn, message)
            if message.get("stop"):
                conn.recv(100)
        return True
    except OSError:
        if message.get("stop"):
            path.unlink(missing_ok=True)
        return False


def stop_all(env=os.environ) -> int:
    """Ask every warm process of this user to stop (each exits once its running children are done); how many."""
    return sum(_call(path, {"stop": True}) for path in folder(env).glob("*.sock"))


def stop(env=os.environ) -> bool:
    """Ask the warm process for `env` to stop; False when there was none."""
    return _call(socket_path(env), {"stop": True})


# ----------------------------------------------------------------------------------------------------------- server

class _Fingerprint:
    """mtimes of the project's loaded modules and of the site-packages folders (an install or upgrade changes
    them): when any differs, the loaded code is not what a new process would load."""

    def __init__(self):
        paths = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
        paths = {p for p in paths if p and Path(p).resolve().is_relative_to(REPO)}
        self.files = self._mtimes(paths | {sysconfig.get_paths()[k] for k in ("purelib", "platlib")})

    @staticmethod
    def _mtimes(paths) -> dict[str, int]:
        found = {}
        for path in paths:
            try:
                found[path] = os.stat(path).st_mtime_ns
            except OSError:
                found[path] = -1  # gone: changed only if it comes back
        return found

    def changed(self) -> bool:
        return self._mtimes(self.files) != self.files


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
        if _call(path, {"ping": True}):
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
        stopping = stopping or bool(_SIGNALLED)
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
            conn.settimeout(None)  # the child keeps it for as long as its run takes
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
    while (data := conn.recv(1 << 20)) and not data.endswith(b"\n"):
        chunks.append(data)
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
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        listener.close()
        _as_a_new_process(parent)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        env = message["env"]
        # the buffering Python gives a new process: stdout by line on a terminal, stderr by line, both unbuffered
        # with PYTHONUNBUFFERED
        unbuffered = bool(env.get("PYTHONUNBUFFERED"))
        sys.stdout.reconfigure(line_buffering=os.isatty(1), write_through=unbuffered)
        sys.stderr.reconfigure(line_buffering=True, write_through=unbuffered)
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(env)
        os.environ.update(setup["added"])
        sys.argv = [message.get("argv0") or "train.py", *message["argv"]]
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        threading.Thread(target=_end_with_the_caller, args=(conn,), daemon=True).start()
        print(f"{setup['banner']}; warm process {parent})", file=sys.stderr, flush=True)
        import train

        code = train.run_and_finish(message["argv"], None, private_api=setup["private"])
    finally:
        try:
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        finally:
            os._exit(code)


def _as_a_new_process(parent: int) -> None:
    """Signals as a new process has them (the warm process handles SIGTERM itself, and may have inherited an
    ignored SIGINT from a shell without job control); on Linux, SIGTERM when the warm process dies (its Prefect
    server goes with it, so the run could not finish anyway)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    if sys.platform == "linux":
        from flows.prefect_server import die_with_parent

        die_with_parent()
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)


def _end_with_the_caller(conn: socket.socket) -> None:
    """The caller keeps its end open until it has the exit code: end of file means it is gone (kill -9, its
    terminal closed), and the run stops as a cold one would on SIGTERM, not on unseen."""
    with contextlib.suppress(OSError):
        while conn.recv(1024):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


_SIGNALLED: list[int] = []


def main(argv=None) -> int:
    command = (argv if argv is not None else sys.argv[1:]) or ["serve"]
    if command[0] == "serve":
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # stop as `stop` does: after the runs going
            signal.signal(signum, lambda signum, frame: _SIGNALLED.append(signum))
        return serve()
    if command[0] == "stop":
        print(f"stopped {stop_all()} warm process(es)")
        return 0
    print("usage: python -m flows.warm_process [serve|stop]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
