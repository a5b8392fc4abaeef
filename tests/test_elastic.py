"""Elastic workers (``--num-workers MIN..MAX``) with real Ray workers: a run starts below its
maximum on a machine that holds fewer, and on the simulated cluster a lost node shrinks
the run, which finishes with the workers left, every epoch exactly once."""

import json
import os
import signal
import time

import pytest
import yaml

from raytrain.cluster.files import load_cluster
from raytrain.cluster.launch import read_state
from raytrain.cluster.processes import cluster_pids, descendants
from raytrain.env import GROUP_START_ENV, PREEMPTION_WATCHER_ENV, VERBOSE_ENV, run_env
from raytrain.run import rundir
from tests.common import ORDER_ARGS, ROOT, recording, run_cli, simulated_cluster_pids, start, steps_trained

pytestmark = pytest.mark.ray


def test_an_elastic_run_starts_with_the_workers_that_fit(tmp_path, ids_order):
    """2 CPUs, --num-workers 1..3: Ray Train starts 2 workers; metrics and `raytrain runs` say so."""
    data, _, _ = ids_order
    _, model = recording(tmp_path, "el")
    proc = run_cli("train", "--data", data, "--model", model, "--num-workers", "1..3", "--batch-size", "24",
                   "--epochs", "2", "--name", "el", "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished 2 epochs (elastic, 1..3: 2x2 workers)" in proc.stdout
    run = str(tmp_path / "runs" / "el")
    assert [e["workers"] for e in rundir.read_metrics(run)] == [2, 2]
    assert rundir.read_job(run).data.partitions == 24  # lcm(24, 1, 2, 3)
    listing = run_cli("runs", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert "1..3: 2x2" in listing.stdout


def test_an_elastic_run_retries_an_unplaceable_group_after_10_s_unless_told_otherwise():
    """After a lost node Ray Train first tries the old size (its view of ready nodes is up
    to 20 s old): an elastic run waits 10 s for that group, not Ray's 60 s, before
    deciding again; a fixed-size run and the user's own value are left alone, and a later
    run in the same process does not inherit the elastic run's value or its --verbose."""
    environ, mine = {}, {GROUP_START_ENV: "45"}
    with run_env(environ, elastic=True, verbose=True):
        assert environ[GROUP_START_ENV] == "10" and environ[VERBOSE_ENV] == "1"
    assert GROUP_START_ENV not in environ and VERBOSE_ENV not in environ
    assert environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"  # the same for every run: it stays
    assert environ[PREEMPTION_WATCHER_ENV] == "0"  # ... as does the preemption watcher's switch
    with run_env(environ):
        assert GROUP_START_ENV not in environ
    mine[PREEMPTION_WATCHER_ENV] = "1"
    with run_env(mine, elastic=True):
        assert mine[GROUP_START_ENV] == "45" and mine[PREEMPTION_WATCHER_ENV] == "1"
    assert mine[GROUP_START_ENV] == "45"


def _per_step(per_process, first_pids):
    """{global step: sample ids}: the newest attempt's records of a step win (the first
    attempt's processes are ``first_pids``; the rest belong to the restart)."""
    first, later = {}, {}
    for pid, seen in per_process.items():
        into = first if pid in first_pids else later
        for step, ids in seen.items():
            into.setdefault(step, []).extend(ids)
    return {**first, **later}


@pytest.mark.simulated_cluster
def test_a_lost_node_shrinks_the_run_which_finishes_with_the_workers_left(tmp_path, ids_order):
    """clusters/local-sim.yaml capped at 3 CPU nodes; --num-workers 2..3 trains on 3; one
    simulated node's processes are ended by PID mid-epoch; Ray Train restarts from the
    newest step checkpoint with 2 workers; every epoch trains every sample exactly once, and
    the global batches are those of a --local run (1, 3 and 2 workers: one order)."""
    data, n, one = ids_order
    os.environ["RAYTRAIN_HOME"] = str(tmp_path / "home")
    config = yaml.safe_load(open(os.path.join(ROOT, "clusters", "local-sim.yaml")))
    config["max_workers"] = config["available_node_types"]["ray.worker.cpu"]["max_workers"] = 3  # no 4th node
    sim = tmp_path / "sim.yaml"
    sim.write_text(yaml.safe_dump(config))
    before = simulated_cluster_pids()
    up = run_cli("up", str(sim), cwd=str(tmp_path))
    state = read_state(load_cluster(str(sim)))
    record_dir, model = recording(tmp_path, "shrink")
    run = tmp_path / "runs" / "shrink"
    args = ("--data", data, "--model", model, *ORDER_ARGS, "--checkpoint-every", "5")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        proc = start("submit", *args, "--address", "http://127.0.0.1:8265", "--num-workers", "2..3",
                     "--max-failures", "1", "--name", "shrink", "--storage-path", str(tmp_path / "runs"),
                     cwd=str(tmp_path))
        deadline = time.time() + 400
        steps = n // 24
        while len(list(record_dir.glob("*.txt"))) < 3 or not any(
                sum(1 for _ in open(p)) > steps + 10 for p in record_dir.glob("*.txt")):  # mid-epoch 2
            assert proc.poll() is None and time.time() < deadline, "".join(proc.communicate())[-4000:]
            time.sleep(0.2)
        ranks = [json.loads((run / "workers" / f"rank-{r}.json").read_text()) for r in range(3)]
        first_pids = {r["pid"] for r in ranks}
        with open(f"/proc/{ranks[2]['pid']}/stat") as f:
            raylet = int(f.read().rsplit(")", 1)[1].split()[1])  # the worker's parent: its node's raylet
        node = [raylet, *descendants([raylet])]
        killed = time.time()
        for pid in node:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:] + err[-2000:]
    finally:
        down = run_cli("down", str(sim), cwd=str(tmp_path))
        os.environ.pop("RAYTRAIN_HOME", None)
    assert down.returncode == 0, down.stderr[-2000:]
    assert not cluster_pids(state["temp_dir"]) and not (simulated_cluster_pids() - before), "a Ray process is still running"

    events = rundir.read_events(str(run))
    starts = [e["world_size"] for e in events if e["event"] == "start"]
    assert starts == [3, 2], starts
    restored = next(e for e in events if e["event"] == "restored")
    resumed = next(e["time"] for e in events if e["event"] == "first_step" and e["time"] > restored["time"])
    print(f"elastic: {resumed - killed:.1f} s from the node's end to the next training step (2 workers), "
          f"resumed at epoch {restored['epoch'] + 1} step {restored['step']}")
    workers = [e["workers"] for e in rundir.read_metrics(str(run))]
    assert workers[-1] == 2 and workers[0] == 3, workers
    assert "finished 3 epochs (elastic, 2..3: " in out and "succeeded (exit 0)" in out
    last = [json.loads((run / "workers" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert not {r["pid"] for r in last} & first_pids, "the 2-worker group wrote its own records"
    assert len({r["node_id"] for r in last}) == 2, "the two training workers ran on different nodes"
    assert all(r["node_id"].startswith("fffff") for r in last), "nodes the fake_multinode autoscaler launched"
    assert last[0]["weights_sha256"] == last[1]["weights_sha256"]

    records = {int(p.stem.split("-")[1]): seen
               for p, seen in zip(sorted(record_dir.glob("*.txt")), steps_trained(record_dir))}
    per_step = _per_step(records, first_pids)
    assert sorted(per_step) == list(range(3 * steps))
    at = restored["epoch"] * steps + restored["step"]
    for epoch in range(3):
        ids = [i for s in range(epoch * steps, (epoch + 1) * steps) for i in per_step[s]]
        assert len(ids) == len(set(ids)) == n, epoch  # exactly once (960 = 40 global batches of 24)
    lost = max(s for pid in first_pids & set(records) for s in records[pid]) + 1 - at
    assert 0 <= lost <= 5 + 1, lost  # steps re-done: at most the checkpoint interval (+ the one in flight)

    for s in range(3 * steps):  # the global batches of the session's --local run (conftest: ids_order)
        assert set(one[s]) == set(per_step[s]), s
