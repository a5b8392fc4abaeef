"""Data in object storage: ``s3://`` and ``gs://`` URIs through pyarrow's filesystems.

Every data location (``data.paths`` and its globs, ``data.directory``, ``data.manifest``,
the paths a manifest lists) may be a URI. pyarrow's ``S3FileSystem`` and
``GcsFileSystem`` do the talking: they are already a dependency (Parquet, run storage),
they are C++ clients with their own connection pools and retries that release the GIL
while they wait, and they take credentials from each cloud's standard chain: for S3 the
AWS SDK's (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and
``~/.aws``, instance roles), for GCS Google's default credentials. The endpoint comes
from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` and the region from ``AWS_REGION``
or ``AWS_DEFAULT_REGION``, as the AWS CLI reads them, unless ``data.storage_options``
(``endpoint``, ``region``, ``anonymous``) says otherwise. fsspec (s3fs, gcsfs) would do the
same job with aiobotocore and two more dependency trees.

Errors a user can fix (no such bucket, no credentials, access denied, an endpoint that
does not answer after a bounded retry) become one :class:`RaytrainError` line naming the
URI and the fix (:func:`explain`).
"""

from __future__ import annotations

import datetime
import fnmatch
import os
import posixpath
import threading
from typing import Any, Mapping, Optional

import pyarrow.fs as pafs

from raytrain.errors import RaytrainError, StoreUnreachable

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
RETRY_ATTEMPTS = 3  # an unreachable endpoint fails after this many tries, not forever

_filesystems: dict[tuple, Any] = {}  # one client per process and settings: it holds the connection pool
_lock = threading.Lock()


def is_uri(path: Optional[str]) -> bool:
    return bool(path) and "://" in str(path)


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def s3_endpoint(options: Mapping[str, Any]) -> Optional[str]:
    return options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _make(kind: str, bucket: str, options: Mapping[str, Any]) -> Any:
    anonymous = bool(options.get("anonymous", False))
    if kind == "file":
        return pafs.LocalFileSystem()
    if kind == "s3":
        endpoint = s3_endpoint(options)
        region = options.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region and not endpoint:
            try:
                region = pafs.resolve_s3_region(bucket)  # one request; AWS answers for any bucket that exists
            except OSError:
                region = "us-east-1"
        kwargs: dict[str, Any] = dict(
            region=region or "us-east-1", anonymous=anonymous, connect_timeout=CONNECT_TIMEOUT_S,
            request_timeout=REQUEST_TIMEOUT_S,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=RETRY_ATTEMPTS),
        )
        if endpoint:
            kwargs["endpoint_override"] = endpoint
        return pafs.S3FileSystem(**kwargs)
    kwargs = dict(anonymous=anonymous, retry_time_limit=datetime.timedelta(seconds=REQUEST_TIMEOUT_S))
    if options.get("endpoint"):
        kwargs["endpoint_override"] = options["endpoint"]
    return pafs.GcsFileSystem(**kwargs)


def filesystem(uri: str, options: Optional[Mapping[str, Any]] = None) -> tuple[Any, str]:
    """The pyarrow filesystem of ``uri`` and the path on it (``bucket/key``), cached per process."""
    options = dict(options or {})
    kind = {"gcs": "gs"}.get(scheme(uri), scheme(uri))
    if kind not in ("s3", "gs", "file"):
        raise RaytrainError(f"{uri} has the scheme {scheme(uri)}://; raytrain reads s3://, gs:// and file:// URIs")
    rest = uri.split("://", 1)[1]
    bucket = rest.split("/", 1)[0]
    key = (kind, bucket if kind == "s3" else "", tuple(sorted(options.items())), os.environ.get("AWS_ENDPOINT_URL"))
    with _lock:
        if key not in _filesystems:
            _filesystems[key] = _make(kind, bucket, options)
        fs = _filesystems[key]
    return fs, (rest if kind != "file" else "/" + rest.lstrip("/"))


def to_uri(uri_like: str, path: str) -> str:
    """``path`` on the filesystem of ``uri_like`` as a URI of the same scheme."""
    return f"{scheme(uri_like)}://{path.lstrip('/') if scheme(uri_like) != 'file' else path}"


