"""Decoding image files on a worker: formats, colour modes, draft mode, bad files, epoch order."""

import os

import numpy as np
import pytest

from raytrain.data.image_index import to_table
from raytrain.data.image_loader import ImageLoader
from raytrain.data.image_reader import ImageDecoder
from raytrain.data.order import TRAIN
from raytrain.data.shard import Shard
from raytrain.errors import RaytrainError
from tests.common import write_image


def gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 255 // max(h - 1, 1), xx * 255 // max(w - 1, 1), (yy + xx) * 255 // (h + w)], -1).astype(np.uint8)


def resized(pixels, h, w):
    import cv2

    return cv2.resize(pixels, (w, h), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("ext, tolerance", [("png", 0), ("bmp", 0), ("jpg", 12)])
def test_formats_decode_to_the_resized_image(tmp_path, ext, tolerance):
    pixels = gradient(40, 30)
    path = write_image(str(tmp_path / f"a.{ext}"), pixels)
    out = np.zeros((20, 24, 3), np.uint8)
    ImageDecoder((20, 24), 3).decode_into(path, out)
    assert np.abs(out.astype(int) - resized(pixels, 20, 24)).max() <= tolerance


def test_gif_gives_its_first_frame(tmp_path):
    from PIL import Image

    first, second = np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)
    first[:, :, 0] = 200
    frames = [Image.fromarray(f) for f in (first, second)]
    path = str(tmp_path / "anim.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    out = np.zeros((16, 16, 3), np.uint8)
    ImageDecoder((16, 16), 3).decode_into(path, out)
    assert np.abs(out.astype(int) - first).max() <= 8  # the palette rounds a little
    assert np.abs(out.astype(int) - second).mean() > 100


def test_grayscale_has_one_channel_of_luminance(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 1] = 200  # pure green: luminance 0.587 * 200
    path = write_image(str(tmp_path / "g.png"), pixels)
    out = np.zeros((8, 8, 1), np.uint8)
    ImageDecoder((8, 8), 1).decode_into(path, out)
    assert np.all(np.abs(out.astype(int) - round(0.587 * 200)) <= 1)


def test_large_jpeg_is_decoded_in_draft_mode_with_the_same_result(tmp_path):
    pixels = np.repeat(np.repeat(gradient(100, 80), 8, axis=0), 8, axis=1)  # 800x640, smooth
    path = write_image(str(tmp_path / "big.jpg"), pixels)
    data = np.fromfile(path, np.uint8)
    decoder = ImageDecoder((100, 80), 3)
    assert decoder.decode(data).shape == (100, 80, 3)  # 800/8 = 100, 640/8 = 80: decoded at 1/8
    assert ImageDecoder((101, 80), 3).decode(data).shape == (200, 160, 3)  # 1/8 is too small: 1/4
    assert ImageDecoder((401, 80), 1).decode(data).shape == (800, 640)  # 1/2 is too small: full size
    assert ImageDecoder((900, 80), 3).decode(data).shape == (800, 640, 3)  # never upscaled by the decoder
    out = np.zeros((100, 80, 3), np.uint8)
    decoder.decode_into(path, out)
    assert np.abs(out.astype(int) - gradient(100, 80)).mean() < 3


def write_bad_files(tmp_path):
    good = write_image(str(tmp_path / "good.jpg"), gradient(16, 16))
    data = open(good, "rb").read()
    truncated = str(tmp_path / "truncated.jpg")
    open(truncated, "wb").write(data[: len(data) // 2])
    garbage = str(tmp_path / "garbage.png")
    open(garbage, "wb").write(b"this is not an image" * 20)
    empty = str(tmp_path / "empty.bmp")
    open(empty, "wb").close()
    corrupt = str(tmp_path / "corrupt.jpg")  # whole, but with bytes zeroed mid-file: OpenCV decodes it silently
    rng = np.random.default_rng(0)
    noisy = write_image(str(tmp_path / "noisy.jpg"), (rng.random((64, 64, 3)) * 255).astype(np.uint8))
    data = bytearray(open(noisy, "rb").read())
    data[len(data) // 2 : len(data) // 2 + 100] = bytes(100)
    open(corrupt, "wb").write(bytes(data))
    os.remove(noisy)
    return good, [truncated, garbage, empty, str(tmp_path / "gone.jpg"), corrupt]


def test_bad_files_raise_bad_image_with_the_reason(tmp_path):
    from raytrain.data.image_reader import BadImage

    _, bad = write_bad_files(tmp_path)
    out = np.zeros((8, 8, 3), np.uint8)
    truncated, garbage, empty, gone, corrupt = bad
    for path in (garbage, empty):
        with pytest.raises(BadImage, match="cannot be decoded"):
            ImageDecoder((8, 8), 3).decode_into(path, out)
    with pytest.raises(BadImage, match="cannot be read"):
        ImageDecoder((8, 8), 3).decode_into(gone, out)
    with pytest.raises(BadImage, match="corrupt or truncated JPEG"):
        ImageDecoder((8, 8), 3).decode_into(truncated, out)
    with pytest.raises(BadImage, match=r"corrupt or truncated JPEG \(Corrupt JPEG data"):
        ImageDecoder((8, 8), 3).decode_into(corrupt, out)
    import cv2  # what the test guards against: OpenCV alone would have trained on it

    assert cv2.imdecode(np.fromfile(corrupt, np.uint8), cv2.IMREAD_COLOR) is not None


def id_images(tmp_path, n, bad=()):
    """n images whose pixel value is their id (label = id % 2); the ids in ``bad`` are corrupt."""
    paths = []
    for i in range(n):
        path = str(tmp_path / f"{i:03d}.png")
        if i in bad:
            open(path, "wb").write(b"corrupt")
        else:
            write_image(path, np.full((4, 4, 3), i, np.uint8))
        paths.append(path)
    return Shard(to_table(paths, np.arange(n) % 2))


def loader(shard, policy="error", threads=2):
    return ImageLoader(shard, ImageDecoder((4, 4), 3), threads, seed=3, rank=0, stream=TRAIN, on_bad_sample=policy)


def test_epoch_reads_each_image_once_in_a_seeded_order(tmp_path):
    shard = id_images(tmp_path, 40)
    ld = loader(shard)
    try:
        batches = list(ld.epoch(0, steps=6, batch=6))
        ids = np.concatenate([x[:, 0, 0, 0] for x, _ in batches]).astype(int)
        assert len(batches) == 6 and all(x.shape == (6, 4, 4, 3) and x.dtype == np.uint8 for x, _ in batches)
        assert len(set(ids)) == 36  # no image twice, 4 left out
        assert all(np.array_equal(y, x[:, 0, 0, 0] % 2) for x, y in batches)  # labels travel with their images
        again = np.concatenate([x[:, 0, 0, 0] for x, _ in ld.epoch(0, 6, 6)]).astype(int)
        other = np.concatenate([x[:, 0, 0, 0] for x, _ in ld.epoch(1, 6, 6)]).astype(int)
        assert np.array_equal(ids, again) and not np.array_equal(ids, other)
    finally:
        ld.close()


def test_bad_image_stops_the_epoch_naming_the_file(tmp_path):
    shard = id_images(tmp_path, 10, bad={7})
    ld = loader(shard)
    try:
        with pytest.raises(RaytrainError, match=r"image .*007\.png cannot be decoded.*on_bad_sample: skip"):
            list(ld.epoch(0, steps=2, batch=5))
    finally:
        ld.close()


def test_skip_replaces_bad_images_and_keeps_the_batches(tmp_path):
    shard = id_images(tmp_path, 20, bad={3, 11})
    ld = loader(shard, "skip")
    try:
        for epoch in range(2):
            batches = list(ld.epoch(epoch, steps=4, batch=5))
            assert [len(x) for x, _ in batches] == [5, 5, 5, 5]
            ids = np.concatenate([x[:, 0, 0, 0] for x, _ in batches]).astype(int)
            labels = np.concatenate([y for _, y in batches])
            assert not {3, 11} & set(ids.tolist())
            assert np.array_equal(labels, ids % 2)  # a replacement brings its own label
        assert sorted(os.path.basename(p) for p in ld.skipped) == ["003.png", "011.png"]
        assert all("cannot be decoded" in why for why in ld.skipped.values())
    finally:
        ld.close()
