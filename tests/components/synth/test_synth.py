"""Synthetic studies read back with pydicom and checked against the drawn shapes."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseq.components import synth
from medseq.components.synth import phantoms

IDENTIFIERS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber",
               "InstitutionName", "ReferringPhysicianName")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for task in synth.TASKS:
        out[task] = tmp_path_factory.mktemp(task)
        synth.run(task, patients=8, seed=3, out=out[task], small=True)
    return out


def read_all(root: Path):
    series, junk = defaultdict(list), []
    for path in sorted(p for p in (root / "dicom").rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            junk.append(path)
            continue
        series[ds.SeriesInstanceUID].append(ds)
    return series, junk


def labels(root: Path) -> dict[str, str]:
    with open(root / "labels.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["series_instance_uid", "label"]
    return dict(rows[1:])


def frames_in_time(datasets):
    """(frames, trigger times) of a cine series, classic or enhanced."""
    if len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0]:
        ds = datasets[0]
        times = [float(f.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime)
                 for f in ds.PerFrameFunctionalGroupsSequence]
        return ds.pixel_array.astype(float), times
    datasets = sorted(datasets, key=lambda d: float(d.TriggerTime))
    return np.stack([d.pixel_array.astype(float) for d in datasets]), [float(d.TriggerTime) for d in datasets]


def test_every_file_reads_back_and_junk_is_not_dicom(generated):
    for root in generated.values():
        series, junk = read_all(root)
        assert {p.name for p in junk} >= {"README.TXT", "Thumbs.db", ".DS_Store"}
        labeled = labels(root)
        assert set(labeled) <= set(series) and len(series) > len(labeled)  # localizers are unlabeled
        for datasets in series.values():
            for ds in datasets:
                assert ds.pixel_array.size > 0
                assert all(ds.get(name) for name in IDENTIFIERS), "fake identifiers must be present"
                assert ds.SOPClassUID in {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",
                                          "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}


def test_uids_are_unique_and_syntaxes_are_mixed(generated):
    sops, syntaxes, multiframe = set(), set(), 0
    for root in generated.values():
        series, _ = read_all(root)
        for datasets in series.values():
            for ds in datasets:
                assert ds.SOPInstanceUID not in sops
                sops.add(ds.SOPInstanceUID)
                syntaxes.add(ds.file_meta.TransferSyntaxUID)
                multiframe += "NumberOfFrames" in ds
    assert len(syntaxes) >= 4 and multiframe >= 1


def test_cine_blood_pool_area_gives_the_labelled_ejection_fraction(generated):
    root = generated["cine_ef"]
    series, _ = read_all(root)
    for uid, label in labels(root).items():
        frames, times = frames_in_time(series[uid])
        assert times == sorted(times) and 16 <= len(times) <= 30
        threshold = 0.55 * np.percentile(frames, 99.9)
        areas = (frames > threshold).sum(axis=(1, 2))
        ef = 1.0 - areas.min() / areas.max()
        assert (ef < 0.40) == (label == "reduced_ef"), f"measured EF {ef:.2f} for a {label} series"
        assert areas.argmax() in (0, len(areas) - 1, 1), "end-diastole opens the cycle"


def test_cine_geometry_and_timing_tags(generated):
    series, _ = read_all(generated["cine_ef"])
    for datasets in series.values():
        ds = datasets[0]
        if "LOCALIZER" in ds.ImageType:
            continue
        if "CardiacNumberOfImages" in ds and "NumberOfFrames" not in ds:
            assert ds.CardiacNumberOfImages == len(datasets)
            positions = {tuple(d.ImagePositionPatient) for d in datasets}
            assert len(positions) == 1  # one slice, many phases
            row, col = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
            assert abs(np.dot(row, col)) < 1e-4 and np.linalg.norm(row) == pytest.approx(1, abs=1e-4)


def test_ct_positions_follow_slice_thickness_and_rescale_gives_hu(generated):
    root = generated["ct_nodule"]
    series, _ = read_all(root)
    for uid in labels(root):
        datasets = series[uid]
        if len(datasets) == 1:  # enhanced CT: per-frame positions
            ds = datasets[0]
            z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
            thickness = float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)
        else:
            z = sorted(float(d.ImagePositionPatient[2]) for d in datasets)
            thickness = float(datasets[0].SliceThickness)
            hu = datasets[0].pixel_array * float(datasets[0].RescaleSlope) + float(datasets[0].RescaleIntercept)
            assert hu.min() < -900 and -100 < np.median(hu[hu > -500]) < 150  # air and soft tissue
        assert np.allclose(np.diff(z), thickness, atol=1e-3) and 16 <= len(z) <= 48


def test_nodule_shows_on_two_to_four_slices_and_looks_like_a_vessel_on_one():
    rng = np.random.default_rng(0)
    for trial in range(10):
        slab, truth = phantoms.ct_slab(rng, phantoms.SCANNERS[trial % 3], 64, 32, nodule=True)
        assert 2 <= len(truth.nodule_slices) <= 4
        assert truth.nodule_slices == tuple(range(truth.nodule_slices[0], truth.nodule_slices[-1] + 1))
        _, clear = phantoms.ct_slab(np.random.default_rng(trial), phantoms.SCANNERS[0], 64, 32, nodule=False)
        assert clear.nodule_slices == ()
        assert truth.nodule_radius_mm <= 4 * max(phantoms.SLICE_MM) / 2


def test_same_seed_same_bytes(tmp_path):
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
        return h.hexdigest()

    synth.run("ct_nodule", 2, 11, tmp_path / "a", small=True)
    synth.run("ct_nodule", 2, 11, tmp_path / "b", small=True)
    synth.run("ct_nodule", 2, 12, tmp_path / "c", small=True)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_patients_have_several_studies_and_vendors_differ(generated):
    series, _ = read_all(generated["cine_ef"])
    studies, matrices = defaultdict(set), defaultdict(set)
    for datasets in series.values():
        ds = datasets[0]
        studies[ds.PatientID].add(ds.StudyInstanceUID)
        matrices[ds.Manufacturer].add(ds.Rows)
    assert any(len(s) >= 2 for s in studies.values())
    sizes = [next(iter(v)) for v in matrices.values() if len(v) == 1]
    assert len(set(sizes)) == len(sizes)  # each vendor its own matrix


def test_cine_sax_is_a_4d_stack_whose_label_is_the_volumetric_ejection_fraction(generated, tmp_path):
    """Read back as a person would: the bright blood pool, counted in pixels over every slice
    at each phase, gives the ejection fraction the label says (Simpson's method); some
    vendors write the stack as one series of several positions, others one series per slice."""
    series, _ = read_all(generated["cine_sax"])
    labels = dict(csv.reader(open(generated["cine_sax"] / "labels.csv")))
    studies = defaultdict(list)
    for uid, datasets in series.items():
        if uid in labels:
            studies[datasets[0].StudyInstanceUID].append(datasets)
    kinds = set()
    for stacks in studies.values():
        frames = []  # (slice position, trigger time, image)
        for datasets in stacks:
            for ds in datasets:
                if "PerFrameFunctionalGroupsSequence" in ds:
                    for item, image in zip(ds.PerFrameFunctionalGroupsSequence, ds.pixel_array, strict=True):
                        frames.append((float(item.PlanePositionSequence[0].ImagePositionPatient[2]),
                                       float(item.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime),
                                       image))
                else:
                    frames.append((float(ds.ImagePositionPatient[2]), float(ds.TriggerTime), ds.pixel_array))
        positions = sorted({round(p, 2) for p, _, _ in frames})
        times = sorted({round(t, 1) for _, t, _ in frames})
        assert 6 <= len(positions) <= 12 and 16 <= len(times) <= 30 and len(frames) == len(positions) * len(times)
        kinds.add("one series" if len(stacks) == 1 else "one per slice")
        threshold = 0.5 * max(float(image.max()) for _, _, image in frames)
        volume = defaultdict(int)
        for _, t, image in frames:
            volume[round(t, 1)] += int(np.sum(image > threshold))  # the blood pool is the brightest tissue
        ef = 1.0 - min(volume.values()) / max(volume.values())
        label = {labels[s[0].SeriesInstanceUID] for s in stacks}
        assert len(label) == 1
        assert (ef < 0.42) == (label == {"reduced_ef"}), (ef, label)
    assert kinds == {"one series", "one per slice"}


def test_dce_kinetics_classes_share_their_values_and_differ_only_in_their_order(generated):
    """The two kinetics take one set of lesion values in two orders (an order-blind model
    is at chance by construction); read back, a benign lesion enhances persistently and a
    malignant one peaks at once and washes out."""
    from medseq.components.synth.dce import lesion_curve

    for seed in range(20):
        benign = lesion_curve(np.random.default_rng(seed), 9, malignant=False)
        malignant = lesion_curve(np.random.default_rng(seed), 9, malignant=True)
        assert np.array_equal(np.sort(benign), np.sort(malignant)) and not np.array_equal(benign, malignant)
        assert np.all(np.diff(benign) >= 0) and np.argmax(malignant) == 1 and np.all(np.diff(malignant[1:]) <= 0)
    series, _ = read_all(generated["dce_kinetics"])
    labels = dict(csv.reader(open(generated["dce_kinetics"] / "labels.csv")))
    seen = set()
    for uid, datasets in series.items():
        if uid not in labels:
            continue
        if "PerFrameFunctionalGroupsSequence" in datasets[0]:
            ds = datasets[0]
            index = [int(i.FrameContentSequence[0].TemporalPositionIndex) for i in ds.PerFrameFunctionalGroupsSequence]
            z = [float(i.PlanePositionSequence[0].ImagePositionPatient[2]) for i in ds.PerFrameFunctionalGroupsSequence]
            frames = list(zip(z, index, ds.pixel_array, strict=True))
        else:
            frames = [(float(d.ImagePositionPatient[2]), int(d.TemporalPositionIdentifier), d.pixel_array)
                      for d in datasets]
        first_slice = min(z for z, _, _ in frames)
        images = [img for _, _, img in sorted((f for f in frames if f[0] == first_slice), key=lambda f: f[1])]
        peak = np.unravel_index(np.argmax(np.mean(images, axis=0)), images[0].shape)  # the lesion enhances most
        r, c = peak
        curve = [float(np.mean(img[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2])) for img in images]
        if labels[uid] == "malignant":
            assert int(np.argmax(curve)) < len(curve) / 2 and curve[-1] < 0.9 * max(curve), curve  # wash-out
        else:
            assert int(np.argmax(curve)) >= len(curve) / 2 and curve[-1] > 0.9 * max(curve), curve  # persistent
        seen.add(labels[uid])
    assert seen == {"benign", "malignant"}
