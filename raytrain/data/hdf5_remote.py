"""Read HDF5 samples from object storage as planned byte ranges, not through h5py.

h5py over a remote file object turns every small read HDF5 makes into a request. So a
file is opened through h5py once per process, over a file object that fetches
:data:`META_BLOCK_BYTES` at a time (:class:`BlockFile`), only to learn its layout: the
features' shape, dtype, filters, and the byte offset and size of every chunk (its
chunk index, ``dsid.chunk_iter``) or, for a contiguous dataset, where the array begins.
From then on a block of rows (:func:`raytrain.data.hdf5_reader.block_rows`: whole
chunks along the sample axis) is a few byte ranges. :class:`RemoteHDF5Reader` fetches
a window's ranges concurrently (:data:`FETCH_THREADS` requests in flight), coalescing
ranges that are adjacent in the file, and decodes the chunks itself: an unfiltered
chunk is the raw array; deflate (gzip), shuffle and fletcher32 are undone here. Any other
filter (lzf, and the plugins of :mod:`raytrain.data.h5`: Blosc, Zstd, LZ4, bitshuffle, ...)
is undone by HDF5's own pipeline (:class:`PluginDecoder`).

The loader asks for the next window while the batches of the current one are consumed
(:meth:`RemoteHDF5Reader.prefetch`), so fetching overlaps training.

With ``data.cache_dir`` each block's stored bytes are kept on the node's disk
(:mod:`raytrain.data.cache`): from epoch 2 on a block of the worker's shard is a local
read.
"""

from __future__ import annotations

import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from raytrain.data import store
from raytrain.data.cache import NodeCache
from raytrain.data import h5
from raytrain.data.h5 import h5py
from raytrain.errors import RaytrainError

META_BLOCK_BYTES = 1 << 20  # h5py's metadata reads are served from blocks this large
FETCH_THREADS = 16  # ranged requests in flight per worker: the store's latency, not the CPU, is the limit
# Ranges closer than this are fetched in one request, the gap read and dropped: a request to
# an object store costs tens of ms before its first byte, in which ~1 MiB more streams in.
# The same rule and value as Apache Arrow's Rust object_store (OBJECT_STORE_COALESCE_DEFAULT).
GAP_BYTES = 1 << 20
MAX_REQUEST_BYTES = 8 << 20  # ... up to this size, so a window is still several requests in flight
FETCHED = [0]  # bytes every BlockFile of this process fetched (metadata and labels)
DEFLATE, SHUFFLE, FLETCHER32 = 1, 2, 3  # HDF5 filter ids raytrain decodes itself


class BlockFile:
    """A read-only file object over a pyarrow ``RandomAccessFile`` for h5py: reads are
    served from :data:`META_BLOCK_BYTES` blocks fetched once, so HDF5's many small
    metadata reads cost a few requests. :data:`FETCHED` counts the bytes all of them read."""

    def __init__(self, raw: Any):
        self._raw = raw
        self._size = raw.size()
        self._pos = 0
        self._blocks: dict[int, bytes] = {}

    def _block(self, k: int) -> bytes:
        if k not in self._blocks:
            n = min(META_BLOCK_BYTES, self._size - k * META_BLOCK_BYTES)
            FETCHED[0] += n
            self._blocks[k] = self._raw.read_at(n, k * META_BLOCK_BYTES)
        return self._blocks[k]

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), max(self._size - self._pos, 0))
        done = 0
        while done < n:
            k, off = divmod(self._pos + done, META_BLOCK_BYTES)
            block = self._block(k)
            take = min(n - done, len(block) - off)
            view[done : done + take] = block[off : off + take]
            done += take
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        size = self._size - self._pos if size is None or size < 0 else size
        out = bytearray(max(0, min(size, self._size - self._pos)))
        self.readinto(out)
        return bytes(out)

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = {0: pos, 1: self._pos + pos, 2: self._size + pos}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        self._blocks.clear()


def open_h5(uri: str, options: Optional[Mapping[str, Any]] = None) -> tuple[Any, BlockFile]:
    """``(h5py.File, its BlockFile)`` for a URI; close the file, then the BlockFile."""
    raw = BlockFile(store.open_file(uri, options))
    try:
        return h5py.File(raw, "r"), raw
    except OSError:
        raw.close()
        raise


def filters(x: Any) -> list[tuple[int, tuple[int, ...]]]:
    """``(filter id, client values)`` of an h5py dataset's pipeline, in write order."""
    plist = x.id.get_create_plist()
    found = (plist.get_filter(i) for i in range(plist.get_nfilters()))
    return [(int(f[0]), tuple(int(v) for v in f[2])) for f in found]


