"""`medseq predict` reads a folder through ingest's own steps and in-process executor:
the same limits (the model's own, recorded at ingest), the same duplicate handling and
the same exception policy, so a file that ingest would reject never hangs, floods or
stops predict, and nothing is dropped without a line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from helpers import KEY, SAMPLES, deflate_bomb
from medseq.components import predict
from medseq.components.preprocessing import decode, reasons
from medseq.components.preprocessing.limits import DEFAULT_LIMITS, InputLimits
from medseq.pipeline import cli
from medseq.pipeline.config import PreprocessConfig

SERIES = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))[:2]


def _items(root: Path, limits: InputLimits = DEFAULT_LIMITS) -> list[tuple[str, str, str | None]]:
    """(where, series key, reason or None) of every prepared item, in the order predict gives them."""
    return [(s.where, s.series_key, getattr(s.item, "code", None))
            for s in predict.prepare_folder(root, PreprocessConfig(), key=KEY, limits=limits)]


def test_a_duplicate_instance_is_a_line_after_its_series(tmp_path):
    root = tmp_path / "in"
    shutil.copytree(SERIES[0], root / "a")
    first = sorted((root / "a").iterdir())[0]
    shutil.copy(first, root / "a" / "zz-copy.dcm")  # the same instance again, under another name
    [(where, key, reason), (dup_where, dup_key, dup_reason)] = _items(root)
    assert (where, reason) == ("a", None) and key
    assert dup_reason == reasons.DUPLICATE_INSTANCE and dup_key == key
    assert dup_where in ("a/zz-copy.dcm", f"a/{first.name}")  # one of the two copies is named


def test_a_deflate_bomb_is_rejected_at_the_limit_and_the_series_beside_it_is_prepared(tmp_path):
    root = tmp_path / "in"
    shutil.copytree(SERIES[0], root / "a")
    deflate_bomb(next(SERIES[0].iterdir()), root / "bomb.dcm", inflated_mb=40)
    items = _items(root, InputLimits(max_inflated_mb=8))
    assert items[0][0] == "bomb.dcm" and items[0][2] == reasons.INFLATE_LIMIT and not items[0][1]
    assert [(w, r) for w, _, r in items[1:]] == [("a", None)]


def test_a_decode_past_the_timeout_rejects_its_series_only(tmp_path, monkeypatch):
    root = tmp_path / "in"
    shutil.copytree(SERIES[0], root / "slow")
    shutil.copytree(SERIES[1], root / "fast")
    original = decode._decode_file

    def slow_for_one_series(path, *args, **kwargs):
        if "/slow/" in path:
            time.sleep(0.2)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(decode, "_decode_file", slow_for_one_series)
    items = _items(root, InputLimits(decode_timeout_s=0.1))
    assert [(w, r) for w, _, r in items] == [("fast", None), ("slow", reasons.DECODE_TIMEOUT)]


def test_a_codec_panic_rejects_one_series_as_ingest_does(tmp_path, monkeypatch):
    """A Rust codec that panics raises a BaseException (pyo3's PanicException), not an
    Exception: one series is rejected, the others are still prepared."""
    root = tmp_path / "in"
    shutil.copytree(SERIES[0], root / "panics")
    shutil.copytree(SERIES[1], root / "fine")
    original = decode._decode_file

    class PanicException(BaseException):
        pass

    def panics(path, *args, **kwargs):
        if "/panics/" in path:
            raise PanicException("called `Result::unwrap()` on an `Err` value")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(decode, "_decode_file", panics)
    items = _items(root)
    assert [(w, r) for w, _, r in items] == [("fine", None), ("panics", reasons.PROCESSING_ERROR)]


@pytest.mark.slow
def test_predict_applies_the_models_own_inflate_limit_and_reports_duplicates(trained, tmp_path, capsys):
    """The model's spec records ingest's limits; predict applies them (not the defaults)."""
    model = tmp_path / "model"
    shutil.copytree(trained.model_dir, model)
    spec_path = model / "assets.extra" / "medseq_spec.json"
    spec = json.loads(spec_path.read_text())
    spec["input_limits"] = {**spec.get("input_limits", {}), "max_inflated_mb": 8}
    spec_path.write_text(json.dumps(spec))
    root = tmp_path / "in"
    shutil.copytree(SERIES[0], root / "a")
    shutil.copy(sorted((root / "a").iterdir())[0], root / "a" / "zz-copy.dcm")
    deflate_bomb(next(SERIES[0].iterdir()), root / "bomb.dcm", inflated_mb=40)  # under the default 1024 MB
    code = cli.main(["predict", "--model", str(model), "--input", str(root), "--json"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0, captured.err
    assert [(line["series"], line.get("rejected")) for line in lines][0] == ("bomb.dcm", reasons.INFLATE_LIMIT)
    assert "more than 8 MB" in lines[0]["message"]
    assert [line.get("rejected") for line in lines[1:]] == [None, reasons.DUPLICATE_INSTANCE]
    assert "1 file(s) repeat another file's instance; one copy of each was used" in captured.err
    assert "1 file(s) are no part of a series" in captured.err and "series could not be read" not in captured.err
