"""Shared fixtures: real DICOM (pydicom's test files, the committed samples) and the
records, model and evaluation they produce, each built once per session."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import EF, IN_PROCESS, KEY, SAMPLES, convert, sample_uids, write_values

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    return Path(pydicom.data.get_testdata_file("MR_small.dcm")).parent


@pytest.fixture(scope="session")
def key() -> bytes:
    return KEY


@pytest.fixture(scope="session")
def config():
    """The shipped config, on the committed cine samples instead of its synthetic set."""
    from medseq.pipeline.config import load_config

    return load_config().on_input(str(SAMPLES / "cine_ef" / "dicom"), str(SAMPLES / "cine_ef" / "labels.csv"))


@pytest.fixture(scope="session")
def cine_records(tmp_path_factory, config) -> Path:
    """data_samples/cine_ef through the real ingest job."""

    out = tmp_path_factory.mktemp("records")
    convert(config, out, key=KEY, beam_args=IN_PROCESS)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory, cine_records, config):
    from medseq.components import train

    out = tmp_path_factory.mktemp("train")
    return train.train(cine_records, out, dataclasses.replace(config.train, epochs=3, conv_filters=(8, 8)))


@pytest.fixture(scope="session")
def synthetic_config(config):
    """The shipped config on synthetic cine MR (160 patients) at 32x32: large enough to
    learn from in seconds, with about 25 held-out series."""
    return dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, height=32, width=32))


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory, synthetic_config) -> Path:
    from medseq.components import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth.run("cine_ef", patients=160, seed=3, out=root / "data", small=True)
    config = synthetic_config.on_input(str(root / "data" / "dicom"), str(root / "data" / "labels.csv"))
    convert(config, root / "records", key=KEY, beam_args=IN_PROCESS)
    return root / "records"


@pytest.fixture(scope="session")
def good_model(tmp_path_factory, synthetic_records, synthetic_config) -> str:
    """A really trained CNN+LSTM that reads the sequence (eval AUC about 0.94)."""
    from medseq.components import train

    out = tmp_path_factory.mktemp("good")
    config = dataclasses.replace(synthetic_config.train, epochs=12, conv_filters=(8, 16), lstm_units=16)
    return train.train(synthetic_records, out, config).model_dir


@pytest.fixture(scope="session")
def random_model(tmp_path_factory, synthetic_records, synthetic_config) -> str:
    """The same architecture with its random initial weights, exported untrained."""
    import keras

    from medseq.components.io.examples import record_spec
    from medseq.components.model.network import build_model
    from medseq.components.model.saved_model import export_saved_model

    keras.utils.set_random_seed(0)
    spec = record_spec(synthetic_records)
    config = dataclasses.replace(synthetic_config.train, conv_filters=(8, 16), lstm_units=16)
    return str(export_saved_model(build_model(spec, config), spec, tmp_path_factory.mktemp("random") / "model"))


@pytest.fixture(scope="session")
def phase_records(tmp_path_factory):
    """Six patients of synthetic cine_phase for a frames target: (root, series UIDs, the
    frame_labels.csv rows, the records); one series' key frame past its end, one series
    left out of the file."""
    from medseq.components.synth import run as synthesize
    from medseq.pipeline.config import load_config

    root = tmp_path_factory.mktemp("phase")
    synthesize("cine_phase", 6, 1, root / "synth", small=True, target="frames")
    rows = list(csv.reader((root / "synth" / "frame_labels.csv").open()))[1:]
    uids = sorted({r[0] for r in rows})
    rows = [r for r in rows if r[0] != uids[1]] + [[uids[0], "99", "es"]]
    labels = root / "frame_labels.csv"
    labels.write_text("series_instance_uid,frame,label\n" + "".join(",".join(r) + "\n" for r in rows))
    base = load_config()
    config = dataclasses.replace(
        base.on_input(str(root / "synth" / "dicom"), str(labels)),
        preprocess=dataclasses.replace(base.preprocess, frames=20, temporal="sample", height=32, width=32),
        train=dataclasses.replace(base.train, target="frames"))
    return root, uids, rows, convert(config, root / "records")


@pytest.fixture(scope="session")
def value_records(tmp_path_factory, config):
    """data_samples/cine_ef with an EF per series (train.target: value), two of them bad:
    (root, the values, the records, the config)."""
    tmp_path = tmp_path_factory.mktemp("value")
    uids = sample_uids()
    rng = np.random.default_rng(0)
    values = {uid: round(float(rng.uniform(15, 75)), 2) for uid in uids}
    rows = [(uid, str(v)) for uid, v in values.items()]
    rows[0], rows[1] = (uids[0], "n/a"), (uids[1], "120")
    labels = write_values(tmp_path / "labels.csv", rows)
    value_config = dataclasses.replace(config.on_input(config.input, labels),
                                       train=dataclasses.replace(config.train, target="value", value=EF))
    return tmp_path, values, convert(value_config, tmp_path / "records"), value_config
