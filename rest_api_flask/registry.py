"""The servers this runtime started: remembered until stopped, so that a new kernel stops what an old one left.

Each server started by :func:`rest_api_flask.launcher.start_server` is remembered as a
file named by its pid, which is also its process group (it runs in its own session, and its
ngrok agent is its child). A re-run cell, or a kernel that crashed and left its server and agent
alive, would otherwise meet ERR_NGROK_108 (one agent session per free ngrok account).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

REGISTRY_ENV = "MRCNN_SERVER_REGISTRY"  # the folder that remembers this runtime's servers (tests isolate it)


def _registry() -> Path:
    folder = Path(os.environ.get(REGISTRY_ENV) or Path(tempfile.gettempdir()) / "maskrcnn-finetune-servers")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remember_server(pid: int, cmd: list[str]) -> None:
    (_registry() / f"{pid}.json").write_text(json.dumps({"pid": pid, "cmd": cmd}))


def forget_server(pid: int) -> None:
    (_registry() / f"{pid}.json").unlink(missing_ok=True)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (or not ours to stop)


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (Linux /proc; elsewhere only the leader if alive)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.kill(pgid, 0)
            return [pgid]
        except OSError:
            return []
    members = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
                members.append(int(entry.name))
    return members


def _is_kit_process(pid: int) -> bool:
    """Whether ``pid`` is a server of the kit or an ngrok agent (never stop a process that reused the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return not Path("/proc").is_dir()  # no /proc to check: trust the pid's process group
    return "rest_api_flask" in cmdline or "ngrok" in cmdline


def stop_previous_servers(timeout: float = 10.0) -> list[int]:
    """Stops the servers (and their ngrok agents) that earlier kernels of this runtime started and left running.

    Returns:
        The pids of the servers that were stopped.
    """
    stopped = []
    for record in sorted(_registry().glob("*.json")):
        try:
            pgid = int(json.loads(record.read_text())["pid"])
        except (ValueError, KeyError, OSError):
            record.unlink(missing_ok=True)
            continue
        members = [pid for pid in group_members(pgid) if _is_kit_process(pid)]
        if members:
            logger.warning("stopping the server (pid %d) that an earlier run of this notebook left running", pgid)
            for pid in members:
                _signal_kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while any(_alive(pid) for pid in members) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in members:
                _signal_kill(pid, signal.SIGKILL)
            stopped.append(pgid)
        record.unlink(missing_ok=True)
    return stopped


def _signal_kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
