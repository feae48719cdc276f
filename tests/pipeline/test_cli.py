"""The CLI as a user meets it: one-line errors, exit 2, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medseq.pipeline import cli

COMMANDS = ("synth", "convert", "validate", "train", "evaluate", "push", "predict", "run")


def medseq(*args: str, key: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEDSEQ_HASH_KEY"}
    if key:
        env["MEDSEQ_HASH_KEY"] = "cli-test-key-0123456789"
    return subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: medseq " + command in capsys.readouterr().out


def test_wrong_flag_is_one_line_with_suggestion():
    result = medseq("synth", "--task", "cine_ef", "--patients", "1", "--out", "x", "--sed", "3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--sed" in lines[0] and "did you mean --seed" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_flag_on_a_beam_command_is_caught_before_beam():
    result = medseq("convert", "--input", "a", "--labels", "b", "--out", "c", "--runer=DirectRunner")
    assert result.returncode == 2 and "--runer" in result.stderr and "--runner" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("runner", ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner", "--runner DaskRunner"])
def test_the_dask_runner_is_refused_in_one_line(runner):
    # Beam 2.77's DaskRunner merges tagged outputs into the main one: ingest's dead
    # letters reached its GroupByKey ("cannot unpack non-iterable RejectedRow object").
    result = medseq("convert", "--input", "a", "--labels", "b", "--out", "c", *runner.split())
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "DaskRunner cannot run medseq" in lines[0], result.stderr


def test_missing_input_is_one_line(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("series_instance_uid,label\n1.2.3,a\n")
    result = medseq("convert", "--input", str(tmp_path / "nowhere"), "--labels", str(labels),
                    "--out", str(tmp_path / "out"), "--runner=DirectRunner")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"medseq convert: input not found: {tmp_path / 'nowhere'} "
                                                  "(expected a folder or a glob of DICOM files)"]


def test_bad_labels_header_is_one_line(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("uid,diagnosis\n1.2.3,a\n")
    result = medseq("convert", "--input", str(tmp_path), "--labels", str(labels), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "expected a CSV header with a column label and one of series_instance_uid," in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian: {}\n")
    result = medseq("run", "--config", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"medseq run: {path}: unknown key 'trian' (did you mean 'train'?); " \
        "expected one of " \
        "input, labels, synth, preprocess, ingest, validate, train, evaluate, export, push, federate, report"


def test_missing_hash_key_is_one_line(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("series_instance_uid,label\n1.2.3,a\n")
    result = medseq("convert", "--input", str(tmp_path), "--labels", str(labels), "--out", str(tmp_path / "o"),
                    key=False)
    assert result.returncode == 2
    assert "MEDSEQ_HASH_KEY" in result.stderr and "Traceback" not in result.stderr


def test_input_without_files_is_one_line(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("series_instance_uid,label\n1.2.3,a\n")
    (tmp_path / "empty").mkdir()
    result = medseq("convert", "--input", str(tmp_path / "empty"), "--labels", str(labels),
                    "--out", str(tmp_path / "out"), "--runner=DirectRunner")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"medseq convert: no files found in {tmp_path / 'empty'} "
                                                  "(expected DICOM files in it or matching it)"]


def test_print_config_shows_the_effective_config_of_a_command(tmp_path, capsys):
    import yaml

    partial = tmp_path / "partial.yaml"
    partial.write_text("preprocess: {frames: 1}\n")
    assert cli.main(["train", "--print-config", "--config", str(partial), "--epochs", "3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["preprocess"]["frames"] == 1 and shown["train"]["epochs"] == 3  # the file, then the option
    assert shown["ingest"]["split"]["train"] == 0.6 and shown["train"]["batch_size"] == 4  # the rest: shipped


def test_native_start_up_lines_stay_off_the_console_of_this_process_and_its_children():
    script = (
        "import os, subprocess, sys\n"
        "from medseq.pipeline.console import filter_native_logs\n"
        "filter_native_logs()\n"
        "os.write(2, b'I0000 00:00:1796148537.024626   31098 port.cc:153] oneDNN custom operations are on\\n')\n"
        "subprocess.run([sys.executable, '-c', \"import os; os.write(2, b'E0000 00:00:17.5   7 cuda_platform.cc:52]"
        " failed call to cuInit\\\\nchild kept\\\\n')\"])\n"
        "print('parent kept', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stderr.splitlines() == ["child kept", "parent kept"]


def test_a_small_local_convert_imports_no_beam(tmp_path):
    """A one-series input runs in-process: its start-up is the imports, and Beam's
    (about 2 s on 2 cores) is not among them."""
    from helpers import SAMPLES

    series = next(p for p in sorted((SAMPLES / "cine_ef" / "dicom").rglob("*")) if p.is_file()).parent
    script = ("import sys\n"
              "from medseq.pipeline.cli import main\n"
              f"code = main(['convert', '--input', {str(series)!r}, '--labels', "
              f"{str(SAMPLES / 'cine_ef' / 'labels.csv')!r}, '--out', {str(tmp_path / 'out')!r}])\n"
              "print(code, sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam')[:3])\n")
    env = {**os.environ, "MEDSEQ_HASH_KEY": "cli-test-key-0123456789"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr
    assert (tmp_path / "out" / "qc.json").exists()
