"""Spot-proof training with real Ray workers: a SIGTERMed worker's checkpoint, an exact
mid-epoch resume, and one sample order for any worker count, checked on what the model
itself trained on."""

import json
import os
import signal
import time

import pytest

from tests.common import ORDER_ARGS, global_batches, recording, start, steps_trained

pytestmark = pytest.mark.ray



def test_sigterm_checkpoints_at_a_step_and_the_restart_resumes_there_exactly(tmp_path, ids_order):
    data, n, alone = ids_order
    record_dir, model = recording(tmp_path, "spot", step_seconds=0.06)
    proc = start("train", "--data", data, "--model", model, *ORDER_ARGS, "--checkpoint-every", "1h",
                 "--num-workers", "2", "--max-failures", "1", "--name", "spot",
                 "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    run = tmp_path / "runs" / "spot"
    deadline = time.time() + 300
    while not list(record_dir.glob("*.txt")) or sum(1 for _ in open(next(record_dir.glob("*.txt")))) < 50:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    pid = json.loads((run / "workers" / "rank-1.json").read_text())["pid"]
    signalled = time.time()
    os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    saved = [e for e in events if e["event"] == "checkpoint" and e["preempted"]]
    assert len(saved) == 1 and signalled < saved[0]["time"]
    restored = [e for e in events if e["event"] == "restored"]
    assert [(e["epoch"], e["step"]) for e in restored] == [(saved[0]["epoch"], saved[0]["step"])]
    resumed_at = next(e["time"] for e in events if e["event"] == "first_step" and e["time"] > saved[0]["time"])
    print(f"spot: {saved[0]['time'] - signalled:.1f} s from SIGTERM to its checkpoint, "
          f"{resumed_at - signalled:.1f} s to the next training step")

    steps = n // 24
    per_step = global_batches(steps_trained(record_dir))
    assert sorted(per_step) == list(range(3 * steps))  # every step of every epoch trained
    at = saved[0]["epoch"] * steps + saved[0]["step"]
    redone = [s for s, batches in per_step.items() if len(batches) > 2]
    assert all(s >= at for s in redone) and len(redone) <= 2, redone  # only steps after the checkpoint
    for epoch in range(3):
        ids = [i for s in range(epoch * steps, (epoch + 1) * steps) for i in sum(per_step[s][-2:], [])]
        assert len(ids) == len(set(ids)) == n  # every sample exactly once (960 = 40 global batches)

    # One process trains the same global batches, step by step.
    for s in range(3 * steps):
        assert set(alone[s]) == set(sum(per_step[s][-2:], [])), (s, len(per_step[s]), at, steps)
