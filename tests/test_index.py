import numpy as np
import pytest

from raytrain.data.hdf5_index import build_hdf5_index
from raytrain.data.split import split_index
from raytrain.errors import RaytrainError
from tests.common import write_h5


def test_index_spans_files_in_order(make_h5, tmp_path):
    a = make_h5("a.h5", samples=30, classes=3, seed=1)
    b = make_h5("b.h5", samples=20, classes=3, seed=2)
    index = build_hdf5_index([str(tmp_path / "*.h5")])
    t = index.table
    assert len(index) == 50 and index.sample_shape == (32, 32, 3) and index.num_classes == 3
    assert t.column("file").to_pylist() == [a] * 30 + [b] * 20
    assert t.column("row").to_pylist() == list(range(30)) + list(range(20))
    assert t.column("sample_id").to_pylist() == list(range(50))
    assert not index.one_hot


def test_one_hot_labels_become_class_indices(tmp_path):
    y = np.eye(4, dtype=np.float32)[[0, 3, 1, 2, 3]]
    path = write_h5(str(tmp_path / "v.h5"), np.zeros((5, 2, 1, 4, 4), np.uint8), y, sample_count=5)
    index = build_hdf5_index([path])
    assert index.one_hot and index.num_classes == 4 and index.sample_shape == (2, 1, 4, 4)
    assert index.table.column("label").to_pylist() == [0, 3, 1, 2, 3]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_h5(p, np.zeros((5, 2, 2)), np.arange(4)), "has 5 samples but 'Y' has 4"),
        (lambda p: write_h5(p, np.zeros((5, 2, 2)), np.arange(5) % 2, sample_count=6), "sample_count=6"),
        (lambda p: write_h5(p, np.zeros((5, 2, 2)), np.arange(5) % 2, y_key="labels"), "no dataset 'Y'"),
        (lambda p: write_h5(p, np.zeros((0, 2, 2)), np.zeros(0, np.int64)), "the dataset is empty"),
        (lambda p: write_h5(p, np.zeros((3, 2, 2)), np.array([0.5, 1, 0])), "non-negative whole numbers"),
        (lambda p: write_h5(p, np.zeros((2, 2, 2)), np.array([[1, 1], [0, 1]])), "not one-hot"),
        (lambda p: open(p, "w").write("not hdf5"), "not a readable HDF5 file"),
    ],
)
def test_bad_files_are_named_with_the_problem(tmp_path, make, message):
    path = str(tmp_path / "bad.h5")
    make(path)
    with pytest.raises(RaytrainError, match=message) as err:
        build_hdf5_index([path])
    assert "\n" not in str(err.value)


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(RaytrainError, match="does not exist"):
        build_hdf5_index([str(tmp_path / "nope.h5")])
    with pytest.raises(RaytrainError, match="matches no file"):
        build_hdf5_index([str(tmp_path / "*.h5")])


def test_shape_mismatch_between_files(tmp_path):
    a = write_h5(str(tmp_path / "a.h5"), np.zeros((3, 2, 2)), np.arange(3) % 2)
    b = write_h5(str(tmp_path / "b.h5"), np.zeros((3, 2, 3)), np.arange(3) % 2)
    with pytest.raises(RaytrainError, match=r"shape \(2, 3\)"):
        build_hdf5_index([a, b])


def test_split_is_deterministic_and_disjoint(make_h5):
    table = build_hdf5_index([make_h5(samples=200)]).table
    train, val = split_index(table, 0.2, seed=7)
    train2, val2 = split_index(table, 0.2, seed=7)
    _, val3 = split_index(table, 0.2, seed=8)
    ids, vids = train.column("sample_id").to_pylist(), val.column("sample_id").to_pylist()
    assert len(vids) == 40 and len(ids) == 160
    assert sorted(ids + vids) == list(range(200))
    assert ids == sorted(ids) and vids == sorted(vids)  # file order is kept
    assert vids == val2.column("sample_id").to_pylist() and ids == train2.column("sample_id").to_pylist()
    assert vids != val3.column("sample_id").to_pylist()
    assert split_index(table, 0.0, seed=7)[1].num_rows == 0
