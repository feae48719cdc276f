"""`run.json`: the record of a `medseq run`, and the cache that lets a rerun skip work.

Its `run_id` (new for every invocation; the last 50 runs' ids, times and outcomes under
`runs`). Per stage: its status (running, done, failed, skipped), start and end, the content
fingerprints of its inputs and outputs, a cache key (the stage, its config section and
its inputs' fingerprints) and a one-line summary; beside them the config, the package
versions and the outcome. The file is replaced atomically after every change, so a
killed run leaves a true record: a stage it was in reads `running`.

A stage is reused, as TFX's cache does, when the record holds it `done` under the same
cache key and its outputs still have the fingerprints recorded.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORD_FILE = "run.json"
RECORD_VERSION = 1
KEPT_RUNS = 50  # the runs of a folder listed in its run.json, newest last


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def cache_key(stage: str, config: object, inputs: Mapping[str, Any]) -> str:
    text = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class RunRecord:
    """The run.json of one run folder, read when it exists."""

    def __init__(self, run_dir: Path, config: Any, packages: Mapping[str, str]) -> None:
        self.path = run_dir / RECORD_FILE
        old: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.previous: dict[str, dict[str, Any]] = old.get("stages", {}) if old.get("version") == RECORD_VERSION else {}
        earlier = old.get("runs", []) if old.get("version") == RECORD_VERSION else []
        self.data: dict[str, Any] = {"version": RECORD_VERSION, "run_id": uuid.uuid4().hex,
                                     "runs": earlier[-(KEPT_RUNS - 1):], "started": now(), "updated": now(),
                                     "config": config, "package_versions": dict(packages),
                                     "stages": dict(self.previous), "outcome": None}

    def reusable(self, name: str, key: str, outputs_now: Mapping[str, str]) -> bool:
        """The stage finished under `key` and its outputs are still what it wrote."""
        entry = self.previous.get(name, {})
        return (entry.get("status") == "done" and entry.get("key") == key and bool(outputs_now)
                and entry.get("outputs") == dict(outputs_now))

    def interrupted(self, name: str, key: str) -> bool:
        """The stage was running under `key` when the run was killed (it may resume)."""
        entry = self.previous.get(name, {})
        return entry.get("status") == "running" and entry.get("key") == key

    def begin(self, name: str, key: str, inputs: Mapping[str, Any]) -> None:
        self.data["stages"][name] = {"status": "running", "started": now(), "key": key, "inputs": dict(inputs)}
        self.save()

    def end(self, name: str, status: str, summary: str, outputs: Mapping[str, Any] | None = None,
            seconds: float | None = None, detail: Mapping[str, Any] | None = None) -> None:
        entry = self.data["stages"].setdefault(name, {})
        entry.update({"status": status, "ended": now(), "summary": summary, "reused": False})
        if outputs is not None:
            entry["outputs"] = dict(outputs)
        if seconds is not None:
            entry["seconds"] = round(seconds, 3)
        if detail is not None:
            entry["detail"] = dict(detail)
        self.save()

    def reuse(self, name: str) -> None:
        self.data["stages"][name] = {**self.previous[name], "reused": True, "checked": now()}
        self.save()

    def outcome(self, **fields: Any) -> None:
        self.data["outcome"] = fields
        self.data["runs"] = [*self.data["runs"], {"run_id": self.data["run_id"], "started": self.data["started"],
                                                  "ended": now(), "blessed": fields.get("blessed"),
                                                  "reused": fields.get("reused", [])}]
        self.save()

    def save(self) -> None:
        self.data["updated"] = now()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, self.path)
