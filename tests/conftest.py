"""Shared fixtures: real DICOM (pydicom's test files, the committed samples) and the
records, model and evaluation they produce, each built once per session."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pydicom
import pytest

from helpers import IN_PROCESS, KEY, SAMPLES

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
    from medseq.components import ingest

    out = tmp_path_factory.mktemp("records")
    ingest.run(config, out, key=KEY, beam_args=IN_PROCESS)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory, cine_records, config):
    from medseq.components import train

    out = tmp_path_factory.mktemp("train")
    return train.run(cine_records, out, dataclasses.replace(config.train, epochs=3, conv_filters=(8, 8)))
