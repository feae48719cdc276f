"""frame_labels.csv for a frames target (train.target: frames): key frames by frame number
or time, events such as end-diastole and end-systole. Labels follow their frames through
the temporal resampling; bad rows reject their series by name and the rest converts; a
file that cannot be meant as frame labels is one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import medseq, one_line
from medseq.components.ingest.frame_targets import frame_target
from medseq.components.ingest.labels import key_frames, read_labels
from medseq.components.io.examples import record_spec, split_files
from medseq.components.model.events import series_events, turning_points
from medseq.components.preprocessing.geometry import OrderedSeries
from medseq.components.preprocessing.headers import FrameRef
from medseq.components.preprocessing.reasons import Rejected
from medseq.pipeline import features as F
from medseq.pipeline.config import PreprocessConfig
from medseq.pipeline.errors import InputError

UID = "1.2.3.4"


def _write(path: Path, rows: list[tuple[str, ...]], header: str = "series_instance_uid,frame,label") -> str:
    path.write_text(header + "\n" + "".join(",".join(row) + "\n" for row in rows))
    return str(path)


def test_key_frames_are_read_by_frame_or_time_and_bad_rows_are_named_per_series(tmp_path):
    rows = [("a", "3", "ed", ""), ("a", "", "es", "410.5"), ("b", "x", "ed", ""), ("c", "2.5", "es", ""),
            ("d", "-1", "ed", ""), ("e", "4", "ed", "100"), ("f", "0", "es", "")]
    table = read_labels(_write(tmp_path / "f.csv", rows, "series_instance_uid,frame,label,time_ms"), "frames")
    assert table.target == "frames" and table.classes == ("ed", "es")
    assert [(k.unit, k.at, k.event) for k in key_frames(table.labels["a"])] == [
        ("frame", 3.0, "ed"), ("time_ms", 410.5, "es")]
    assert set(table.labels) == {"a", "f"}
    assert {uid: reason for uid, (reason, _) in table.bad.items()} == {
        "b": "bad_frame_label", "c": "bad_frame_label", "d": "bad_frame_label", "e": "bad_frame_label"}
    assert "both frame and time_ms" in table.bad["e"][1]


def test_an_unknown_event_two_events_on_one_frame_and_a_missing_column_are_one_line(tmp_path):
    with pytest.raises(InputError, match=r"line 2: expected an event of train.frames.events \(ed, es\), found 'ES'"):
        read_labels(_write(tmp_path / "a.csv", [(UID, "1", "ES")]), "frames")
    with pytest.raises(InputError, match="lines 2 and 3 give one frame 4 of a series two events") as caught:
        read_labels(_write(tmp_path / "b.csv", [(UID, "4", "ed"), (UID, "4", "es")]), "frames")
    assert UID not in str(caught.value)  # a UID identifies: never in a message
    with pytest.raises(InputError, match="expected a frame_labels.csv header"):
        read_labels(_write(tmp_path / "c.csv", [(UID, "ed")], "series_instance_uid,label"), "frames")
    assert read_labels(_write(tmp_path / "d.csv", [(UID, "1", "sys")]), "frames", events=("dia", "sys")).classes \
        == ("dia", "sys")


def _cine(n: int, interval: float = 40.0) -> OrderedSeries:
    refs = tuple(FrameRef("f.dcm", i, f"1.{i}", i + 1, None, None, i * interval) for i in range(n))
    return OrderedSeries(refs, "temporal", interval, ())


def test_key_frames_land_on_the_nearest_output_frame_and_keep_their_source_frame():
    """30 source frames sampled to 10 (source frames 0, 3, 6, 10, 13, 16, 19, 23, 26, 29):
    a key frame lands on the output frame showing the source frame nearest its own."""
    config = PreprocessConfig(frames=10, temporal="sample")
    target = frame_target(_cine(30), config, "frame:2:ed;frame:11:es;time_ms:1040:ed", ("ed", "es"))
    assert target.sources.tolist() == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert target.key_frames.tolist() == [1, 3, 8]  # source 2 -> 3, 11 -> 10, 1040 ms = 26 -> 26
    assert target.key_events.tolist() == [0, 1, 0]
    assert target.key_sources.tolist() == [2.0, 11.0, 26.0] and target.interval_ms == 40.0
    # The score: 1 at ed, 0 at es, linear between; no weight outside the labeled span.
    assert np.allclose(target.labels[1:9], [1.0, 0.5, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert target.weights.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    # Padding (pad mode, 30 frames into 40 slots) has no source and no weight.
    padded = frame_target(_cine(30), PreprocessConfig(frames=40, temporal="pad"), "frame:2:ed;frame:11:es",
                          ("ed", "es"))
    assert padded.sources[30:].tolist() == [-1] * 10 and padded.weights[12:].sum() == 0


@pytest.mark.parametrize(("encoded", "reason"), [
    ("frame:2:ed;frame:30:es", "frame_label_out_of_range"),
    ("frame:2:ed;frame:3:es", "key_frame_collision"),
    ("frame:2:ed;frame:20:ed", "no_labeled_span"),
])
def test_a_key_frame_that_cannot_be_placed_rejects_its_series_by_name(encoded, reason):
    with pytest.raises(Rejected) as caught:
        frame_target(_cine(30), PreprocessConfig(frames=10, temporal="sample"), encoded, ("ed", "es"))
    assert caught.value.code == reason
    untimed = dataclasses.replace(_cine(30), interval=0.0)
    with pytest.raises(Rejected, match="no frame timing"):
        frame_target(untimed, PreprocessConfig(frames=30, temporal="pad"), "time_ms:100:ed;frame:9:es", ("ed", "es"))


def test_events_are_the_turning_points_of_the_score_and_a_spurious_one_costs():
    t = np.arange(40)
    score = 0.5 + 0.5 * np.cos(2 * np.pi * (t - 3.3) / 16)  # maxima at 3.3, 19.3, 35.3; minima between
    assert np.allclose(turning_points(score, True), [3.3, 19.3, 35.3], atol=0.05)
    assert np.allclose(turning_points(score, False)[1:3], [11.3, 27.3], atol=0.05)
    truth = np.zeros((40, 6), np.float32)
    truth[:, 4], truth[:, 5] = t, 20.0  # source frame of each output frame; 20 ms between frames
    truth[3:20, 1] = 1.0
    truth[3, 2:4], truth[11, 2:4], truth[19, 2:4] = (1, 3.0), (2, 11.0), (1, 19.0)
    found = series_events(score, truth)
    assert found.missed == 0 and found.error < 0.4
    spurious = score.copy()
    spurious[14:16] = [1.0, 0.0]  # an extra beat inside the labeled span
    assert series_events(spurious, truth).error > found.error + 0.5


def test_frame_records_carry_their_labels_on_their_frames_and_bad_series_are_rejected(phase_records):
    root, uids, rows, out = phase_records
    qc = json.loads((root / "records" / F.QC_FILE).read_text())
    assert qc["target"] == {"kind": "frames", "events": ["ed", "es"]} and qc["classes"] == ["ed", "es"]
    assert qc["rejected"]["frame_label_out_of_range"] == 1 and qc["rejected"]["unlabeled"] >= 1
    rejected = (root / "records" / F.REJECTED_FILE).read_text()
    assert not any(uid in rejected for uid in uids)
    spec = record_spec(root / "records")
    assert spec.is_frames and spec.output == F.FRAME_VALUES
    keys = 0
    for split in F.SPLITS:
        for raw in tf.data.TFRecordDataset(split_files(root / "records", split), compression_type="GZIP"):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            assert F.LABEL not in feature and F.TARGET not in feature
            frames = np.frombuffer(feature[F.FRAMES].bytes_list.value[0], np.uint8).reshape(20, 32, 32)
            at = list(feature[F.KEY_FRAMES].int64_list.value)
            events = list(feature[F.KEY_EVENTS].int64_list.value)
            score = np.asarray(feature[F.FRAME_LABELS].float_list.value)
            keys += len(at)
            # What a person checks: the blood pool is larger at every labeled ed frame than
            # at every labeled es frame of the clip.
            area = (frames > 200).sum(axis=(1, 2)).astype(float)
            ed = [area[t] for t, e in zip(at, events, strict=True) if e == 0]
            es = [area[t] for t, e in zip(at, events, strict=True) if e == 1]
            assert min(ed) > max(es), (at, events, area)
            assert all(score[t] == (1.0 if e == 0 else 0.0) for t, e in zip(at, events, strict=True))
    assert keys == sum(qc["labels"][s].get(e, 0) for s in F.SPLITS for e in ("ed", "es"))


def test_a_frames_split_validates_against_the_schema(phase_records):
    from medseq.components.validate import validate

    root = phase_records[0]
    out = validate(str(root / "records"), root / "validate", max_label_linf=1.0)
    assert not [a for a in out.anomalies if a["kind"] == "schema"], out.anomalies
    assert out.stats["train"]["frame_labels"]["labeled_frames"] > 0


def test_a_class_labels_file_read_for_frames_is_one_line(tmp_path, config):
    path = tmp_path / "frames.yaml"
    path.write_text("train: {target: frames}\n")
    result = medseq("convert", "--input", config.input, "--labels", config.labels, "--out", str(tmp_path / "out"),
                    "--config", str(path))
    assert "expected a frame_labels.csv header" in one_line(result)


def test_every_model_variant_trains_on_frames_and_resumes(phase_records):
    from medseq.components import train
    from medseq.pipeline.config import TrainConfig
    from medseq.pipeline.errors import ConfigError

    root = phase_records[0]
    records = root / "records"
    with pytest.raises(ConfigError, match=r"train.target: value, but the records .* answer a frames"):
        train.train(records, root / "wrong", TrainConfig(target="value"))
    small = TrainConfig(target="frames", epochs=2, batch_size=2, conv_filters=(4,), lstm_units=4, augment=("roll",))
    for name, variant in (("lstm", small), ("causal", dataclasses.replace(small, causal=True)),
                          ("mean_pool", dataclasses.replace(small, sequence_model="mean_pool",
                                                            frame_difference=False))):
        out = train.train(records, root / name, variant)
        history = json.loads((root / name / "history.json").read_text())
        assert {"frame_mae", "eval_frame_mae", "eval_event_error"} <= set(history[-1]), name
        assert out.best_epoch >= 1
    resumed = train.train(records, root / "lstm", dataclasses.replace(small, epochs=3))
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 1
