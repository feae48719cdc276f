"""No training/serving skew: predict's preprocessing of raw DICOM equals the records."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import tensorflow as tf

from helpers import KEY, SAMPLES
from medseq.components import predict
from medseq.components.ingest import deid
from medseq.components.train.dataset import split_files
from medseq.pipeline import features as F


def record_frames(records_dir) -> dict[str, np.ndarray]:
    files = [f for split in F.SPLITS for f in split_files(records_dir, split)]
    out = {}
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        f = tf.train.Example.FromString(raw.numpy()).features.feature
        shape = list(f[F.FRAMES_SHAPE].int64_list.value)
        out[f[F.SERIES_KEY].bytes_list.value[0].decode()] = np.frombuffer(
            f[F.FRAMES].bytes_list.value[0], f[F.FRAMES_DTYPE].bytes_list.value[0].decode()).reshape(shape)
    return out


def test_predict_preprocessing_feeds_the_model_what_training_saw(cine_records, config):
    stored = record_frames(cine_records)
    checked = 0
    for series_dir in sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003")):
        ds = pydicom.dcmread(next(series_dir.iterdir()), stop_before_pixels=True)
        source = f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}" if "NumberOfFrames" in ds else str(ds.SeriesInstanceUID)
        [(where, prepared)] = predict.prepare_folder(series_dir, config.preprocess)
        np.testing.assert_array_equal(prepared.frames, stored[deid.keyed_hash(KEY, "series", source)])
        checked += 1
    assert checked >= 5


def test_predict_command_prints_one_line_per_series(trained, capsys):
    from medseq.pipeline import cli

    folder = next((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*"))
    assert cli.main(["predict", "--model", trained.model_dir, "--input", str(folder)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    labels = [line for line in lines if "label" in line]
    assert labels and all(abs(sum(line["probabilities"].values()) - 1) < 1e-5 for line in labels)
    assert all(set(line) <= {"series", "label", "probabilities", "rejected"} for line in lines)
