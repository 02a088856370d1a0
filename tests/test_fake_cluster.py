"""Autoscaler smoke test: deploy/fake-cluster.yaml brought up with Ray's `fake_multinode`
provider, and `keisei-ray train --address auto --preset smoke` run against it.

The head is a real `ray start --head` with the autoscaler; the autoscaler launches the self-play
nodes (raylets on this machine) only because training asks it for room for workers
(`cluster.request_workers`), and the workers must land on those nodes. Everything runs in its own
session and temp folder, with its own auth token, and only those processes are ended.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from ray._private.services import get_node_ip_address

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# The fake provider numbers its nodes: the head ends in 00000, launched nodes count up.
FAKE_WORKER_NODE = re.compile(r"worker-\d+ is on node (f{51}\d{5})\b")
FAKE_HEAD_NODE = "f" * 51 + "00000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def session_members(sid: int) -> list[int]:
    """Pids of the processes in session `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except ProcessLookupError:
                continue  # exited meanwhile
    return pids


def end_session(leader: subprocess.Popen[bytes]) -> None:
    """End every process of the head's session (the head, its autoscaler, the nodes it
    launched and their workers), each by its pid: SIGTERM, then SIGKILL after 5 s."""
    sid = os.getsid(leader.pid)
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        for pid in session_members(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            leader.poll()  # reap the head, our own child
            if not session_members(sid):
                return
            time.sleep(0.2)


@pytest.fixture
def fake_cluster() -> Iterator[tuple[dict[str, str], Path]]:
    """A running fake cluster: the environment that reaches it, and its temp folder."""
    tmp = Path(tempfile.mkdtemp(prefix="krf-", dir="/tmp"))  # short: unix socket paths
    host, port = get_node_ip_address(), free_port()
    address = f"{host}:{port}"
    config = yaml.safe_load((ROOT / "deploy" / "fake-cluster.yaml").read_text())
    config["provider"]["gcs_address"] = address  # the launched nodes join this head
    (tmp / "cluster.yaml").write_text(yaml.safe_dump(config))
    head_resources = dict(config["available_node_types"]["ray.head.default"]["resources"])
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_TMPDIR": str(tmp), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_ADDRESS": address,
           "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with (tmp / "head.log").open("wb") as head_log:
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
             f"--num-cpus={head_resources.pop('CPU')}",
             f"--resources={json.dumps(head_resources)}",
             f"--autoscaling-config={tmp / 'cluster.yaml'}", "--include-dashboard=false",
             "--block"],
            env=env, start_new_session=True, stdout=head_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the fake cluster's head did not come up"
                time.sleep(0.5)
        yield env, tmp
    finally:
        end_session(head)
        shutil.rmtree(tmp)


def test_training_runs_on_nodes_the_autoscaler_started(
        fake_cluster: tuple[dict[str, str], Path]) -> None:
    env, tmp = fake_cluster
    proc = subprocess.run(
        [sys.executable, "-m", "keisei_ray.cli", "train", "--address", "auto",
         "--preset", "smoke", "cluster.request_workers=2", "train.num_workers=auto",
         "evaluation.enabled=false", f"train.runs_dir={tmp / 'runs'}", "train.run_name=fake"],
        env=env, capture_output=True, text=True, timeout=420, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (tmp / "runs" / "fake" / "train.log").read_text()
    assert "asked the autoscaler for room for 2 self-play worker(s)" in log
    nodes = FAKE_WORKER_NODE.findall(log)
    # Every worker ran on a self-play node the autoscaler launched, none on the head.
    assert nodes, log[-3000:]
    assert FAKE_HEAD_NODE not in nodes
    assert len(re.findall(r"worker-\d+ is on node", log)) == len(nodes)
    assert "completed" in log