class PluginDecoder:
    """Undoes a filter pipeline raytrain does not decode itself with HDF5's own: each chunk's
    stored bytes are written as they are into a chunk of a dataset with the same filters in
    an in-memory file, and read back (about 50 us a chunk on 2 cores).

    A chunk whose filter was skipped (its filter mask: lzf and Blosc skip data they cannot
    shrink) goes to a dataset without that filter: HDF5 1.14 records the mask of a raw
    write in the chunk index but decodes the chunk with every filter all the same. A
    filter's ``set_local`` step may rewrite the values it is created with (bitshuffle puts
    its version and element size in front): the values are taken from the front until the
    created dataset's values are the stored ones.
    """

    def __init__(self, chunks: tuple[int, ...], dtype: np.dtype, pipeline: list[tuple[int, int, tuple[int, ...], str]]):
        self._lock = threading.Lock()
        self._file = h5py.File(f"raytrain-decode-{id(self)}", "w", driver="core", backing_store=False, rdcc_nbytes=0)
        self._chunks, self._dtype, self._pipeline = chunks, dtype, pipeline
        self._datasets: dict[int, Any] = {}  # filter mask -> a dataset with the filters the mask did not skip

    def _dataset(self, mask: int) -> Any:
        if mask in self._datasets:
            return self._datasets[mask]
        applied = [f for i, f in enumerate(self._pipeline) if not mask & (1 << i)]
        for skip in range(4):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk(self._chunks)
            for fid, flags, values, _ in applied:
                dcpl.set_filter(fid, flags, values[skip:] if fid >= 256 else values)
            try:
                dsid = h5py.h5d.create(self._file.id, f"m{mask}-{skip}".encode(), h5py.h5t.py_create(self._dtype),
                                       h5py.h5s.create_simple(self._chunks), dcpl=dcpl)
            except ValueError:  # the filter refused these values as its own: try without the front one
                continue
            made = dsid.get_create_plist()
            if all(made.get_filter(i)[2] == values for i, (_, _, values, _) in enumerate(applied)):
                self._datasets[mask] = h5py.Dataset(dsid)
                return self._datasets[mask]
        raise RaytrainError(f"HDF5 could not recreate the filters {[f[3] for f in applied]} to decode a chunk; "
                            "rewrite the file with compression='gzip', or copy it to local disk")

    def decode(self, data: bytes, mask: int) -> np.ndarray:
        out = np.empty(self._chunks, self._dtype)
        if mask and all(mask & (1 << i) for i in range(len(self._pipeline))):
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8, out.nbytes)  # stored as it is
            return out
        with self._lock:
            dataset = self._dataset(mask)
            dataset.id.write_direct_chunk((0,) * len(self._chunks), data)
            dataset.read_direct(out)
        return out

    def close(self) -> None:
        self._file.close()


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize <= 1:
        return data
    n = len(data) // itemsize
    head = np.frombuffer(data, np.uint8, n * itemsize).reshape(itemsize, n).T.tobytes()
    return head + data[n * itemsize :]  # HDF5 leaves a partial element as it is


def decode_chunk(data: bytes, pipeline: list[tuple[int, tuple[int, ...]]], mask: int, itemsize: int) -> bytes:
    """Undo a chunk's filters (in reverse order; a bit set in ``mask`` means that filter was skipped)."""
    for i in reversed(range(len(pipeline))):
        if mask & (1 << i):
            continue
        fid, _ = pipeline[i]
        if fid == DEFLATE:
            data = zlib.decompress(data)
        elif fid == SHUFFLE:
            data = _unshuffle(data, itemsize)
        elif fid == FLETCHER32:
            data = data[:-4]
    return data