def explain(error: BaseException, uri: str, options: Optional[Mapping[str, Any]] = None) -> RaytrainError:
    """One line for an error of the store while reaching ``uri``: what went wrong and the fix."""
    text = str(error)
    low = text.lower()
    endpoint = s3_endpoint(options or {}) if scheme(uri) == "s3" else (options or {}).get("endpoint")
    if "oauth2 access token" in low or "default credentials" in low:
        return RaytrainError(
            f"no valid credentials for {uri}; set GOOGLE_APPLICATION_CREDENTIALS (or run `gcloud auth "
            "application-default login`), or data.storage_options.anonymous: true for a public bucket"
        )
    if any(s in low for s in ("network_connection", "could not resolve", "couldn't connect", "connection refused",
                              "curlcode: 7", "curlcode: 28", "timed out", "timeout")):
        where = f"the endpoint {endpoint}" if endpoint else "the store"
        return StoreUnreachable(
            f"cannot reach {where} for {uri} (after {RETRY_ATTEMPTS} tries); check the network and the endpoint "
            "(AWS_ENDPOINT_URL or data.storage_options.endpoint)"
        )
    if any(s in low for s in ("access_denied", "accessdenied", "access denied", "forbidden", "403")):
        # S3 answers a HEAD with an unknown key or no permission alike: a 403 without a body.
        return RaytrainError(
            f"access denied to {uri}; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "the instance role) and that they may read the bucket, or set data.storage_options.anonymous: true for a "
            "public bucket"
        )
    if any(s in low for s in ("no credentials", "unable to locate credentials", "invalidaccesskeyid",
                              "signaturedoesnotmatch", "credentials", "expiredtoken")):
        return RaytrainError(
            f"no valid credentials for {uri}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE "
            "(GOOGLE_APPLICATION_CREDENTIALS for gs://), as the cloud's CLI would use them"
        )
    if "nosuchbucket" in low or "bucket" in low and "not found" in low or "does not exist" in low and "bucket" in low:
        return RaytrainError(f"the bucket of {uri} does not exist; check the bucket's name and the region")
    first = text.splitlines()[0] if text else type(error).__name__
    return RaytrainError(f"cannot read {uri}: {first}; check the URI and the credentials")


def info(uri: str, options: Optional[Mapping[str, Any]] = None) -> Any:
    """``FileInfo`` of ``uri`` (type NotFound if absent)."""
    fs, path = filesystem(uri, options)
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise explain(e, uri, options) from None


def check_bucket(uri: str, options: Optional[Mapping[str, Any]] = None) -> None:
    """Raise the one line for a missing bucket (an object store answers "not found" for a
    key of a bucket that does not exist, which would otherwise read as a missing file)."""
    if scheme(uri) == "file":
        return
    fs, path = filesystem(uri, options)
    bucket = path.split("/", 1)[0]
    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError as e:
        raise explain(e, uri, options) from None
    if not found:
        raise RaytrainError(f"the bucket of {uri} ({bucket}) does not exist; check the bucket's name and the region")


def list_files(uri: str, options: Optional[Mapping[str, Any]] = None) -> list[tuple[str, int]]:
    """``(uri, size)`` of every file under the folder ``uri``, recursively, sorted."""
    fs, path = filesystem(uri, options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True))
    except OSError as e:
        raise explain(e, uri, options) from None
    return sorted((to_uri(uri, i.path), i.size) for i in infos if i.type == pafs.FileType.File)


def glob_uri(pattern: str, options: Optional[Mapping[str, Any]] = None) -> list[str]:
    """The files matching a glob over keys (``*``, ``?``, ``[...]``; ``*`` also crosses ``/``
    only in ``**``), sorted. Lists only under the pattern's fixed prefix."""
    fs, path = filesystem(pattern, options)
    magic = min(i for i, c in enumerate(path) if c in "*?[")
    folder = path[:magic].rsplit("/", 1)[0]
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    except OSError as e:
        raise explain(e, pattern, options) from None
    depth = path.count("/")
    out = []
    for i in infos:
        if i.type != pafs.FileType.File:
            continue
        if "**" in path and fnmatch.fnmatchcase(i.path, path.replace("**", "*")):
            out.append(i.path)
        elif i.path.count("/") == depth and fnmatch.fnmatchcase(i.path, path):
            out.append(i.path)
    return sorted(to_uri(pattern, p) for p in out)


def read_bytes(uri: str, options: Optional[Mapping[str, Any]] = None) -> bytes:
    """The whole object."""
    fs, path = filesystem(uri, options)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise explain(e, uri, options) from None


def open_file(uri: str, options: Optional[Mapping[str, Any]] = None) -> Any:
    """A seekable file object (pyarrow ``RandomAccessFile``): every ``read`` is a ranged request."""
    fs, path = filesystem(uri, options)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise explain(e, uri, options) from None


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def join(base: str, relative: str) -> str:
    """``relative`` resolved against the folder URI ``base`` (``..`` allowed)."""
    head, rest = base.split("://", 1)
    return f"{head}://{posixpath.normpath(posixpath.join(rest, relative))}"


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The cloud settings of the driver's environment that Ray workers need to read the data
    the same way: AWS_* (endpoint, region, profile, keys) and Google's credentials file.
    On a cluster, prefer instance roles: variables passed here are visible in Ray's
    dashboard as part of the job's runtime environment."""
    keep = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")
    return {k: v for k, v in environ.items() if k.startswith(keep)}
