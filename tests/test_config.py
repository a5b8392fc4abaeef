import textwrap

import pytest

from raytrain import config as cfg
from raytrain.cli import build_parser
from raytrain.cli.jobflags import job_from_args
from raytrain.errors import RaytrainError

JOB = textwrap.dedent(
    """
    data:
      kind: hdf5
      paths: [data/train.h5]
      x_key: X
      y_key: Y
      validation_ratio: 0.2
      seed: 0
    model:
      builder: cnn
      optimizer: adam
      learning_rate: 0.001
      loss: auto
      metrics: [accuracy]
    training:
      epochs: 5
      batch_size: 64
    scaling:
      num_workers: 2
      gpus_per_worker: 0
      cpus_per_worker: 1
    run:
      name: demo
      storage_path: ./runs
    """
)


@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    return str(path)


def parse(*argv):
    return job_from_args(build_parser().parse_args(["train", *argv]))


def test_job_file_loads_into_typed_sections(job_file):
    job = cfg.load_job(job_file)
    assert job.training.batch_size == 64 and job.scaling.num_workers == 2
    assert job.model.metrics == ["accuracy"] and job.data.paths == ["data/train.h5"]


def test_unknown_key_is_rejected_by_name(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("training:\n  epoch: 3\n")
    with pytest.raises(RaytrainError, match=r"unknown keys \['epoch'\] in section 'training'"):
        cfg.load_job(str(path))


def test_unknown_section_is_rejected_by_name(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("optimizer:\n  lr: 3\n")
    with pytest.raises(RaytrainError, match=r"unknown sections \['optimizer'\]"):
        cfg.load_job(str(path))


def test_wrong_type_names_key_and_value(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("training:\n  batch_size: big\n")
    with pytest.raises(RaytrainError, match="training.batch_size must be an int. Received: training.batch_size='big'"):
        cfg.load_job(str(path))


def test_flags_override_the_job_file(job_file, tmp_path):
    job = parse(job_file, "--batch-size", "32", "--epochs", "2", "--num-workers", "4", "--data", "a.h5",
                "--data", "b.h5,c.h5", "--model", "video3d", "--name", "x", "--storage-path", str(tmp_path),
                "--learning-rate", "0.01", "--metrics", "accuracy,auc", "--cpus-per-worker", "0.5")
    assert job.training.batch_size == 32 and job.training.epochs == 2
    assert job.scaling.num_workers == 4 and job.scaling.cpus_per_worker == 0.5
    assert [p.rsplit("/", 1)[1] for p in job.data.paths] == ["a.h5", "b.h5", "c.h5"]
    assert job.model.builder == "video3d" and job.model.learning_rate == 0.01
    assert job.model.metrics == ["accuracy", "auc"]
    assert job.run_dir == str(tmp_path / "x")
    # untouched keys keep the job file's values
    assert job.data.validation_ratio == 0.2 and job.model.optimizer == "adam"


def test_every_job_key_has_a_flag():
    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for section, key in ((o.section, o.key) for o in cfg.options()):
        assert f"--{cfg.flag_name(section, key)}" in text


def test_local_flag_means_zero_workers(job_file):
    assert parse(job_file, "--local").scaling.num_workers == 0
    with pytest.raises(RaytrainError, match="--local"):
        parse(job_file, "--local", "--num-workers", "2")


def test_an_elastic_range_sets_both_counts_and_the_partitions_it_needs(job_file, tmp_path):
    job = parse(job_file, "--num-workers", "2..8", "--batch-size", "1680")
    s = job.scaling
    assert (s.min_workers, s.num_workers, s.elastic, s.worker_range) == (2, 8, True, list(range(2, 9)))
    assert job.data.partitions == 840  # every count of 2..8 divides it
    fixed = parse(job_file, "--num-workers", "4")
    assert (fixed.scaling.min_workers, fixed.scaling.elastic, fixed.data.partitions) == (0, False, 24)
    (tmp_path / "elastic.yaml").write_text("data: {paths: [a.h5]}\nscaling: {num_workers: 1..3}\n"
                                           "training: {batch_size: 48}\n")
    from_file = parse(str(tmp_path / "elastic.yaml"))
    assert from_file.scaling.worker_range == [1, 2, 3] and from_file.data.partitions == 24
    assert not parse(str(tmp_path / "elastic.yaml"), "--num-workers", "2").scaling.elastic  # N is exactly N
    assert parse(str(tmp_path / "elastic.yaml"), "--local").scaling.worker_range == [1]


def test_runs_shows_an_elastic_runs_workers_per_epoch(job_file):
    from raytrain.run.runs import workers

    s = parse(job_file, "--num-workers", "2..3", "--batch-size", "48").scaling
    assert workers(s, [{"workers": 3}, {"workers": 3}, {"workers": 2}]) == "2..3: 3x2, 2x1"
    assert workers(s, []) == "2..3"
    assert workers(parse(job_file, "--num-workers", "2").scaling, [{"workers": 2}]) == 2


def test_data_flag_alone_uses_defaults():
    job = parse("--data", "some/file.h5")
    assert job.scaling.num_workers == 0 and job.model.builder == "cnn" and job.training.epochs == 5
    assert job.run.name.startswith("file-")
    assert job.data.paths[0].endswith("some/file.h5") and job.data.paths[0].startswith("/")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "1", "--num-workers", "2"], "smaller than the 2 workers"),
        (["--batch-size", "10", "--num-workers", "3"], "does not divide evenly over 3 replicas"),
        (["--epochs", "0"], "training.epochs must be positive"),
        (["--validation-ratio", "1.5"], "validation_ratio must be in"),
        (["--num-workers", "-1"], "num_workers must be non-negative"),
        (["--shuffle-window", "-5"], "shuffle_window must be non-negative"),
        (["--prefetch-batches", "0"], "prefetch_batches must be positive"),
        (["--name", "a" * 300], "run.name is 300 bytes long; at most 200 fit"),
        (["--name", "é" * 101], "run.name is 202 bytes long"),
        (["--name", "two\nlines"], "must not hold control characters"),
        (["--framework", "jax"], r"model.framework must be one of \['auto', 'tf_keras', 'keras'\]"),
    ],
)
def test_impossible_values_are_rejected(argv, message):
    with pytest.raises(RaytrainError, match=message):
        parse("--data", "x.h5", *argv)


