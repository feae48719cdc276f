"""The ingest DoFns under TestPipeline, and the hand-written wire formats against TF."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from helpers import KEY
from medseq.components.ingest.steps import IDENTIFIERS, REJECTED, BuildRecordStep, ReadHeaderStep, RejectedRow
from medseq.components.ingest.transforms import StepDoFn
from medseq.components.io import deid
from medseq.components.io.beam import FN_API_RUNNER
from medseq.components.io.records import encode_example, write_tfrecords
from medseq.components.preprocessing.headers import FileHeader
from medseq.pipeline.config import PreprocessConfig, SplitConfig


def test_read_header_keys_files_and_dead_letters_the_rest(pydicom_files):
    root = str(pydicom_files)
    paths = [str(pydicom_files / n) for n in ("CT_small.dcm", "MR_small.dcm", "README.txt", "rtplan.dcm")]
    with TestPipeline(runner=FN_API_RUNNER) as p:
        out = (p | beam.Create(paths)
               | beam.ParDo(StepDoFn(ReadHeaderStep(root, KEY))).with_outputs(REJECTED, IDENTIFIERS, main="headers"))
        keys = out.headers | beam.Map(lambda kv: (FileHeader.from_bytes(kv[1]).modality,
                                                  FileHeader.from_bytes(kv[1]).rows))
        reasons = out[REJECTED] | beam.Map(lambda r: (r.path, r.reason))
        assert_that(keys, equal_to([("CT", 128), ("MR", 64)]), label="Headers")
        assert_that(reasons, equal_to([("README.txt", "not_dicom"), ("rtplan.dcm", "no_pixel_data")]),
                    label="Rejected")


def test_build_record_turns_a_series_into_one_example(pydicom_files, tmp_path):
    folder = pydicom_files / "dicomdirtests" / "98892001" / "CT5N"
    paths = sorted(str(p) for p in folder.iterdir())
    root = str(pydicom_files)
    import pydicom

    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    config = PreprocessConfig(frames=8, height=16, width=16, temporal="pad")
    with TestPipeline(runner=FN_API_RUNNER) as p:
        read = StepDoFn(ReadHeaderStep(root, KEY))
        build = StepDoFn(BuildRecordStep(root, KEY, {uid: "b"}, ("a", "b"), config, SplitConfig(),
                                         staging=str(tmp_path)))
        headers = (p | beam.Create(paths) | "ReadHeaders" >> beam.ParDo(read).with_outputs(
            REJECTED, IDENTIFIERS, main="headers")).headers
        built = (headers | beam.GroupByKey()
                 | "BuildRecords" >> beam.ParDo(build).with_outputs(REJECTED, main="records"))
        summary = built.records | beam.Map(lambda p: (p.record.series_key, p.record.label, p.record.valid_frames,
                                                       p.record.files, p.record.nbytes > 0))
        assert_that(summary, equal_to([(deid.keyed_hash(KEY, "series", uid), "b", 5, 5, True)]))


def test_unlabeled_series_goes_to_the_dead_letter_output(pydicom_files, tmp_path):
    path = str(pydicom_files / "CT_small.dcm")
    with TestPipeline(runner=FN_API_RUNNER) as p:
        headers = (p | beam.Create([path])
                   | "ReadHeaders" >> beam.ParDo(StepDoFn(ReadHeaderStep(str(pydicom_files), KEY))).with_outputs(
                       REJECTED, IDENTIFIERS, main="headers")).headers
        build = StepDoFn(BuildRecordStep(str(pydicom_files), KEY, {}, ("a",), PreprocessConfig(), SplitConfig(),
                                         staging=str(tmp_path)))
        built = (headers | beam.GroupByKey()
                 | "BuildRecords" >> beam.ParDo(build).with_outputs(REJECTED, main="records"))
        assert_that(built[REJECTED] | beam.Map(lambda r: r.reason), equal_to(["unlabeled"]))


def test_example_bytes_parse_with_tensorflow_exactly():
    frames = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4, 1)
    raw = encode_example({"frames": frames.tobytes(), "frames_shape": [2, 3, 4, 1], "label": [1],
                          "neg": [-5], "spacing": np.asarray([0.5, 0.25, 30.0], np.float32),
                          "modality": b"MR", "many": [b"a", b"bc"]})
    f = tf.train.Example.FromString(raw).features.feature
    assert np.frombuffer(f["frames"].bytes_list.value[0], np.uint8).reshape(2, 3, 4, 1).tolist() == frames.tolist()
    assert list(f["frames_shape"].int64_list.value) == [2, 3, 4, 1] and list(f["neg"].int64_list.value) == [-5]
    assert list(f["spacing"].float_list.value) == [0.5, 0.25, 30.0]
    assert list(f["many"].bytes_list.value) == [b"a", b"bc"] and f["modality"].bytes_list.value[0] == b"MR"
    # Keys are written sorted, so equal features give equal bytes.
    assert raw == encode_example(dict(reversed(list({"frames": frames.tobytes(), "frames_shape": [2, 3, 4, 1],
                                                     "label": [1], "neg": [-5], "spacing": np.asarray(
                                                         [0.5, 0.25, 30.0], np.float32), "modality": b"MR",
                                                     "many": [b"a", b"bc"]}.items()))))


def test_tfrecord_framing_reads_back_with_tf_data(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 100]
    path = tmp_path / "r.tfrecord.gz"
    with open(path, "wb") as f:
        assert write_tfrecords(f, records) == 3
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]
    assert read == records


def test_rejected_rows_are_json_lines():
    row = RejectedRow("a/b", "", "not_dicom", "not a DICOM file")
    assert json.loads(row.to_json()) == {"path": "a/b", "series_key": "", "reason": "not_dicom",
                                         "message": "not a DICOM file", "files": 1}


def test_keyed_hashes_depend_on_key_and_kind():
    a = deid.keyed_hash(KEY, "patient", "MRN1")
    assert a != deid.keyed_hash(KEY, "series", "MRN1")
    assert a != deid.keyed_hash(b"another-key-0123456789", "patient", "MRN1")
    assert deid.safe_path(deid.relative("/in/1.2.3.4.5/IM1", "/in"), KEY).startswith("h-")
    assert deid.safe_path("PA000001/ST000002/IM000003", KEY) == "PA000001/ST000002/IM000003"
    scrubbed = deid.safe_path("Doe_Peter/77654033/x.dcm", KEY, deid.identifier_tokens("Doe^Peter"))
    assert "Doe" not in scrubbed and "Peter" not in scrubbed and "77654033" not in scrubbed
    assert scrubbed.endswith("/x.dcm")
    # One rule whatever a file's own header says: a person name's '^', and the tokens of
    # any header of the run (a camel-cased or joined name included).
    assert deid.safe_path("ZZPROBE^ALICE 0/BROKEN/f.dcm", KEY).split("/")[1:] == ["BROKEN", "f.dcm"]
    assert deid.safe_path("AliceZzprobe/CINE", KEY, deid.identifier_tokens("ZZPROBE^ALICE")).startswith("h-")
    assert deid.safe_path("cine_sax/SE000001", KEY, deid.identifier_tokens("ZZPROBE^ALICE")) == "cine_sax/SE000001"


def test_links_anywhere_on_the_path_that_lead_out_of_the_input_are_outside(tmp_path):
    from medseq.components.ingest.transforms import outside, real_root

    root, elsewhere = tmp_path / "input", tmp_path / "elsewhere"
    (root / "a").mkdir(parents=True)
    elsewhere.mkdir()
    for folder in (root / "a", elsewhere):
        (folder / "f.dcm").write_bytes(b"x")
    (root / "linked_folder").symlink_to(elsewhere, target_is_directory=True)
    (root / "a" / "linked_file.dcm").symlink_to(elsewhere / "f.dcm")
    (root / "a" / "inner_link.dcm").symlink_to(root / "a" / "f.dcm")
    real = real_root(str(root))
    assert not outside(str(root / "a" / "f.dcm"), real)
    assert not outside(str(root / "a" / "inner_link.dcm"), real)
    assert outside(str(root / "a" / "linked_file.dcm"), real)
    assert outside(str(root / "linked_folder" / "f.dcm"), real)
    assert outside(str(root / "a" / ".." / "linked_folder" / "f.dcm"), real)


def test_a_record_travels_itself_where_the_staging_folder_is_remote(pydicom_files, tmp_path):
    """A local staging folder holds the examples in spill files (memory stays flat on one
    machine); with a remote one workers share no disk, so the example travels itself."""
    import pydicom

    from medseq.components.ingest.steps import BuildRecordStep, Placed, ReadHeaderStep, Tagged

    paths = [str(pydicom_files / "CT_small.dcm")]
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    read = ReadHeaderStep(str(pydicom_files), KEY)
    grouped: dict[str, list[bytes]] = {}
    for path in paths:
        for out in read.process(path):
            if not isinstance(out, Tagged):
                source, header = out
                grouped.setdefault(source, []).append(header)
    config = PreprocessConfig(frames=4, height=16, width=16, temporal="pad", min_frames=1)
    examples = {}
    for staging in (str(tmp_path), "gs://bucket/staging"):
        build = BuildRecordStep(str(pydicom_files), KEY, {uid: "b"}, ("a", "b"), config, SplitConfig(),
                                staging=staging)
        build.start_bundle()
        [placed] = [o for item in grouped.items() for o in build.process(item) if not isinstance(o, Tagged)]
        build.finish_bundle()
        assert isinstance(placed, Placed)
        if isinstance(placed.example, bytes):
            examples[staging] = placed.example
        else:
            spill, offset, length = placed.example
            with open(spill, "rb") as f:
                f.seek(offset)
                examples[staging] = f.read(length)
    local, remote = examples.values()
    assert isinstance(remote, bytes) and local == remote and len(remote) == placed.record.nbytes