@dataclass
class Layout:
    """Where one file's features live: enough to read any block without h5py."""

    uri: str
    version: str  # size and modification time: a replaced object is a new cache entry
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: Optional[tuple[int, ...]]
    pipeline: list[tuple[int, tuple[int, ...]]]
    fill: Any
    plugins: list[tuple[int, int, tuple[int, ...], str]] = field(default_factory=list)  # the whole pipeline, when
    # a filter in it is not one raytrain undoes itself (see PluginDecoder)
    offset: int = 0  # a contiguous dataset's first byte
    bands: dict[int, list[tuple[tuple[int, ...], int, int, int]]] = field(default_factory=dict)
    # chunked: band (chunk row) -> [(chunk offset, byte offset, size, filter mask)]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def read_layout(uri: str, x_key: str, options: Optional[Mapping[str, Any]] = None) -> Layout:
    info = store.info(uri, options)
    f, raw = open_h5(uri, options)
    try:
        x = f[x_key]
        layout = Layout(uri, f"{info.size}:{info.mtime_ns}", tuple(x.shape), x.dtype, x.chunks, filters(x),
                        x.fillvalue)
        if any(fid not in (DEFLATE, SHUFFLE, FLETCHER32) for fid, _ in layout.pipeline):
            layout.plugins = h5.filters(x)
        if x.chunks is None:
            offset = x.id.get_offset()
            layout.offset = -1 if offset is None else int(offset)  # -1: never written, all fill
        else:
            rows = x.chunks[0]

            def add(info: Any) -> None:
                layout.bands.setdefault(info.chunk_offset[0] // rows, []).append(
                    (tuple(info.chunk_offset), int(info.byte_offset), int(info.size), int(info.filter_mask)))

            x.id.chunk_iter(add)
    finally:
        f.close()
        raw.close()
    return layout


@dataclass
class _Block:
    code: int
    index: int  # block number: rows index*R .. (index+1)*R - 1
    start: int
    stop: int
    ranges: list[tuple[int, int]]  # (byte offset, size), in file order
    key: str = ""
    flat: bool = False  # one range that is the block's rows as a raw array (see RemoteHDF5Reader._block)