def test_no_data_is_rejected():
    with pytest.raises(RaytrainError, match="no data"):
        parse()


def test_image_source_sets_the_kind_and_the_run_name():
    job = parse("--directory", "photos/", "--image-size", "128,96")
    assert job.data.kind == "images" and job.data.directory.endswith("/photos")
    assert job.data.image_size == [128, 96] and job.run.name.startswith("photos-")
    assert parse("--manifest", "m.csv").data.kind == "images"
    assert parse("--data", "x.h5").data.kind == "hdf5"


def test_image_size_in_a_job_file_must_be_integers(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data:\n  directory: imgs\n  image_size: [200, 'x']\n")
    with pytest.raises(RaytrainError, match="data.image_size must be a list of integers"):
        cfg.load_job(str(path))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--directory", "d", "--manifest", "m.csv"], "exactly one of data.directory"),
        (["--kind", "images"], "exactly one of data.directory"),
        (["--kind", "images", "--data", "x.h5"], "data.paths / --data name HDF5 files"),
        (["--kind", "hdf5", "--directory", "d"], "data.directory is for image datasets"),
        (["--kind", "video", "--data", "x.h5"], "data.kind must be one of ['hdf5', 'images']"),
        (["--directory", "d", "--image-size", "200"], "data.image_size must be [height, width]"),
        (["--directory", "d", "--image-size", "0,5"], "data.image_size must be [height, width]"),
        (["--directory", "d", "--color-mode", "cmyk"], "data.color_mode must be one of ['rgb', 'grayscale']"),
        (["--directory", "d", "--interpolation", "fancy"], "data.interpolation must be one of"),
        (["--directory", "d", "--on-bad-sample", "ignore"], "data.on_bad_sample must be one of ['error', 'skip']"),
        (["--directory", "d", "--decode-threads", "-1"], "data.decode_threads must be non-negative"),
    ],
)
def test_impossible_image_settings_are_rejected(argv, message):
    with pytest.raises(RaytrainError) as e:
        parse(*argv)
    assert message in str(e.value)


def test_an_image_source_flag_replaces_the_job_files_source(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data:\n  directory: photos\n")
    job = parse(str(path), "--manifest", "idx.parquet")
    assert job.data.directory is None and job.data.manifest.endswith("/idx.parquet")


def test_a_key_set_twice_in_a_job_file_is_refused_naming_it_and_its_lines(tmp_path):
    from raytrain.config import load_job

    path = tmp_path / "job.yaml"
    path.write_text("data:\n  paths: [a.h5]\ntraining:\n  batch_size: 16\n  batch_size: 0\n")
    with pytest.raises(RaytrainError, match=r"sets 'batch_size' twice \(lines 4 and 5\); keep one"):
        load_job(str(path))
    path.write_text("training:\n  epochs: 2\ndata:\n  paths: [a.h5]\ntraining:\n  epochs: 3\n")
    with pytest.raises(RaytrainError, match=r"sets 'training' twice \(lines 1 and 5\)"):
        load_job(str(path))
