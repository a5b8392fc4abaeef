"""Decode one image file into a uint8 array of the training size.

Decoders:

- **JPEG: simplejpeg** (libjpeg-turbo's TurboJPEG API) in strict mode. It refuses a
  corrupt file, not only a truncated one: a JPEG with bytes zeroed mid-file decodes in
  OpenCV (and Pillow) with only libjpeg's unattributed "Corrupt JPEG data" on stderr,
  and would be trained on; strict mode turns that warning into an error naming the
  file. A JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8 scale by
  libjpeg itself (the largest that still leaves at least the target size; "draft
  mode"), which skips most of the work for a large photo.
- **BMP, GIF (first frame), PNG, and JPEGs libjpeg-turbo cannot convert (CMYK): OpenCV**
  (``opencv-python-headless``), which returns nothing for a truncated or corrupt file.

Resizing is OpenCV's (``cv2.resize``), in a thread pool (both release the GIL). Choices,
as Keras' image loaders make them: EXIF orientation is ignored, an alpha channel is
dropped, and ``bilinear`` resizing does not antialias (``tf.image.resize``'s default).
Resizing rounds to uint8, so pixel values differ from a float32 resize by at most 0.5/255.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import cv2
import numpy as np
import simplejpeg

from raytrain.data import store

INTERPOLATIONS = {"nearest": "INTER_NEAREST", "bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC",
                  "area": "INTER_AREA", "lanczos": "INTER_LANCZOS4"}  # data.interpolation -> OpenCV flag
JPEG_MAGIC = b"\xff\xd8"
UNSUPPORTED_BY_TURBOJPEG = ("Unsupported color conversion", "Unsupported JPEG process")  # then OpenCV decodes it


def read_file(path: str, options: Optional[Mapping[str, Any]] = None) -> np.ndarray:
    """A file's bytes as uint8: a local path, or an object behind a URI (one request)."""
    if store.is_uri(path):
        return np.frombuffer(store.read_bytes(path, options), dtype=np.uint8)
    return np.fromfile(path, dtype=np.uint8)


class BadImage(Exception):
    """An image file that cannot be read or decoded; the message says why."""


class ImageDecoder:
    """Reads one image file into a uint8 ``(height, width, channels)`` array.

    Args:
        size: ``(height, width)`` of the output.
        channels: 3 (rgb) or 1 (grayscale).
        interpolation: A key of :data:`INTERPOLATIONS`.
    """

    def __init__(self, size: tuple[int, int], channels: int, interpolation: str = "bilinear"):
        self.size = (int(size[0]), int(size[1]))
        self.channels = channels
        self._interpolation = getattr(cv2, INTERPOLATIONS[interpolation])
        color = cv2.IMREAD_COLOR_RGB if channels == 3 else cv2.IMREAD_GRAYSCALE
        self._flags = color | cv2.IMREAD_IGNORE_ORIENTATION
        self._colorspace = "RGB" if channels == 3 else "GRAY"

    def _jpeg_scale(self, data: np.ndarray) -> tuple[int, int]:
        """The decoded size to ask libjpeg for: the source divided by the largest of 8, 4
        and 2 that still leaves at least :attr:`size` (else the full size). Only these
        scales have libjpeg-turbo's SIMD IDCT: its other scales (3/8, 7/8, ...) decoded
        slower here than the full size (1,350 vs 1,650 images/s for 256 -> 224 px)."""
        src_h, src_w, _, _ = simplejpeg.decode_jpeg_header(data)
        h, w = self.size
        factor = next((f for f in (8, 4, 2) if -(-src_h // f) >= h and -(-src_w // f) >= w), 1)
        return -(-src_h // factor), -(-src_w // factor)

    def decode(self, data: np.ndarray) -> np.ndarray:
        """Decode a file's bytes: ``(h, w, 3)`` RGB or ``(h, w)`` grayscale, a JPEG at the
        smallest libjpeg scale that is still at least :attr:`size`.

        Raises:
            BadImage: Corrupt, truncated, or not a BMP/GIF/JPEG/PNG image.
        """
        if bytes(data[:2]) == JPEG_MAGIC:
            try:
                min_height, min_width = self._jpeg_scale(data)
                image = simplejpeg.decode_jpeg(data, colorspace=self._colorspace, min_height=min_height,
                                               min_width=min_width, strict=True)
                return image[..., 0] if self.channels == 1 else image
            except ValueError as e:
                if not str(e).startswith(UNSUPPORTED_BY_TURBOJPEG):
                    raise BadImage(f"cannot be decoded: a corrupt or truncated JPEG ({e})") from None
        image = cv2.imdecode(data, self._flags) if len(data) else None
        if image is None:
            raise BadImage("cannot be decoded (corrupt, truncated, or not a BMP, GIF, JPEG or PNG image)")
        return image

    def decode_into(self, path: str, out: np.ndarray, data: Optional[np.ndarray] = None) -> None:
        """Decode ``path`` (or its bytes ``data``, already fetched) and resize it into
        ``out`` (shape ``(*size, channels)``, uint8).

        Raises:
            BadImage: The file cannot be read, or is not a decodable BMP/GIF/JPEG/PNG.
        """
        if data is None:
            try:
                data = read_file(path)
            except OSError as e:
                raise BadImage(f"cannot be read ({e.strerror or e})") from None
        image = self.decode(data)
        h, w = self.size
        target = out.reshape(h, w) if self.channels == 1 else out
        if image.shape[:2] == (h, w):
            target[...] = image
        else:
            cv2.resize(image, (w, h), dst=target, interpolation=self._interpolation)
