"""The model knows its training domain and says when a series is outside it: the cine MR
model refuses pydicom's real ultrasound clip and its CT and MR slices (a modality, colour
or frame axis it never saw), and predicts a series of its own task without a word."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import SAMPLES
from medseq.components.io.examples import load_spec_json
from medseq.components.model.domain import SeriesFacts, findings
from medseq.pipeline import cli

DOMAIN = {"modalities": ["MR"], "frame_axes": ["time"], "colours": ["grey"], "manufacturers": ["GE", "SIEMENS"],
          "valid_frames": [16, 30], "pixel_spacing_mm": [1.2, 1.6], "frame_interval": {"time": [28.0, 45.0]}}


def _facts(**changes) -> SeriesFacts:
    base = {"modality": "MR", "manufacturer": "GE", "colour": "grey", "frame_axis": "time", "valid_frames": 20,
            "spacing": (1.4, 1.4, 33.0)}
    return SeriesFacts(**{**base, **changes})


def test_a_series_like_the_training_data_has_no_finding():
    assert findings(DOMAIN, _facts()) == findings(DOMAIN, _facts(valid_frames=34))  # within the slack
    assert not findings(DOMAIN, _facts()).hard and not findings(DOMAIN, _facts()).soft


@pytest.mark.parametrize(("change", "expected"), [
    ({"modality": "US"}, "modality US, trained on MR"),
    ({"colour": "colour"}, "colour colour, trained on grey"),
    ({"frame_axis": "space", "spacing": (1.4, 1.4, 5.0)}, "frame axis space, trained on time"),
])
def test_what_the_model_never_saw_is_a_hard_mismatch(change, expected):
    found = findings(DOMAIN, _facts(**change))
    assert found.hard == (expected,)


@pytest.mark.parametrize(("change", "expected"), [
    ({"manufacturer": "TOSHIBA"}, "manufacturer TOSHIBA, trained on GE, SIEMENS"),
    ({"valid_frames": 60}, "60 frames, trained on 16-30"),
    ({"spacing": (0.4, 0.4, 33.0)}, "pixel spacing 0.4 mm, trained on 1.2-1.6 mm"),
    ({"spacing": (1.4, 1.4, 120.0)}, "frame interval 120 ms, trained on 28-45 ms"),
])
def test_what_is_unusual_is_a_soft_finding(change, expected):
    found = findings(DOMAIN, _facts(**change))
    assert not found.hard and found.soft == (expected,)


def _stack(source, folder, slices: int = 4) -> None:
    """`source` as a series of `slices` parallel slices, 5 mm apart along its normal."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    ds = pydicom.dcmread(source)
    orientation = np.array(ds.ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array(ds.ImagePositionPatient, float)
    ds.SeriesInstanceUID = generate_uid()
    for i in range(slices):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [float(v) for v in origin + 5.0 * i * normal]
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"{i}.dcm")


