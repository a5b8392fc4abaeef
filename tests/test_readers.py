import h5py
import numpy as np

from raytrain.data.hdf5_reader import MIN_BLOCK_BYTES, HDF5Reader, block_rows
from tests.common import numbered


def test_read_sorted_fills_rows_in_file_order_in_their_stored_dtype(tmp_path):
    a = numbered(str(tmp_path / "a.h5"), 300, chunks=(16, 4, 4, 3))
    b = numbered(str(tmp_path / "b.h5"), 50)
    reader = HDF5Reader([a, b], "X")
    rng = np.random.default_rng(0)
    codes = np.r_[np.zeros(120, np.int32), np.ones(30, np.int32)]
    rows = np.r_[rng.choice(300, 120, replace=False), rng.choice(50, 30, replace=False)]
    order = np.lexsort((rows, codes))
    out = np.zeros((160, 4, 4, 3), np.uint8)
    reader.read_sorted(codes[order], rows[order], out)
    assert np.array_equal(out[:150, 0, 0, 0], rows[order] % 256)
    assert not out[150:].any()  # nothing written past the rows asked for
    assert reader.sample_layout() == ((4, 4, 3), np.dtype(np.uint8))
    reader.close()


def test_close_rows_are_read_as_one_slice(tmp_path, monkeypatch):
    # 12 KiB samples: a gap of up to 5 rows (64 KiB) is read through rather than sliced twice
    path = numbered(str(tmp_path / "a.h5"), 200, shape=(64, 64, 3), chunks=(32, 64, 64, 3))
    reader = HDF5Reader([path], "X")
    slices = []
    real = reader._dataset

    class Recording:
        def __init__(self, ds):
            self.ds, self.shape, self.dtype = ds, ds.shape, ds.dtype

        def __getitem__(self, key):
            assert isinstance(key, slice), f"expected a slice read, got {key!r}"
            slices.append((key.start, key.stop))
            return self.ds[key]

    monkeypatch.setattr(reader, "_dataset", lambda code: Recording(real(code)))
    rows = np.array([32, 33, 35, 40, 63, 150, 151])
    out = np.empty((7, 64, 64, 3), np.uint8)
    reader.read_sorted(np.zeros(7, np.int32), rows, out)
    assert np.array_equal(out[:, 0, 0, 0], rows)
    assert slices == [(32, 41), (63, 64), (150, 152)]


def test_block_rows_follow_chunks_or_a_byte_size(tmp_path):
    with h5py.File(tmp_path / "b.h5", "w") as f:
        chunked = f.create_dataset("c", shape=(10_000, 64, 64, 3), dtype=np.uint8, chunks=(32, 64, 64, 3))
        small = f.create_dataset("s", shape=(10_000, 8), dtype=np.float32, chunks=(100, 8))
        flat = f.create_dataset("f", shape=(10_000, 64, 64, 3), dtype=np.uint8)
        assert block_rows(chunked) == 32  # one 384 KiB chunk
        # 3.2 KB chunks are grouped until a block holds MIN_BLOCK_BYTES
        assert block_rows(small) % 100 == 0 and block_rows(small) * 32 >= MIN_BLOCK_BYTES
        assert block_rows(small) - 100 < MIN_BLOCK_BYTES / 32
        assert block_rows(flat) == -(-MIN_BLOCK_BYTES // (64 * 64 * 3))


def test_chunk_cache_only_for_compressed_data(tmp_path):
    plain = numbered(str(tmp_path / "plain.h5"), 100, chunks=(16, 4, 4, 3))
    packed = str(tmp_path / "packed.h5")
    with h5py.File(packed, "w") as f:
        f.create_dataset("X", data=np.arange(100, dtype=np.uint8)[:, None].repeat(48, 1).reshape(100, 4, 4, 3),
                         chunks=(16, 4, 4, 3), compression="gzip")
    reader = HDF5Reader([plain, packed], "X", cache_bytes=8 << 20)
    rows = np.arange(20, 60)
    for code in (0, 1):
        out = np.empty((40, 4, 4, 3), np.uint8)
        reader.read_sorted(np.full(40, code, np.int32), rows, out)
        assert np.array_equal(out[:, 0, 0, 0], rows)
    cache_bytes = [reader._open[code].id.get_access_plist().get_cache()[2] for code in (0, 1)]
    assert cache_bytes == [0, 8 << 20]
    reader.close()
