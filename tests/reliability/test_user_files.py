"""The user's files are safe: medseq writes only into folders it owns (new, empty, or
marked by an earlier medseq run), replaces only the names it writes there, never leaves
its staging behind (a full disk in the final merge included), and takes no lock over
from a job that is still starting. A served model's folder keeps what other tools put
there."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from helpers import IN_PROCESS, SAMPLES, convert, medseq
from medseq.components.ingest import executor
from medseq.components.io import storage
from medseq.components.io.output_lock import LOCK_FILE, MARKER
from medseq.pipeline.errors import InputError

pytestmark = pytest.mark.reliability
SERIES = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def small(config, tmp_path):
    root = tmp_path / "in"
    for i, series in enumerate(SERIES[:2]):
        shutil.copytree(series, root / f"s{i}")
    return config.on_input(str(root), config.labels)


def _users_folder(folder: Path) -> dict[str, bytes]:
    """A folder of a user's, holding names ingest also writes."""
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "model.py").write_text("print('my training code')\n")
    (folder / "test").mkdir()
    (folder / "test" / "test_model.py").write_text("def test(): pass\n")
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "qc.json").write_text('{"mine": true}\n')
    return snapshot(folder)


def test_an_output_folder_holding_the_users_files_is_refused_in_one_line_and_left_as_it_was(small, tmp_path):
    before = _users_folder(tmp_path / "mine")
    result = medseq("convert", "--input", small.input, "--labels", small.labels, "--out", str(tmp_path / "mine"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "holds 4 file(s) or folder(s) medseq did not write" in lines[0] and "notes.txt" not in lines[0]
    assert snapshot(tmp_path / "mine") == before and not (tmp_path / "mine" / MARKER).exists()
    # `medseq run --out .` in a source tree, and every other stage's --out, the same way.
    run = medseq("run", "--out", ".", cwd=tmp_path / "mine")
    assert run.returncode == 2 and "medseq did not write" in run.stderr and snapshot(tmp_path / "mine") == before
    for stage in (["validate", "--examples", str(tmp_path)], ["train", "--examples", str(tmp_path)]):
        result = medseq(*stage, "--out", str(tmp_path / "mine"))
        assert result.returncode == 2 and "medseq did not write" in result.stderr, result.stderr
    assert snapshot(tmp_path / "mine") == before


def test_a_rerun_into_an_earlier_output_keeps_the_users_other_files(small, tmp_path):
    out = tmp_path / "out"
    convert(small, out, beam_args=IN_PROCESS)
    (out / "notes.txt").write_text("mine\n")
    (out / "extra").mkdir()
    (out / "extra" / "plot.png").write_bytes(b"\x89PNG")
    convert(small, out, beam_args=())
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "extra" / "plot.png").read_bytes() == b"\x89PNG"
    assert sum(json.loads((out / "qc.json").read_text())["records"].values()) == 2


def test_a_full_disk_during_the_final_merge_leaves_no_staging_and_the_earlier_output(small, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert(small, out, beam_args=())
    before = snapshot(out)
    create = storage.create

    def full(path: str):
        if path.endswith("qc.json.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return create(path)

    monkeypatch.setattr(executor.storage, "create", full)
    with pytest.raises(OSError):
        convert(small, out, key=b"another-key-0123456789abcdef", beam_args=())
    assert snapshot(out) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".medseq-")]


def test_a_swap_that_fails_midway_puts_the_earlier_output_back(small, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert(small, out, beam_args=())
    before = snapshot(out)
    rename, calls = storage.rename, []

    def failing(source: str, target: str) -> None:
        calls.append(source)
        if len(calls) == 7:  # the old outputs moved away, two of the new ones in place
            raise OSError(errno.EIO, "Input/output error", source)
        rename(source, target)

    monkeypatch.setattr(executor.storage, "rename", failing)
    with pytest.raises(OSError):
        convert(small, out, key=b"another-key-0123456789abcdef", beam_args=())
    assert snapshot(out) == before and not [p for p in out.iterdir() if p.name.startswith(".medseq-")]


def test_a_lock_without_its_pid_yet_is_not_taken_over_and_an_old_one_is(small, tmp_path):
    out = tmp_path / "out"
    convert(small, out, beam_args=())
    (out / LOCK_FILE).write_text("")  # another tool's job, between creating the lock and writing into it
    with pytest.raises(InputError, match="a job starting now"):
        convert(small, out, beam_args=())
    old = time.time() - 3600
    os.utime(out / LOCK_FILE, (old, old))
    convert(small, out, beam_args=())
    assert not (out / LOCK_FILE).exists()


def test_push_keeps_the_other_models_of_a_served_folder_and_versions_it_did_not_write(tmp_path):
    from medseq.components.push.executor import retire_old_versions, write_models_config

    serving = tmp_path / "serving"
    (serving / "medseq" / "1" / "variables").mkdir(parents=True)  # another tool's version of the same name
    (serving / "models.config").write_text(
        'model_config_list { config { name: "other" base_path: "/srv/other" model_platform: "tensorflow" } }\n')
    for version in (2, 3, 4):
        (serving / "medseq" / str(version) / "assets.extra").mkdir(parents=True)
        (serving / "medseq" / str(version) / "assets.extra" / "medseq_model.json").write_text("{}")
    assert retire_old_versions(serving / "medseq", keep=1) == (2, 3)
    assert sorted(p.name for p in (serving / "medseq").iterdir()) == ["1", "4"]
    text = write_models_config(serving, "medseq").read_text()
    assert 'name: "other"' in text and 'base_path: "/srv/other"' in text and 'name: "medseq"' in text
    (serving / "models.config").write_text("not a text proto {{{\n")
    with pytest.raises(InputError, match="not a TF Serving ModelServerConfig"):
        write_models_config(serving, "medseq")
    assert (serving / "models.config").read_text() == "not a text proto {{{\n"