class RemoteHDF5Reader:
    """Reads the features of index rows from HDF5 files in object storage (the
    :class:`raytrain.data.hdf5_reader.HDF5Reader` interface, plus :meth:`prefetch`).

    Args:
        files: URIs, indexed by the file codes passed to :meth:`read_sorted`.
        x_key: The features dataset in each file.
        rows_per_block: Per file URI, the block length (blocks start at multiples).
        options: ``data.storage_options``.
        cache: The node-local cache, or None.
    """

    def __init__(self, files: list[str], x_key: str, rows_per_block: Mapping[str, int],
                 options: Optional[Mapping[str, Any]] = None, cache: Optional[NodeCache] = None,
                 threads: int = FETCH_THREADS):
        self._files = files
        self._x_key = x_key
        self._rows_per_block = [int(rows_per_block.get(f, 32)) for f in files]
        self._options = dict(options or {})
        self._cache = cache
        self._layouts: dict[int, Layout] = {}
        self._blocks: dict[tuple[int, int], _Block] = {}
        self._handles: dict[int, Any] = {}
        self._decoders: dict[int, PluginDecoder] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="raytrain-fetch")
        self._ahead_pool = ThreadPoolExecutor(1, thread_name_prefix="raytrain-prefetch")
        self._ahead: Optional[tuple[frozenset, Future]] = None
        self.requests = 0  # ranged requests for samples (not metadata)
        self._scratch: Optional[np.ndarray] = None  # one cached block, for reading part of it

    def _layout(self, code: int) -> Layout:
        with self._lock:
            if code not in self._layouts:
                self._layouts[code] = read_layout(self._files[code], self._x_key, self._options)
                self._handles[code] = store.open_file(self._files[code], self._options)
            return self._layouts[code]

    def sample_layout(self) -> tuple[tuple[int, ...], np.dtype]:
        layout = self._layout(0)
        return layout.shape[1:], layout.dtype

    def _block(self, code: int, index: int) -> _Block:
        """Block ``index`` of file ``code``: its rows and byte ranges (worked out once)."""
        if (code, index) not in self._blocks:
            self._blocks[(code, index)] = self._plan_block(code, index)
        return self._blocks[(code, index)]

    def _plan_block(self, code: int, index: int) -> _Block:
        layout = self._layout(code)
        per = self._rows_per_block[code]
        start, stop = index * per, min((index + 1) * per, layout.shape[0])
        if layout.chunks is None:
            ranges = [] if layout.offset < 0 else [(layout.offset + start * layout.row_bytes,
                                                    (stop - start) * layout.row_bytes)]
        else:
            rows = layout.chunks[0]
            chunks = sorted((origin, off, size) for band in range(start // rows, (stop - 1) // rows + 1)
                            for origin, off, size, _ in layout.bands.get(band, []))
            ranges = sorted((off, size) for _, off, size in chunks)
        key = NodeCache.key(layout.uri, layout.version, self._x_key, per, index) if self._cache else ""
        if layout.chunks is not None and self._flat(layout, chunks, start, stop):
            # Unfiltered whole-sample chunks stored back to back in row order: the block is one
            # range, read (or taken from the cache) straight into an array without a copy.
            return _Block(code, index, start, stop, [(chunks[0][1], sum(size for _, _, size in chunks))], key, True)
        return _Block(code, index, start, stop, ranges, key)

    @staticmethod
    def _flat(layout: Layout, chunks: list, start: int, stop: int) -> bool:
        rows = layout.chunks[0]
        chunk_bytes = rows * layout.row_bytes
        if layout.pipeline or tuple(layout.chunks[1:]) != layout.shape[1:] or not chunks:
            return False
        if len(chunks) != (stop - 1) // rows - start // rows + 1:
            return False  # a chunk never written
        return all(size == chunk_bytes and (i == 0 or off == chunks[i - 1][1] + chunk_bytes)
                   for i, (_, off, size) in enumerate(chunks))

    def _blocks_of(self, file_codes: np.ndarray, rows: np.ndarray) -> list[_Block]:
        """The blocks of rows sorted by file then row (each block once, in that order)."""
        index = rows // np.asarray(self._rows_per_block, dtype=np.int64)[file_codes]
        first = np.r_[0, np.flatnonzero((file_codes[1:] != file_codes[:-1]) | (index[1:] != index[:-1])) + 1]
        return [self._block(int(c), int(b)) for c, b in zip(file_codes[first], index[first])]

    def _fetch(self, blocks: list[_Block]) -> dict[tuple[int, int], list[bytes]]:
        """The stored bytes of each block's ranges: from the cache, else fetched, several
        requests in flight, adjacent ranges of one file coalesced."""
        out: dict[tuple[int, int], list[bytes]] = {}
        todo: list[tuple[int, int, int, _Block, int]] = []  # (code, offset, size, block, range number)
        for block in blocks:
            cached = self._cache.get(block.key) if self._cache else None
            if cached is not None:
                cached = memoryview(cached)  # slices of a memoryview are views, not copies
                parts, at = [], 0
                for _, size in block.ranges:
                    parts.append(cached[at : at + size])
                    at += size
                out[(block.code, block.index)] = parts
                continue
            out[(block.code, block.index)] = [b""] * len(block.ranges)
            todo.extend((block.code, off, size, block, i) for i, (off, size) in enumerate(block.ranges))
        todo.sort(key=lambda t: (t[0], t[1]))
        requests: list[list[tuple[int, int, int, _Block, int]]] = []
        for item in todo:
            last = requests[-1] if requests else None
            if (last and last[-1][0] == item[0] and item[1] - (last[-1][1] + last[-1][2]) <= GAP_BYTES
                    and item[1] + item[2] - last[0][1] <= MAX_REQUEST_BYTES):
                last.append(item)
            else:
                requests.append([item])

        def get(request: list[tuple[int, int, int, _Block, int]]) -> None:
            code, lo = request[0][0], request[0][1]
            hi = max(off + size for _, off, size, _, _ in request)
            try:
                data = memoryview(self._handles[code].read_at(hi - lo, lo))
            except OSError as e:
                raise store.explain(e, self._files[code], self._options) from None
            for _, off, size, block, i in request:
                out[(block.code, block.index)][i] = data[off - lo : off - lo + size]
            with self._lock:
                self.requests += 1

        for future in [self._pool.submit(get, r) for r in requests]:
            future.result()
        if self._cache:
            fetched = {id(item[3]): item[3] for item in todo}
            for block in fetched.values():
                self._cache.put(block.key, b"".join(out[(block.code, block.index)]))
        return out

    def _decode(self, block: _Block, parts: list[Any]) -> np.ndarray:
        layout = self._layouts[block.code]
        rows = block.stop - block.start
        sample = layout.shape[1:]
        if block.flat:
            return np.frombuffer(parts[0], layout.dtype).reshape(-1, *sample)[:rows]
        if layout.chunks is None:
            if not parts:
                return np.full((rows, *sample), layout.fill, layout.dtype)
            return np.frombuffer(parts[0], layout.dtype).reshape(rows, *sample)
        arr = np.empty((rows, *sample), layout.dtype)
        chunks = [c for band in range(block.start // layout.chunks[0], (block.stop - 1) // layout.chunks[0] + 1)
                  for c in layout.bands.get(band, [])]
        covered = sum(int(np.prod([min(c, s - o) for c, s, o in zip(layout.chunks, layout.shape, chunk[0])]))
                      for chunk in chunks)
        if covered < arr.size:
            arr[...] = layout.fill  # chunks never written hold the fill value
        by_offset = {off: part for (off, _), part in zip(block.ranges, parts)}
        for origin, off, _, mask in chunks:
            data = by_offset[off]
            if layout.plugins:
                chunk = self._decoder(block.code).decode(bytes(data), mask)
            else:
                if layout.pipeline:
                    data = decode_chunk(data, layout.pipeline, mask, layout.dtype.itemsize)
                chunk = np.frombuffer(data, layout.dtype).reshape(layout.chunks)
            dest = tuple(slice(o - (block.start if d == 0 else 0), min(o + c, s) - (block.start if d == 0 else 0))
                         for d, (o, c, s) in enumerate(zip(origin, layout.chunks, layout.shape)))
            arr[dest] = chunk[tuple(slice(0, sl.stop - sl.start) for sl in dest)]
        return arr

    def _decoder(self, code: int) -> PluginDecoder:
        with self._lock:
            if code not in self._decoders:
                layout = self._layouts[code]
                self._decoders[code] = PluginDecoder(layout.chunks, layout.dtype, layout.plugins)
            return self._decoders[code]

    def prefetch(self, file_codes: np.ndarray, rows: np.ndarray) -> None:
        """Start fetching the blocks of the next window (rows sorted by file and row); blocks
        in the node cache are left to :meth:`read_sorted`, which reads them straight into place."""
        if len(rows) == 0:
            return
        blocks = [b for b in self._blocks_of(file_codes, rows) if not self._cached(b)]
        self._ahead = (frozenset((b.code, b.index) for b in blocks), self._ahead_pool.submit(self._fetch, blocks))

    def _cached(self, block: _Block) -> bool:
        return self._cache is not None and self._cache.contains(block.key)

    def read_sorted(self, file_codes: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """Read (file, row) pairs, sorted by file then row, into ``out[:len(rows)]``."""
        n = len(rows)
        if n == 0:
            return
        blocks = self._blocks_of(file_codes, rows)
        by_key = {(b.code, b.index): b for b in blocks}
        index = rows // np.asarray(self._rows_per_block, dtype=np.int64)[file_codes]
        breaks = np.flatnonzero((file_codes[1:] != file_codes[:-1]) | (index[1:] != index[:-1])) + 1
        spans = [(int(s), int(e), by_key[(int(file_codes[s]), int(index[s]))])
                 for s, e in zip(np.r_[0, breaks], np.r_[breaks, n])]
        fetched: dict[tuple[int, int], list[Any]] = {}
        if self._ahead is not None:
            wanted, future = self._ahead
            self._ahead = None
            result = future.result()  # fetched for another window (a new epoch began): dropped
            if all((b.code, b.index) in wanted for b in blocks if not self._cached(b)):
                fetched = result
        done = set()
        if self._cache is not None:
            for s, e, block in spans:
                key = (block.code, block.index)
                if block.flat and key not in fetched and self._from_cache(block, rows[s:e], out[s:e]):
                    done.add(key)
        missing = [b for b in blocks if (b.code, b.index) not in fetched and (b.code, b.index) not in done]
        if missing:
            fetched.update(self._fetch(missing))

        def fill(span: tuple[int, int, _Block]) -> None:
            s, e, block = span
            arr = self._decode(block, fetched[(block.code, block.index)])
            np.take(arr, rows[s:e] - block.start, axis=0, out=out[s:e])

        todo = [span for span in spans if (span[2].code, span[2].index) not in done]
        if any(self._layouts[b.code].pipeline for b in blocks):  # decompressing releases the GIL: use the threads
            for future in [self._pool.submit(fill, span) for span in todo]:
                future.result()
        else:  # a copy: threads would only add hand-offs
            for span in todo:
                fill(span)

    def _from_cache(self, block: _Block, rows: np.ndarray, out: np.ndarray) -> bool:
        """Read a flat block's ``rows`` from the node cache into ``out``: a whole block straight
        into place, part of one through a reused buffer (a new bytes object per block costs a
        fresh allocation and its page faults); False on a miss."""
        whole = block.stop - block.start
        if len(rows) == whole:
            return self._cache.read_into(block.key, out)
        if self._scratch is None or len(self._scratch) < whole or self._scratch.shape[1:] != out.shape[1:]:
            self._scratch = np.empty((whole, *out.shape[1:]), out.dtype)
        scratch = self._scratch[:whole]
        if not self._cache.read_into(block.key, scratch):
            return False
        np.take(scratch, rows - block.start, axis=0, out=out)
        return True

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
            self._ahead = None
        self._ahead_pool.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        for decoder in self._decoders.values():
            decoder.close()
        self._decoders.clear()
