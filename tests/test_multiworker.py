"""`facemtl train --strategy multiworker` for real: two worker processes on 127.0.0.1, a
cluster described by TF_CONFIG as on several hosts (docs/data.md, "Training on several
machines"). Only loopback addresses; bounded in time."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.slow
LIMIT_S = 480  # two TensorFlow processes on a busy 2-core machine take about 2 minutes


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_two_workers_on_loopback_train_one_model(tiny_mtfl, tmp_path):
    from facemtl.train.model import load_model

    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                   CUDA_VISIBLE_DEVICES="")
        log = open(tmp_path / f"worker{i}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "facemtl.runtime.cli", "train", "--strategy", "multiworker", "--data", str(tiny_mtfl),
             "--out", str(tmp_path / f"w{i}"), "--width", "8", "--epochs", "2", "--batch-size", "32", "--calibrate", ""],
            stdout=log, stderr=subprocess.STDOUT, env=env), log))
    try:
        for p, _ in procs:
            p.wait(timeout=LIMIT_S)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)]
    assert [p.returncode for p, _ in procs] == [0, 0], logs

    summaries = [json.loads((tmp_path / f"w{i}" / "train.json").read_text()) for i in range(2)]
    assert [s["replicas"] for s in summaries] == [2, 2]  # one model replicated over both processes
    # the workers hold one model: the same trained weights after every synchronised step (batch
    # normalisation's moving statistics are each worker's own: Keras's BatchNormalization does
    # not synchronise them), and the same validation figures (reduced over both workers)
    models = [load_model(tmp_path / f"w{i}" / "model.keras") for i in range(2)]
    a, b = ([np.asarray(v) for v in m.trainable_weights] for m in models)
    assert len(a) > 10 and all(np.array_equal(x, y) for x, y in zip(a, b))
    stats = [[np.asarray(v) for v in m.non_trainable_weights] for m in models]
    assert not all(np.array_equal(x, y) for x, y in zip(*stats))  # each worker saw its own half of the data
    rows = [list(csv.DictReader(open(tmp_path / f"w{i}" / "history.csv"))) for i in range(2)]
    assert len(rows[0]) == 2 and [r["val_loss"] for r in rows[0]] == [r["val_loss"] for r in rows[1]]
    assert float(rows[0][1]["loss"]) < float(rows[0][0]["loss"])  # it trained
