"""Run directories on a local path or behind a URI (file:// exercises pyarrow's filesystem path)."""

import json

import pytest

from raytrain.run import storage
from tests.common import run_cli


@pytest.fixture(params=["path", "uri"])
def base(request, tmp_path):
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_files_round_trip(base, tmp_path):
    path = storage.join(base, "run", "sub", "a.txt")
    assert storage.read_text(path) is None and not storage.exists(path)
    storage.write_text(path, "one\n")
    storage.append_line(path, "two")
    assert storage.read_text(path) == "one\ntwo\n" and storage.exists(path)
    assert storage.listdir(storage.join(base, "run")) == ["sub"]
    assert storage.listdir(storage.join(base, "nothing")) == []
    local = tmp_path / "local"
    (local / "deep").mkdir(parents=True)
    (local / "deep" / "f").write_text("x")
    storage.upload_dir(str(local), storage.join(base, "copy"))
    assert storage.read_text(storage.join(base, "copy", "deep", "f")) == "x"
    storage.delete_dir(storage.join(base, "copy"))
    assert not storage.exists(storage.join(base, "copy"))


@pytest.mark.ray
def test_a_run_writes_everything_behind_a_uri(tmp_path, make_h5):
    data = make_h5("d.h5", samples=200, shape=(8, 8, 3))
    uri = f"file://{tmp_path}/store"
    proc = run_cli("train", "--data", data, "--local", "--epochs", "2", "--batch-size", "32", "--name", "u",
                   "--storage-path", uri, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "store" / "u"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "model.keras").is_file() and (run / "checkpoint-epoch-0002" / "raytrain_state.json").is_file()
    proc = run_cli("evaluate", f"{uri}/u", cwd=str(tmp_path))
    assert proc.returncode == 0 and "on 200 samples" in proc.stdout, proc.stderr[-2000:]
    proc = run_cli("train", "--resume", "--name", "u", "--storage-path", uri, "--epochs", "3", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"restored the checkpoint of epoch 2 ({uri}/u/checkpoint-epoch-0002)" in proc.stdout
