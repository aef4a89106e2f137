"""The reaper: every process a node's jobs started dies with the node, however the node ends.

Shell jobs (and process-isolated python jobs) run in sessions of their own, so that a timeout or
cancel can stop everything they started; the same isolation means that nothing stops them when
their node is killed (`kill -9`, a crash, `os._exit`). The cluster then marks their tasks lost
and runs the recoveries beside them. So each node starts one reaper, a tiny process of its own:

- the node sets `OPSCENTER_NODE_TOKEN` (a random token of its own) in its environment, so every
  process it starts carries it, and children of children too (a token costs a fire nothing);
- the node holds the only write end of the reaper's stdin; when the node ends, however it ends,
  the kernel closes it and the reaper reads EOF;
- the reaper then SIGKILLs every process whose environment carries the token (read from
  /proc/PID/environ), again and again until none is left (a process may fork meanwhile), and
  exits. SIGKILL, not SIGTERM: nobody is left to record their results, and their recoveries must
  not overlap them.

A process that starts a program with a scrubbed environment (`env -i`, a daemon that resets its
environment) escapes the reaper. Linux only (it reads /proc); elsewhere it does nothing.

Run as `python -I scheduler/reaper.py` (stdlib only, no Django): the first line on stdin is the
token, then nothing until the node ends (EOF, or its pid is gone: a process the node forked
without exec holds a copy of the pipe) or stops cleanly (a second line). Such a forked process
carries no token in /proc/PID/environ (the node set it after its own start) and escapes.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

TOKEN_VAR = "OPSCENTER_NODE_TOKEN"  # noqa: S105 (the name of a variable, not a secret)

# How long the reaper keeps killing before it gives up (a fork bomb could outrun it for ever).
_REAP_FOR = 5.0


def job_processes(token: str, exclude: frozenset[int] = frozenset()) -> list[int]:
    """PIDs of the processes whose initial environment holds TOKEN_VAR=token."""
    needle = f"\0{TOKEN_VAR}={token}\0".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # A zombie's environ reads empty: it is dead already.
        if needle in b"\0" + environ + b"\0":
            found.append(int(entry))
    return found


def reap(token: str) -> int:
    """SIGKILL every process of the token until none is left; returns how many were killed."""
    killed: set[int] = set()
    exclude = frozenset({os.getpid()})
    deadline = time.monotonic() + _REAP_FOR
    pause = 0.001
    while True:
        pids = job_processes(token, exclude)
        if not pids:
            return len(killed)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            killed.add(pid)
        if time.monotonic() > deadline:
            print(f"opscenter reaper: processes of token still present after {_REAP_FOR:g} s: "
                  f"{pids}", file=sys.stderr, flush=True)
            return len(killed)
        # A process that was killed a moment ago may still be dying; look again shortly.
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _wait_for_the_node_to_end(stdin_fd: int, node_pid: int) -> None:
    """Until the node is gone. EOF on stdin alone is not enough: a process the node forked
    without exec (a python job's multiprocessing child) holds a copy of the pipe's write end.
    So also watch the node itself: a pidfd that polls readable when it exits (Linux 5.3+), or
    failing that our parent pid changing (we are re-parented when the node dies)."""
    poller = select.poll()
    poller.register(stdin_fd, select.POLLIN | select.POLLHUP)
    pidfd = None
    try:
        pidfd = os.pidfd_open(node_pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pass
    while os.getppid() == node_pid:
        for fd, _ in poller.poll(None if pidfd is not None else 200):
            if fd == pidfd:
                return
            if fd == stdin_fd:
                os.read(stdin_fd, 65536)
                return  # EOF, or the line a clean stop sends: the node is done


def main() -> int:
    # The node may be stopped by a signal to its whole process group (Ctrl-C in a terminal):
    # the reaper has its own session, but ignore those signals anyway; only EOF ends it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    token = stdin.readline().decode("ascii", "replace").strip()
    node_pid = os.getppid()
    _wait_for_the_node_to_end(sys.stdin.fileno(), node_pid)
    if not token:
        return 0
    killed = reap(token)
    if killed:
        print(f"opscenter reaper: the node (pid {node_pid}) ended; killed {killed} process(es) "
              "of its jobs", file=sys.stderr, flush=True)
    return 0


# ------------------------------------------------------------------ the node's side


class Reaper:
    """The node's handle on its reaper process."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
        proc = subprocess.Popen(
            # -I: no user site, no PYTHON* variables, no script directory on the path; the
            # reaper needs only the standard library.
            [sys.executable, "-I", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, env=env, close_fds=True,
            # Its own session: a signal to the node's process group (a terminal's Ctrl-C, a
            # supervisor killing the group) must leave it to see the node's end and act.
            start_new_session=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(self.token.encode("ascii") + b"\n")
        proc.stdin.flush()
        self.proc = proc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def stop(self, timeout: float = 10.0) -> None:
        """Close the pipe: the reaper kills what is left of the jobs (nothing, after a clean
        stop) and exits. Waits for it, so nothing of ours outlives this call."""
        if self.proc is None:
            return
        try:
            if self.proc.stdin is not None:
                # A line, not only EOF: a process the node forked may hold the pipe open.
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
