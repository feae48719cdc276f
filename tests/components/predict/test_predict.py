"""No training/serving skew: predict's preprocessing of raw DICOM equals the records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf

from helpers import KEY, SAMPLES
from medseq.components import predict
from medseq.components.io import deid
from medseq.components.io.examples import split_files
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
        [series] = predict.prepare_folder(series_dir, config.preprocess, key=KEY)
        assert series.series_key == deid.keyed_hash(KEY, "series", source)
        np.testing.assert_array_equal(series.item.frames, stored[series.series_key])
        checked += 1
    assert checked >= 5


def test_serving_default_on_the_record_agrees_with_predict_frames_on_predicts_tensor(cine_records, trained, config):
    served = tf.saved_model.load(trained.model_dir)
    records = {}
    for raw in tf.data.TFRecordDataset(split_files(cine_records, "eval"), compression_type="GZIP"):
        key = tf.train.Example.FromString(raw.numpy()).features.feature[F.SERIES_KEY].bytes_list.value[0].decode()
        records[key] = raw.numpy()
    checked = 0
    for series in predict.prepare_folder(SAMPLES / "cine_ef" / "dicom", config.preprocess, key=KEY):
        if series.series_key not in records:
            continue
        by_example = served.signatures[F.SERVING_SIGNATURE](examples=tf.constant([records[series.series_key]]))
        by_frames = served.signatures[F.FRAMES_SIGNATURE](frames=tf.constant(series.item.frames[None]),
                                                          valid_frames=tf.constant([series.item.valid_frames]))
        np.testing.assert_allclose(by_example[F.PROBABILITIES].numpy(), by_frames[F.PROBABILITIES].numpy(), atol=1e-6)
        checked += 1
    assert checked == len(records) >= 4


@pytest.fixture
def folder_with_a_broken_series(tmp_path) -> Path:
    """Two cine series, nested at different depths, and a third whose pixels are cut short."""
    good = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))[:2]
    root = tmp_path / "in" / "nested"
    shutil.copytree(good[0], root / "a")
    shutil.copytree(good[1], root / "deeper" / "b")
    broken = root / "broken"
    shutil.copytree(good[0], broken)
    for path in sorted(broken.iterdir()):  # same series as good[0] otherwise: give it a series UID of its own
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".9"
        ds.save_as(path)
    victim = sorted(broken.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-500])
    return tmp_path / "in"


def test_predict_prints_a_table_and_json_and_a_bad_series_its_reason(trained, folder_with_a_broken_series, capsys):
    from medseq.pipeline import cli

    code = cli.main(["predict", "--model", trained.model_dir, "--input", str(folder_with_a_broken_series), "--json"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1 and "1 of 3 series could not be read" in captured.err
    labels = [line for line in lines if "label" in line]
    assert len(labels) == 2 and all(abs(sum(line["probabilities"].values()) - 1) < 1e-5 for line in labels)
    [bad] = [line for line in lines if "rejected" in line]
    assert bad["rejected"] == "decode_error" and bad["series"].endswith("broken") and bad["message"]
    assert cli.main(["predict", "--model", trained.model_dir, "--input", str(folder_with_a_broken_series)]) == 1
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["series", "series_key", "predicted", "normal", "reduced_ef"]
    [broken] = [row for row in table if "broken" in row]
    assert len(table) == 4 and broken.split()[2:5] == ["-", "-", "-"] and "rejected decode_error:" in broken


def test_predict_finds_files_by_ingests_rules_and_shows_the_files_it_did_not_read(trained, tmp_path, capsys):
    """A link out of the input folder is not followed and a stray file is no series: both
    are shown with ingest's reasons; the series beside them are still predicted."""
    from medseq.pipeline import cli

    [series] = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))[:1]
    root = tmp_path / "in"
    shutil.copytree(series, root / "a")
    outside = tmp_path / "elsewhere.dcm"
    shutil.copy(sorted(series.iterdir())[0], outside)
    (root / "link.dcm").symlink_to(outside)
    (root / "notes.txt").write_text("not an image\n")
    code = cli.main(["predict", "--model", trained.model_dir, "--input", str(root), "--json"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0 and "2 file(s) are no part of a series" in captured.err
    assert {(line["series"], line["rejected"]) for line in lines if "rejected" in line} == {
        ("link.dcm", "outside_input"), ("notes.txt", "not_dicom")}
    assert [line["label"] for line in lines if "label" in line] != []


def test_the_records_hash_key_gives_the_records_series_key(trained, tmp_path, capsys):
    """--hash-key-file: predict's series_key is the one ingest wrote under that key, so a
    prediction finds its record; a key file that cannot be read is one line, exit 2."""
    from medseq.pipeline import cli

    [series] = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))[:1]
    uid = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True).SeriesInstanceUID
    (tmp_path / "hash.key").write_bytes(KEY)
    args = ["predict", "--model", trained.model_dir, "--input", str(series), "--json", "--hash-key-file"]
    assert cli.main([*args, str(tmp_path / "hash.key")]) == 0
    [line] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["series_key"] == deid.keyed_hash(KEY, "series", uid)
    assert cli.main([*args, str(tmp_path / "absent.key")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"hash key file not readable: {tmp_path / 'absent.key'}")


def test_explain_gives_one_importance_per_valid_frame(trained, folder_with_a_broken_series, tmp_path, capsys):
    from medseq.pipeline import cli

    out = tmp_path / "explain.json"
    cli.main(["predict", "--model", trained.model_dir, "--input", str(folder_with_a_broken_series), "--explain",
              str(out)])
    printed = capsys.readouterr().out
    explained = [e for e in json.loads(out.read_text()) if "frame_importance" in e]
    spec_frames = predict.prepare_folder(folder_with_a_broken_series, _preprocess(trained.model_dir))
    valid = [s.item.valid_frames for s in spec_frames if not hasattr(s.item, "code")]
    assert [len(e["frame_importance"]) for e in explained] == valid
    assert all(np.isfinite(e["frame_importance"]).all() for e in explained)
    assert printed.count("driven most by frame") == 2
    # Where in the frames: a Grad-CAM array per series and a PNG of the frames that drove it.
    from PIL import Image

    from medseq.components.io.examples import load_spec

    for entry, frames in zip(explained, valid, strict=True):
        attribution = np.load(out.parent / entry["attribution"])
        assert attribution.shape == load_spec(trained.model_dir).shape[:-1]  # T, H, W
        assert attribution.max() == 1.0 and attribution.min() >= 0.0 and not attribution[frames:].any()
        ranked = sorted(range(frames), key=lambda t: -entry["frame_importance"][t])[:4]
        assert entry["overlay_frames"] == sorted(ranked)
        with Image.open(out.parent / entry["overlay"]) as png:
            assert png.format == "PNG" and png.width > 2 * png.height


def _preprocess(model_dir: str):
    from medseq.components.io.examples import load_spec
    from medseq.pipeline.config import PreprocessConfig, from_dict

    return from_dict(PreprocessConfig, load_spec(model_dir).preprocess)


@pytest.mark.parametrize("four_d", ["per_position", "volumes"])
def test_predict_prepares_a_4d_folder_as_ingest_records_it(config, tmp_path, four_d):
    """A raw multi-slice cine: predict's tensor for each slice position (or for the series,
    as volumes) is the record ingest wrote for it."""
    import dataclasses

    import pydicom as dicom
    import tensorflow as tf

    from helpers import KEY, convert, write_cine_sax
    from medseq.components.io import deid

    uid = write_cine_sax(tmp_path / "in", one_series=True)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"series_instance_uid,label\n{uid},normal\n")
    assert dicom.dcmread(next((tmp_path / "in").iterdir()), stop_before_pixels=True).SeriesInstanceUID == uid
    preprocess = dataclasses.replace(config.preprocess, four_d=four_d, depth=3)
    cfg = dataclasses.replace(config, input=str(tmp_path / "in"), labels=str(labels), preprocess=preprocess)
    convert(cfg, tmp_path / "out")
    written = {}
    for shard in (tmp_path / "out").glob("*/*.tfrecord.gz"):
        for raw in tf.data.TFRecordDataset(str(shard), compression_type="GZIP"):
            f = tf.train.Example.FromString(raw.numpy()).features.feature
            written[f[F.SERIES_KEY].bytes_list.value[0].decode()] = f[F.FRAMES].bytes_list.value[0]
    prepared = predict.prepare_folder(tmp_path / "in", preprocess, key=KEY)
    if four_d == "volumes":
        [series] = prepared
        assert series.where == "." and series.series_key == deid.keyed_hash(KEY, "series", uid)
        assert series.item.frames.ndim == 5 and series.item.frames.tobytes() == written[series.series_key]
        return
    assert [p.where for p in prepared] == [f".#position{k}" for k in range(3)]
    for k, series in enumerate(prepared):
        assert series.series_key == deid.keyed_hash(KEY, "series", f"{uid}/position/{k}")
        assert series.item.frames.tobytes() == written[series.series_key]
