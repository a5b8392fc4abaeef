"""Indexing image datasets: class folders as Keras reads them, manifests, and index files."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytrain.data.image_index import build_image_index, read_manifest, scan_directory
from raytrain.data.synth import make_image_tree
from raytrain.errors import RaytrainError
from tests.common import run_cli, write_image


def make_awkward_tree(root):
    """Class names that sort differently by case, nested folders, mixed-case extensions,
    files that are not images, a hidden folder, and a file outside any class folder."""
    layout = {
        "b": ["x.jpg", "A.PNG", "sub/deeper/z.bmp", "sub/y.GIF", "notes.txt"],
        "Zeta": ["1.jpeg", "0.Jpg"],
        "a": ["k.png", "sub2/m.jpg", "sub10/n.jpg"],
        "a b": ["space.bmp"],
        ".hidden": ["secret.jpg"],
    }
    rng = np.random.default_rng(0)
    for cls, files in layout.items():
        for name in files:
            path = os.path.join(root, cls, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if name.endswith(".txt"):
                open(path, "w").write("not an image")
            else:
                write_image(path, rng.integers(0, 255, (6, 5, 3), dtype=np.uint8))
    write_image(os.path.join(root, "loose.jpg"), np.zeros((4, 4, 3), np.uint8))
    os.makedirs(os.path.join(root, "empty"))


def test_class_indices_match_image_dataset_from_directory(tmp_path):
    import tf_keras

    root = str(tmp_path / "tree")
    make_awkward_tree(root)
    paths, labels, classes = scan_directory(root)
    ds = tf_keras.utils.image_dataset_from_directory(root, shuffle=False, batch_size=None, image_size=(4, 4))
    keras_labels = np.array([int(y) for _, y in ds])
    assert classes == ds.class_names == ["Zeta", "a", "a b", "b", "empty"]
    assert paths == list(ds.file_paths)
    assert labels.tolist() == keras_labels.tolist()
    assert not any(p.endswith(".txt") or "secret" in p or "loose" in p for p in paths)


def test_directory_errors(tmp_path):
    with pytest.raises(RaytrainError, match="does not exist"):
        scan_directory(str(tmp_path / "nope"))
    (tmp_path / "flat").mkdir()
    write_image(str(tmp_path / "flat" / "a.jpg"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(RaytrainError, match="has no class folders"):
        scan_directory(str(tmp_path / "flat"))
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "a.txt").write_text("x")
    with pytest.raises(RaytrainError, match="no images with extensions"):
        scan_directory(str(tmp_path / "noimg"))


@pytest.fixture
def images(tmp_path):
    return make_image_tree(str(tmp_path / "imgs"), 12, (8, 8), classes=3, formats=("jpg", "png"))


def test_manifest_with_string_labels_and_relative_paths(tmp_path, images):
    rel = [os.path.relpath(p, tmp_path) for p in images]
    names = ["cat", "dog", "ant"]
    labels = [names[i % 3] for i in range(len(rel))]
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,kind\n" + "".join(f"{p},{k}\n" for p, k in zip(rel, labels)))
    paths, idx, classes = read_manifest(str(manifest), "file", "kind")
    assert paths == images  # resolved against the manifest's folder
    assert classes == ["ant", "cat", "dog"]  # sorted, as class indices
    assert [classes[i] for i in idx] == labels


def test_manifest_with_integer_labels_in_parquet(tmp_path, images):
    table = pa.table({"path": images, "label": pa.array([i % 4 for i in range(len(images))], pa.int32())})
    pq.write_table(table, tmp_path / "m.parquet")
    index = build_image_index(None, str(tmp_path / "m.parquet"), (10, 12), 1)
    assert index.table.column("file").to_pylist() == images
    assert index.table.column("label").to_pylist() == [i % 4 for i in range(len(images))]
    assert index.class_names == ("0", "1", "2", "3") and index.num_classes == 4
    assert index.sample_shape == (10, 12, 1) and index.dtype == "uint8"


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,label\nimgs/class0/00000.jpg,1\n", "has no column 'file'"),
        ("file,label\nmissing/x.jpg,1\nmissing/y.jpg,0\n", "image {tmp}/missing/x.jpg does not exist"),
        ("file,label\nimgs/a.jpg,1.5\n", "holds double values"),
        ("file,label\nimgs/a.jpg,-1\n", "negative values"),
        ("file,label\nimgs/a.jpg,\n", "is empty in 1 rows"),
    ],
)
def test_bad_manifests_are_named(tmp_path, images, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(RaytrainError) as e:
        read_manifest(str(tmp_path / "m.csv"), "file", "label")
    assert message.format(tmp=tmp_path) in str(e.value)


def test_index_command_round_trips(tmp_path):
    root = str(tmp_path / "tree")
    make_awkward_tree(root)
    proc = run_cli("index", root, "--out", str(tmp_path / "idx.parquet"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "indexed 10 images in 5 classes" in proc.stdout
    paths, labels, classes = read_manifest(str(tmp_path / "idx.parquet"))
    want_paths, want_labels, want_classes = scan_directory(root)
    assert paths == want_paths and labels.tolist() == want_labels.tolist() and classes == want_classes
    # A manifest as the source, string labels: the index keeps its class names.
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{p},{os.path.basename(os.path.dirname(p))}\n"
                                                             for p in want_paths))
    proc = run_cli("index", str(tmp_path / "m.csv"), "--out", str(tmp_path / "m.parquet"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert read_manifest(str(tmp_path / "m.parquet"))[2] == read_manifest(str(tmp_path / "m.csv"))[2]
    again = run_cli("index", root, "--out", str(tmp_path / "idx.parquet"), cwd=str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_index_verify_lists_every_bad_image_and_writes_no_index(tmp_path):
    root = str(tmp_path / "tree")
    paths = make_image_tree(root, 12, (32, 32), classes=2)
    for victim in paths[:2]:  # zero bytes mid-file: a whole file that OpenCV would decode without an error
        data = bytearray(open(victim, "rb").read())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        open(victim, "wb").write(bytes(data))
    out = tmp_path / "idx.parquet"
    proc = run_cli("index", root, "--out", str(out), "--verify", cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    listed = [line for line in proc.stderr.splitlines() if line.startswith("bad image ")]
    assert sorted(line.split()[2].rstrip(":") for line in listed) == sorted(paths[:2])
    assert "2 of 12 images are bad" in proc.stderr and not out.exists()
    for victim in paths[:2]:
        os.remove(victim)
    proc = run_cli("index", root, "--out", str(out), "--verify", cwd=str(tmp_path))
    assert proc.returncode == 0 and "every one decoded" in proc.stdout and out.exists()
