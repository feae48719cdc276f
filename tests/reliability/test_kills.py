"""Kills: `medseq convert` and `medseq push` killed with SIGKILL at random moments. The
rerun gives the bytes of a clean run, a reader never sees half an output, leftovers of
killed jobs are removed, and two jobs into one output folder are refused."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import IN_PROCESS, KEY, SAMPLES, auc_gate
from medseq.components.evaluate import evaluate
from medseq.components.io.output_lock import LEFTOVER_PREFIXES, LOCK_FILE
from medseq.pipeline import features as F

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
ENV = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode()}


def convert(out: Path) -> list[str]:
    return [sys.executable, "-m", "medseq.pipeline.cli", "convert", "--input", str(SAMPLES / "cine_ef" / "dicom"),
            "--labels", str(SAMPLES / "cine_ef" / "labels.csv"), "--out", str(out)]


def files_of(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its Beam worker processes, as a crash takes them
    except ProcessLookupError:
        pass  # it had finished: a kill after the end is a moment too
    proc.wait()


class Watcher(threading.Thread):
    """Polls an output folder: a qc.json must come with complete shards holding its records."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.out, self.stop, self.problems, self.complete_views = out, threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.look()
            except FileNotFoundError:
                pass  # moved while read: the next look sees the new state

    def look(self) -> None:
        qc_path = self.out / F.QC_FILE
        for shard in self.out.glob("*/*.tfrecord.gz"):
            with gzip.open(shard) as f:
                f.read()  # a partial shard would end early: EOFError / BadGzipFile
        if not qc_path.exists():
            return
        seen = os.stat(qc_path).st_ino
        qc_text = qc_path.read_text()
        counts = {split: sum(_count(s) for s in (self.out / split).glob("*.tfrecord.gz")) for split in F.SPLITS}
        # Not replaced meanwhile: the same file, not merely the same text (a rerun on the
        # same input writes an identical qc.json, and its swap may fall between the reads).
        if qc_path.exists() and os.stat(qc_path).st_ino == seen and qc_path.read_text() == qc_text:
            if counts != json.loads(qc_text)["records"]:
                self.problems.append(f"qc.json says {json.loads(qc_text)['records']}, shards hold {counts}")
            self.complete_views += 1


def _count(shard: Path) -> int:
    data, n, i = gzip.decompress(shard.read_bytes()), 0, 0
    while i < len(data):
        length = int.from_bytes(data[i:i + 8], "little")
        i += 16 + length
        n += 1
    return n


def _wait_for_staging(proc: subprocess.Popen, out: Path) -> None:
    """Python and Beam start; the work begins with the staging folder."""
    while proc.poll() is None and not list(out.glob(".medseq-staging-*")):
        time.sleep(0.002)


def _work_seconds(out: Path) -> float:
    """How long a job works: from its staging folder's appearing to its moving into place
    (the interpreter's exit after that is no moment to kill it in)."""
    proc = subprocess.Popen(convert(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_staging(proc, out)
    started = time.monotonic()
    while list(out.glob(".medseq-staging-*")):
        time.sleep(0.002)
    took = time.monotonic() - started
    proc.wait(timeout=300)
    return took


def test_convert_killed_three_times_then_rerun_gives_the_bytes_of_a_clean_run(tmp_path):
    clean = tmp_path / "clean"
    subprocess.run(convert(clean), env=ENV, check=True, capture_output=True, timeout=300)
    out = tmp_path / "out"
    subprocess.run(convert(out), env=ENV, check=True, capture_output=True, timeout=300)  # readers can look now
    watcher = Watcher(out)
    watcher.start()
    rng = np.random.default_rng(7)
    work = _work_seconds(tmp_path / "timed")
    try:
        left = 0
        for moment in rng.uniform(0.0, 0.9 * work, 3):  # seconds into the job's work
            # On a machine busier during the timed run than now, a job can end before its
            # kill: then again, a quarter as far in (up to three times).
            for _ in range(4):
                before = set(out.glob(".medseq-staging-*"))
                proc = subprocess.Popen(convert(out), env=ENV, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
                _wait_for_staging(proc, out)
                time.sleep(moment)
                kill_group(proc)
                if set(out.glob(".medseq-staging-*")) - before:  # this job's own staging, left behind
                    left += 1
                    break
                moment /= 4
        rerun = subprocess.run(convert(out), env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        watcher.stop.set()
        watcher.join()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert left >= 1  # kills landed inside the job: its staging was left behind
    assert not watcher.problems and watcher.complete_views > 0
    assert files_of(out) == files_of(clean)  # leftovers of the killed jobs removed, the lock released
    assert not any(p.name.startswith(LEFTOVER_PREFIXES) or p.name == LOCK_FILE for p in out.iterdir())


def test_two_jobs_into_one_output_folder_are_refused(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(convert(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / LOCK_FILE).exists() and time.time() < deadline:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # hold the first job while it holds the lock: no race with its end
        second = subprocess.run(convert(out), env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
        first.wait(timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip() == (f"medseq convert: another medseq job (pid {first.pid}) is writing into {out}; "
                                     f"expected one job per output folder: wait for it, or remove "
                                     f"{out / LOCK_FILE} if that process is gone")
    assert first.returncode == 0 and (out / F.QC_FILE).exists()


def test_a_push_killed_mid_copy_leaves_no_partial_version(cine_records, trained, tmp_path):
    evaluation = evaluate(str(cine_records), trained.model_dir, tmp_path / "e", auc_gate(tmp_path / "gate.pbtxt"),
                          beam_args=IN_PROCESS)
    assert evaluation.blessed
    serving = tmp_path / "serving"
    base = serving / "medseq"
    needed = {p.relative_to(trained.model_dir) for p in Path(trained.model_dir).rglob("*") if p.is_file()}
    push = [sys.executable, "-m", "medseq.pipeline.cli", "push", "--model", trained.model_dir, "--evaluation",
            evaluation.out, "--serving-dir", str(serving)]
    for attempt in range(3):
        proc = subprocess.Popen(push, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(base.glob(".incoming-*")):
            time.sleep(0.001)
        time.sleep(attempt * 0.002)  # at the first file, a little later, later still
        kill_group(proc)
        for version in (p for p in base.iterdir() if p.name.isdigit()):
            held = {p.relative_to(version) for p in version.rglob("*") if p.is_file()}
            assert needed <= held, f"version {version.name} is partial"
    done = subprocess.run(push, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(base.glob(".incoming-*")) and not list(base.glob(".retired-*"))
    assert "push: version" in done.stdout