@pytest.mark.slow
def test_the_cine_model_refuses_other_modalities_and_predicts_its_own_task(trained, pydicom_files, tmp_path, capsys):
    domain = load_spec_json(trained.model_dir)["training"]["domain"]
    assert domain["modalities"] == ["MR"] and domain["frame_axes"] == ["time"] and domain["colours"] == ["grey"]
    assert domain["records"] > 0 and domain["valid_frames"][0] <= domain["valid_frames"][1]
    root = tmp_path / "in"
    (root / "examples_ybr_color").mkdir(parents=True)  # pydicom's real 30-frame ultrasound clip
    shutil.copy(pydicom_files / "examples_ybr_color.dcm", root / "examples_ybr_color")
    for name in ("CT_small", "MR_small"):  # pydicom's real CT and MR slices, each made a stack of four
        _stack(pydicom_files / f"{name}.dcm", root / name)
    [cine] = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))[-1:]
    shutil.copytree(cine, root / "cine")
    code = cli.main(["predict", "--model", trained.model_dir, "--input", str(root), "--json"])
    captured = capsys.readouterr()
    lines = {line["series"].split("/")[0]: line for line in map(json.loads, captured.out.splitlines())}
    assert code == 1, captured.err
    assert "label" in lines["cine"] and not lines["cine"].get("domain"), lines["cine"]
    refused = {where: line["message"] for where, line in lines.items() if line.get("rejected") == "outside_domain"}
    assert set(refused) == {"examples_ybr_color", "CT_small", "MR_small"}, lines
    assert "modality US, trained on MR" in refused["examples_ybr_color"]
    assert "colour colour, trained on grey" in refused["examples_ybr_color"]
    assert "modality CT, trained on MR" in refused["CT_small"] and "frame axis space, trained on time" in refused[
        "CT_small"]
    assert "frame axis space, trained on time" in refused["MR_small"] and "modality" not in refused["MR_small"]
    assert "3 of 4 series are outside the model's training domain" in captured.err
    # --outside-domain warn: predicted, and flagged with the same findings.
    assert cli.main(["predict", "--model", trained.model_dir, "--input", str(root), "--json",
                     "--outside-domain", "warn"]) == 0
    warned = {line["series"].split("/")[0]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "label" in warned["examples_ybr_color"] and "modality US, trained on MR" in warned["examples_ybr_color"][
        "domain"]
    # The embedding's domain score flags each of them as well, and not the cine of the model's own task.
    for name in ("examples_ybr_color", "CT_small", "MR_small"):
        assert any(f.startswith("domain score") for f in warned[name]["domain"]), warned[name]
    assert warned["cine"]["domain_score"] < load_spec_json(trained.model_dir)["training"]["domain"]["score"][
        "threshold"]


@pytest.mark.slow
def test_every_signature_scores_the_domain_and_a_shifted_series_scores_higher(trained, cine_records, tmp_path,
                                                                               capsys):
    """The serving signatures return `domain_score`; the threshold recorded in the spec is
    passed by about `train.domain_false_alarm` of the eval split; series with their frames
    replaced by noise (a corrupted series) score above the eval split's scores."""
    import numpy as np
    import pydicom
    import tensorflow as tf

    from medseq.components.io.examples import eval_dataset, record_spec, split_files
    from medseq.pipeline import features as F

    score = load_spec_json(trained.model_dir)["training"]["domain"]["score"]
    assert score["set_on"] == "eval" and score["false_alarm"] == 0.05 and score["threshold"] > 0
    signatures = tf.saved_model.load(trained.model_dir).signatures
    spec = record_spec(cine_records)
    eval_scores = []
    for inputs, _ in eval_dataset(split_files(cine_records, "eval"), spec, 8):
        out = signatures[F.FRAMES_SIGNATURE](**inputs)
        eval_scores += list(out[F.DOMAIN_SCORE].numpy())
    eval_scores = np.array(eval_scores)
    assert np.isfinite(eval_scores).all() and np.mean(eval_scores > score["threshold"]) <= 0.05 + 1 / len(eval_scores)
    # Noise in place of the pixels of held-out series: the same headers, nothing a heart would look like.
    rng = np.random.default_rng(0)
    cines = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))[-4:]
    for k, cine in enumerate(cines):
        (tmp_path / "noise" / f"s{k}").mkdir(parents=True)
        for path in sorted(cine.iterdir()):
            ds = pydicom.dcmread(path)
            ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
            pixels = ds.pixel_array
            ds.PixelData = rng.integers(0, int(pixels.max()) + 1, pixels.shape, dtype=pixels.dtype).tobytes()
            ds.SeriesInstanceUID = ds.SeriesInstanceUID + f".{k + 1}"
            ds.save_as(tmp_path / "noise" / f"s{k}" / path.name)
    assert cli.main(["predict", "--model", trained.model_dir, "--input", str(tmp_path / "noise"), "--json"]) == 0
    noisy = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    noisy_scores = np.array([line["domain_score"] for line in noisy])
    print(f"domain score: eval p50 {np.median(eval_scores):.2f} max {eval_scores.max():.2f}, threshold "
          f"{score['threshold']:.2f}; noise {np.round(noisy_scores, 2)}")
    assert len(noisy) == 4 and np.median(noisy_scores) > np.quantile(eval_scores, 0.9)
