"""``raytrain submit``: run ``raytrain train`` (or ``raytrain tune``) on a cluster as a Ray Job.

The job is resolved here (every path absolute, ``scaling.address: auto``), written with
a model builder file (if any) into a folder that travels as the job's working
directory, and the local ``raytrain`` package travels too (``py_modules``), so the
cluster runs the code that submitted it. The cluster's Python must have raytrain's
dependencies (the cluster files' ``setup_commands`` install them). Logs are streamed;
the exit code is the job's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from typing import Any, Optional

from raytrain.config import TUNE_SECTION, JobConfig
from raytrain.env import (
    DEFAULT_RAY_AUTH_TOKEN_PATH,
    RAY_AUTH_MODE_ENV,
    RAY_AUTH_TOKEN_ENV,
    RAY_AUTH_TOKEN_PATH_ENV,
)
from raytrain.errors import RaytrainError
from raytrain.run import rundir


def use_token_auth() -> None:
    """Ray 2.60 clusters require a token; the job client only sends it with
    ``RAY_AUTH_MODE=token``. Set that when a token is at hand (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, which ``ray start`` writes)."""
    if RAY_AUTH_MODE_ENV in os.environ:
        return
    if has_token():
        os.environ[RAY_AUTH_MODE_ENV] = "token"


def has_token() -> bool:
    """Whether a Ray token is at hand: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    return bool(os.environ.get(RAY_AUTH_TOKEN_ENV) or os.environ.get(RAY_AUTH_TOKEN_PATH_ENV)
                or os.path.exists(os.path.expanduser(DEFAULT_RAY_AUTH_TOKEN_PATH)))


def job_client(address: str) -> Any:
    use_token_auth()
    from ray.job_submission import JobSubmissionClient  # imports Ray: only when submitting

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, authentication, a wrong URL
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RaytrainError(
            f"no Ray job server at {address} ({first}); start the cluster (raytrain up CLUSTER.yaml) "
            "and pass its dashboard address, e.g. --address http://127.0.0.1:8265"
        ) from None


SUBMITTED_JOB = ".raytrain-submitted-job"  # the job's folder inside the working directory (no clash with user files)
# Never shipped with a builder's folder: version control, environments, data and runs.
SHIP_EXCLUDES = (".git", ".hg", ".svn", ".env", ".venv", "venv", "__pycache__", "*.pyc", "runs", "data",
                 "*.h5", "*.hdf5", "*.parquet", "*.ckpt", "*.keras")
SHIP_MAX_BYTES = 100 << 20  # a builder's folder above this is almost always data that should stay behind


def _ship_folder(source: str, dest: str) -> None:
    """Copy a builder's folder (so modules beside it travel too), without :data:`SHIP_EXCLUDES`."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*SHIP_EXCLUDES), dirs_exist_ok=True)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(dest) for f in files)
    if size > SHIP_MAX_BYTES:
        raise RaytrainError(
            f"the model builder's folder {source} holds {size / (1 << 20):,.0f} MiB besides version control, "
            f"data and runs; submit ships the whole folder: move the builder into a folder of its own"
        )


def stage_job(job: JobConfig, tune: Optional[dict[str, Any]] = None) -> tuple[str, JobConfig]:
    """A folder to travel as the job's working directory: the model builder's folder (if
    the builder is a file: modules beside it import on the cluster too) and the resolved
    job (with ``tune`` as its ``tune:`` section, for ``raytrain tune``); returns (folder,
    job as submitted)."""
    folder = tempfile.mkdtemp(prefix="raytrain-submit-")
    builder = job.model.builder
    if ".py:" in builder:
        source, function = builder.rsplit(":", 1)
        try:
            _ship_folder(os.path.dirname(source), folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        builder = f"{os.path.basename(source)}:{function}"
    job = dataclasses.replace(
        job, model=dataclasses.replace(job.model, builder=builder),
        scaling=dataclasses.replace(job.scaling, address="auto"),
    )
    rundir.write_job(os.path.join(folder, SUBMITTED_JOB), job, extra={TUNE_SECTION: tune} if tune else None)
    return folder, job


def plain_http_to_remote(address: str) -> bool:
    """Whether ``address`` sends the token in clear text beyond this machine."""
    parsed = urllib.parse.urlparse(address if "://" in address else f"http://{address}")
    return parsed.scheme not in ("https",) and parsed.hostname not in ("127.0.0.1", "localhost", "::1")


AGENT_WAIT_S = 60  # a cluster just brought up may not have its job agent yet


def _submit_when_an_agent_answers(client: Any, **kwargs: Any) -> str:
    """``client.submit_job``, tried again while the head says it has no job agent yet (right
    after ``raytrain up`` the dashboard answers before its agent does)."""
    deadline = time.time() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(1)


def submit(job: JobConfig, address: str, progress: Any = print, tune: Optional[dict[str, Any]] = None) -> int:
    """Submit ``raytrain train`` of a validated job (``raytrain tune`` with ``tune``, the
    search as a job file's ``tune:`` section) as a Ray Job, stream its logs, and return
    its exit code (Ctrl-C stops the job)."""
    client = job_client(address)
    if os.environ.get(RAY_AUTH_MODE_ENV) == "token" and plain_http_to_remote(address):
        progress(f"warning: {address} is not this machine and not https: the Ray token travels in clear text; "
                 "prefer an SSH tunnel (ray dashboard CLUSTER.yaml, then --address http://127.0.0.1:8265)")
    for name in ["ray", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.")]]:
        logging.getLogger(name).setLevel(logging.WARNING)  # not a line per uploaded package
    folder, job = stage_job(job, tune)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the raytrain package
    entrypoint = f"python -m raytrain {'tune' if tune else 'train'} {SUBMITTED_JOB}/{rundir.JOB}"
    job_id = _submit_when_an_agent_answers(
        client,
        entrypoint=entrypoint,
        submission_id=f"raytrain-{job.run.name}-{int(time.time())}",
        runtime_env={"working_dir": folder, "py_modules": [package]},
        entrypoint_num_cpus=0,  # the driver only coordinates; the head may have no CPUs
    )
    progress(f"submitted {job_id} to {address}: {job.scaling.shown} workers, run {job.run_dir}")

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(stream())
        while client.get_job_status(job_id) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(0.5)
    except KeyboardInterrupt:
        client.stop_job(job_id)
        progress(f"stopped {job_id}")
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    info = client.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    if code is None:
        code = 0 if info.status == "SUCCEEDED" else 1
    progress(f"{job_id} {str(info.status).lower()} (exit {code})")
    return int(code)
