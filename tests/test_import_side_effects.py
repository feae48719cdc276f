"""Importing medseq changes no other library's global state: pydicom's settings, the
`warnings` filters, the logging levels and filters, and matplotlib's backend are the same
before and after every medseq module is imported (in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO

SCRIPT = r"""
import importlib, json, logging, warnings
# The libraries medseq builds on first: what they do on import is theirs, not medseq's.
import apache_beam, keras, matplotlib, numpy, pydicom, pydicom.config, tensorflow, tensorflow_model_analysis
from apache_beam.io import fileio
from apache_beam.options import pipeline_options

def snapshot():
    settings = pydicom.config.settings
    loggers = {name: (getattr(lg, "level", None), len(getattr(lg, "filters", ())), getattr(lg, "disabled", None))
               for name, lg in sorted(logging.root.manager.loggerDict.items())}
    loggers["<root>"] = (logging.root.level, len(logging.root.filters), False)
    return {
        "pydicom": [settings.reading_validation_mode, settings.writing_validation_mode,
                    pydicom.config.datetime_conversion, pydicom.config.use_DS_decimal, pydicom.config.use_IS_numpy],
        "warnings": [repr(f) for f in warnings.filters],
        "loggers": {k: list(v) for k, v in loggers.items()},
        "backend": matplotlib.get_backend(),
    }

before = snapshot()
import pathlib, sys
root = pathlib.Path(sys.argv[1])
names = sorted("medseq." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
               for top in ("pipeline", "components", "schemas", "data_samples") for p in (root / top).rglob("*.py"))
for name in names:
    importlib.import_module(name)
after = snapshot()
# A logger first created by a medseq import is new, not changed: compare the ones there before.
after["loggers"] = {k: v for k, v in after["loggers"].items() if k in before["loggers"]}
print(json.dumps({"modules": len(names), "before": before, "after": after}))
"""


def test_importing_every_medseq_module_changes_no_global_state_of_other_libraries():
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["modules"] >= 60
    before, after = found["before"], found["after"]
    assert after["pydicom"] == before["pydicom"]
    assert after["warnings"] == before["warnings"]
    changed = {k: (before["loggers"][k], v) for k, v in after["loggers"].items() if v != before["loggers"][k]}
    assert not changed
    assert after["backend"] == before["backend"]
