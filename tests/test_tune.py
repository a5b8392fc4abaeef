"""`raytrain tune`: the search's bad input (one line, exit 2, before Ray starts), and real
searches on Ray Tune with real Ray Train workers: early stopping, the best trial, every
trial a complete run, Ctrl-C and --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from raytrain.cli import main
from tests.common import ROOT, run_cli, write_h5

NET = '''
import tf_keras as keras


def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes, activation="softmax")])
'''


@pytest.fixture
def job(tmp_path):
    """A tiny job a good learning rate learns in one epoch and a tiny one never does:
    class 1 is bright, class 0 dark."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 256)
    x = (y[:, None, None, None] * 150 + rng.integers(0, 60, (256, 4, 4, 1))).astype(np.uint8)
    write_h5(str(tmp_path / "d.h5"), x, y)
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "job.yaml").write_text(
        "data: {paths: [d.h5], validation_ratio: 0.25}\nmodel: {builder: net.py:build}\n"
        "training: {epochs: 4, batch_size: 32}\nrun: {storage_path: runs}\n"
    )
    return tmp_path


@pytest.mark.parametrize("flags, says", [
    (["--search", "model.learning_rate"], "expected KEY=DISTRIBUTION(ARGS)"),
    (["--search", "model.learning_rate=normal(0,1)"], "unknown distribution 'normal'; use one of choice"),
    (["--search", "model.learning_rate=loguniform(0,1)"], "loguniform needs 0 < low < high"),
    (["--search", "model.learning_rate=uniform(0.1,0.01)"], "uniform needs low < high"),
    (["--search", "model.lr=choice(0.1)"], "no such job key; did you mean model.learning_rate"),
    (["--search", "training.batch_size=choice(32,6.5)"], "training.batch_size must be an int"),
    (["--search", "training.epochs=uniform(1,5)"], "use randint or choice"),
    (["--search", "run.name=choice(a,b)"], "run.name cannot be searched"),
    (["--search", "model.learning_rate=choice(0.1)", "--metric", "val_auc"], "--metric val_auc: the runs of this "
     "job report loss, accuracy, val_loss, val_accuracy"),
    (["--search", "model.learning_rate=choice(0.1)", "--trials", "0"], "--trials must be a whole number of 1"),
    ([], "nothing to search"),
    (["--search", "training.batch_size=choice(32,33)", "--num-workers", "2"],
     "--search training.batch_size=choice(32, 33): the value 33 makes an invalid trial: training.batch_size 33 "
     "(global) does not divide evenly over 2 replicas"),
    (["--search", "model.learning_rate=choice(0.1)", "--num-workers", "1..2"],
     "raytrain tune: an elastic --num-workers 1..2 is for raytrain train"),
])
def test_bad_search_is_one_line_before_ray_starts(job, capsys, monkeypatch, flags, says):
    monkeypatch.chdir(job)
    assert main(["tune", "job.yaml", "--name", "s", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raytrain: error: ") and says in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(job / "runs" / "s")  # nothing written for a search that never started


@pytest.mark.slow
def test_a_trial_larger_than_the_machine_is_one_line_before_ray_starts_and_leaves_no_search_behind(job):
    ray_temp = job / "ray"  # where a local Ray started by this command would put its session
    out = run_cli("tune", "job.yaml", "--search", "model.learning_rate=choice(0.1)", "--num-workers", "24",
                  "--batch-size", "48", "--name", "big", cwd=str(job), RAY_TMPDIR=str(ray_temp))
    assert not ray_temp.exists(), "Ray started before the check"
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "one trial needs 24 CPUs but this machine " \
        "has" in out.stderr and "lower --num-workers or --cpus-per-worker" in out.stderr, out.stderr
    assert not os.path.exists(job / "runs" / "big")


def test_the_tune_section_of_a_job_file_is_the_search_and_train_ignores_it(job, monkeypatch):
    from raytrain import config as cfg
    from raytrain.space import options_from

    monkeypatch.chdir(job)
    with open("job.yaml", "a") as f:
        f.write("tune:\n  search: {model.learning_rate: 'loguniform(1e-4, 1e-2)', training.batch_size: "
                "'grid(16, 32)'}\n  trials: 3\n  metric: val_loss\n")
    base = cfg.load_job("job.yaml")  # raytrain train reads the same file
    options = options_from(cfg.load_tune_section("job.yaml"), {"search": ["training.batch_size=choice(64)"]}, base)
    assert [s.text for s in options.search] == ["model.learning_rate=loguniform(0.0001, 0.01)",
                                                "training.batch_size=choice(64)"]  # the flag replaces the file's key
    assert (options.trials, options.metric, options.mode, options.scheduler) == (3, "val_loss", "min", "asha")
    base.model.metrics = ["accuracy", "mse"]
    assert options_from({}, {"search": ["training.epochs=randint(2,5)"]}, base).metric == "val_accuracy"
    base.data.validation_ratio = 0.0
    plain = options_from({}, {"search": ["training.epochs=grid(2,3)"]}, base)
    assert (plain.metric, plain.mode, plain.trials) == ("accuracy", "max", 1)


@pytest.mark.ray
def test_a_search_stops_weak_trials_and_keeps_the_best(job):
    """4 trials, 2 at a time (2 CPUs, one worker each), ASHA: the tiny learning rates fall
    behind at the first rung and are stopped; the best trial is a good one."""
    out = run_cli("tune", "job.yaml", "--search", "model.learning_rate=grid(0.1,0.05,1e-7,1e-8)", "--name", "lr",
                  cwd=str(job), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    search = job / "runs" / "lr"
    rows = {}
    for line in (search / "trials.txt").read_text().splitlines()[1:]:
        name, lr, best, epochs, stopped = line.split()[:5]
        rows[name] = (float(lr), float(best), epochs, stopped)
    assert len(rows) == 4
    assert any(stopped == "yes" for *_, stopped in rows.values()), out.stdout
    best = json.loads((search / "best.json").read_text())
    assert best["params"]["model.learning_rate"] in (0.1, 0.05)
    assert best["best"] > min(b for _, b, _, _ in rows.values())
    assert (search / "best_model.keras").stat().st_size > 0 and (search / "report.png").stat().st_size > 0
    for name, (_, _, epochs, stopped) in rows.items():
        run = search / name
        files = set(os.listdir(run))
        assert {"job.yaml", "dataset.json", "metrics.jsonl", "events.jsonl", "tensorboard"} <= files, (name, files)
        assert any(f.startswith("checkpoint-epoch-") for f in files)
        done = len((run / "metrics.jsonl").read_text().splitlines())
        assert epochs == f"{done}/4"
        status = json.loads((run / "status.json").read_text())["status"]
        seen = (name, status, (search / "trials.txt").read_text(), out.stdout[-3000:])
        if stopped == "no":
            assert done == 4 and "model.keras" in files and status == "finished", seen
        else:
            assert status in ("stopped", "finished"), seen  # finished: it ended its last epoch as the stop arrived
    live = [line for line in out.stdout.splitlines() if line.startswith("[")]  # with the search's clock
    assert sum(" started " in line for line in live) == 4
    assert sum(" finished" in line or " stopped early" in line for line in live) == 4, out.stdout
    assert "(raylet)" not in out.stdout + out.stderr  # Ray's own lines stay out of the terminal
    runs = run_cli("runs", "runs", cwd=str(job))
    assert "lr (search: 4/4 trials)" in runs.stdout and "finished" in runs.stdout, runs.stdout


@pytest.mark.ray
def test_ctrl_c_then_resume_finishes_without_rerunning_finished_trials(job):
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "raytrain", "tune", "job.yaml", "--search", "model.learning_rate=grid(0.1,0.05)",
           "--max-concurrent", "1", "--scheduler", "fifo", "--epochs", "2", "--name", "cut"]
    proc = subprocess.Popen(cmd, cwd=str(job), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    status = job / "runs" / "cut" / "trial_00000" / "status.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (status.exists() and '"finished"' in status.read_text()):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "raytrain tune --resume --name cut" in err
    assert "search interrupted" in out
    state = json.loads((job / "runs" / "cut" / "search.json").read_text())
    assert state["status"] == "interrupted"

    resumed = run_cli("tune", "--resume", "--name", "cut", cwd=str(job), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = (job / "runs" / "cut" / "trials.txt").read_text().splitlines()[1:]
    assert len(table) == 2 and all("2/2" in line and line.rstrip().endswith("finished") for line in table), table
    events = (job / "runs" / "cut" / "trial_00000" / "events.jsonl").read_text().splitlines()
    first = [json.loads(line) for line in events]
    assert sum(e["event"] == "start" for e in first) == 1  # the finished trial was not run again
    assert json.loads((job / "runs" / "cut" / "search.json").read_text())["status"] == "finished"


def test_a_failed_trial_shows_raytrains_own_line():
    from raytrain.errors import TrainingFailed
    from raytrain.tuning import _error_line

    class Trial:
        def __init__(self, error):
            self.error = error

        def get_pickled_error(self):
            return self.error

    wrapped = RuntimeError("ray::ImplicitFunc.train() (pid=1)\n  File x\nTraceback ...")
    wrapped.__cause__ = TrainingFailed("the training loss became nan at epoch 1, step 3; lower --learning-rate\nmore")
    assert _error_line(Trial(wrapped)) == "the training loss became nan at epoch 1, step 3; lower --learning-rate"
    assert _error_line(Trial(RuntimeError("Traceback (most recent call last):\n  ...\nValueError: bad"))) == \
        "ValueError: bad"


def test_a_trial_the_scheduler_stopped_stays_stopped_whatever_its_ending_process_wrote(job):
    """Tune stops a trial (its last result is ``done`` before the last epoch); its process,
    ended a moment later, may still write its own status: the table and status.json say
    stopped early. A trial that ran every epoch is finished, one Tune failed is failed."""
    from types import SimpleNamespace

    from raytrain import config as cfg
    from raytrain.run import rundir
    from raytrain.space import options_from
    from raytrain.tuning import _summarize

    base = cfg.validate(cfg.load_job(str(job / "job.yaml")))
    options = options_from({}, {"search": ["model.learning_rate=grid(0.1,0.05,0.01)"]}, base)
    search = job / "runs" / "s"
    results = []
    for i, (epochs, status, last, error) in enumerate([(4, "finished", 4, None), (3, "failed", 2, None),
                                                       (2, "running", 2, RuntimeError("lost"))]):
        run = str(search / f"trial_0000{i}")
        os.makedirs(run)
        (search / f"trial_0000{i}" / "job.yaml").write_text("{}")
        for e in range(1, epochs + 1):
            rundir.append_metrics(run, {"epoch": e, "loss": 1.0 / e, "accuracy": 0.5, "val_loss": 1.0 / e,
                                        "val_accuracy": 0.5 + 0.1 * e - 0.01 * i, "epoch_time_s": 1.0,
                                        "samples_per_s": 100.0, "data_wait_fraction": 0.0})
        rundir.write_status(run, status)
        results.append(SimpleNamespace(path=run, error=error, config={"model.learning_rate": 0.1 / (i + 1)},
                                       metrics={"done": error is None, "epoch": last, "time_total_s": 1.0}))
    summary = _summarize(base, options, str(search), results, time.time(), interrupted=False)
    assert [(r.name, r.status, r.epochs_done) for r in summary.rows] == [
        ("trial_00000", "finished", 4), ("trial_00001", "stopped early", 3), ("trial_00002", "failed", 2)]
    assert rundir.read_status(str(search / "trial_00001")) | {"time": 0} == {
        "status": "stopped", "time": 0, "reason": "stopped early by asha after epoch 2 (in the weaker half at that rung)"}
    assert summary.best.name == "trial_00000"


def test_submit_tune_ships_the_search_in_the_job_file(tmp_path):
    """`raytrain submit tune ...` runs `raytrain tune` on the cluster with the search as the job's tune: section."""
    from raytrain import config as cfg
    from raytrain.cli.submit import rewrite
    from raytrain.cluster.jobs import SUBMITTED_JOB, stage_job
    from raytrain.space import options_from

    assert rewrite(["submit", "tune", "job.yaml", "--search", "x"]) == ["submit", "--what", "tune", "job.yaml",
                                                                         "--search", "x"]
    assert rewrite(["submit", "job.yaml"]) == ["submit", "job.yaml"]
    job = cfg.validate(cfg.from_dict({"data": {"paths": ["x.h5"]}}))
    search = options_from({}, {"search": ["model.learning_rate=loguniform(1e-4,1e-2)"], "trials": 4}, job)
    folder, _ = stage_job(job, search.to_dict())
    shipped = os.path.join(folder, SUBMITTED_JOB, "job.yaml")
    again = options_from(cfg.load_tune_section(shipped), {}, cfg.load_job(shipped))
    assert again == search


@pytest.mark.ray
def test_a_failed_trial_is_raytrains_line_once_and_its_traceback_in_a_file(job):
    (job / "bad.py").write_text("def build(input_shape, num_classes):\n    raise ValueError('cannot be built')\n")
    out = run_cli("tune", "job.yaml", "--model", "bad.py:build", "--search", "model.learning_rate=choice(0.1)",
                  "--trials", "1", "--epochs", "1", "--name", "bad", cwd=str(job), timeout=600)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    search = job / "runs" / "bad"
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("[") and " failed: " in line]
    assert "model builder" in line and "ValueError: cannot be built" in line
    assert f"(traceback: {search / 'trial_00000' / 'error.txt'})" in line
    assert "Traceback" not in out.stdout + out.stderr, out.stdout[-3000:] + out.stderr[-3000:]
    table = (search / "trials.txt").read_text()
    assert "failed: model builder" in table and "ValueError: cannot be built" in table and "\x1b[" not in table
    assert "Traceback (most recent call last)" in (search / "trial_00000" / "error.txt").read_text()
