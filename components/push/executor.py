"""Push a blessed SavedModel into a TF Serving model base path.

`<serving_dir>/<model_name>/<version>/` appears atomically: the copy is assembled
under a hidden name in the same folder (warm-up requests and the model card
included) and renamed into place, so TF Serving's file-system poller never sees half
a version. Only the model the evaluation blessed is pushed: its fingerprint is
checked against the one in BLESSED. Old versions are removed only after the new one
is in place, each renamed away first so that no reader sees it half deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...pipeline import features as F
from ...pipeline.config import ExportConfig, export_format
from ...pipeline.errors import InputError, StageFailed
from ...pipeline.fingerprints import tree_fingerprint
from ...pipeline.processes import alive
from ..io.examples import load_spec, load_spec_json
from .model_card import CARD_FILE, model_card
from .warmup import WARMUP_FILE, warmup_requests, write_warmup

STAGING_PREFIX = ".incoming-"
RETIRED_PREFIX = ".retired-"
EDGE_DIR = "edge"  # assets.extra/edge/: the LiteRT and ONNX artifacts of push.formats


@dataclass(frozen=True)
class PushOutputs:
    version_dir: str
    version: int
    models_config: str
    removed: tuple[int, ...] = ()  # versions retired by `keep_versions`
    refused: tuple[dict[str, object], ...] = ()  # push.formats' artifacts that failed their gate


def versions(model_base: Path) -> list[int]:
    if not model_base.is_dir():
        return []
    return sorted(int(p.name) for p in model_base.iterdir() if p.is_dir() and p.name.isdigit())


def served_model(serving_dir: str | Path, model_name: str) -> Path | None:
    """The newest version TF Serving would load now, if any (the evaluation baseline)."""
    base = Path(serving_dir) / model_name
    found = versions(base)
    return base / str(found[-1]) if found else None


def write_models_config(serving_dir: Path, model_name: str) -> Path:
    """models.config for `tensorflow_model_server --model_config_file=...` (text proto):
    serve the newest version; the others stay on disk for a rollback. A models.config
    already there keeps every other model it lists (a serving folder is shared); one that
    is not a ModelServerConfig text proto is refused, never replaced."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = serving_dir / "models.config"
    config = model_server_config_pb2.ModelServerConfig()
    if path.exists():
        try:
            text_format.Parse(path.read_text(encoding="utf-8"), config)
        except (text_format.ParseError, UnicodeDecodeError):
            raise InputError(f"{path} is not a TF Serving ModelServerConfig text proto; expected one medseq may add "
                             "its model to (it never replaces a file it cannot read)") from None
        if config.WhichOneof("config") == "custom_model_config":
            raise InputError(f"{path} holds a custom_model_config; expected a model_config_list medseq may add "
                             "its model to")
    base = (serving_dir / model_name).resolve()
    ours = ("  config {\n"
            f"    name: \"{model_name}\"\n    base_path: \"{base}\"\n    model_platform: \"tensorflow\"\n"
            "    model_version_policy { latest { num_versions: 1 } }\n"
            "  }\n")
    others = "".join("  config {\n" + "".join(f"    {line}\n" for line in text_format.MessageToString(c).splitlines())
                     + "  }\n" for c in config.model_config_list.config if c.name != model_name)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(f"model_config_list {{\n{others}{ours}}}\n")
    os.replace(tmp, path)
    return path


def _blessed_verdict(evaluation_dir: Path, model_dir: Path) -> dict[str, object]:
    if not (evaluation_dir / F.BLESSED).exists():
        if (evaluation_dir / F.NOT_BLESSED).exists():
            why = "; ".join(json.loads((evaluation_dir / F.NOT_BLESSED).read_text()).get("reasons", []))
            raise StageFailed(f"not pushed: the model is NOT_BLESSED ({why})")
        raise StageFailed(f"not pushed: {evaluation_dir} holds no {F.BLESSED} file; run `medseq evaluate` first")
    if not (model_dir / "saved_model.pb").exists():
        raise InputError(f"{model_dir}: expected a SavedModel (saved_model.pb), found none")
    verdict: dict[str, object] = json.loads((evaluation_dir / F.BLESSED).read_text())
    blessed_print, found = verdict.get("model_fingerprint"), tree_fingerprint(model_dir)
    if blessed_print != found:
        raise StageFailed(f"not pushed: {evaluation_dir} blessed the model with fingerprint {blessed_print}, "
                          f"expected it to match {model_dir}, found {found}; evaluate this model first")
    return verdict


def pushed_by_medseq(version_dir: Path) -> bool:
    """A version folder that medseq's push wrote (its model card is in it)."""
    return (version_dir / "assets.extra" / CARD_FILE).is_file()


def retire_old_versions(base: Path, keep: int) -> tuple[int, ...]:
    """Removes all but the newest `keep` versions that medseq pushed (a version another
    tool put there is neither counted nor touched): renamed away first, then deleted."""
    ours = [v for v in versions(base) if pushed_by_medseq(base / str(v))]
    old = ours[:-keep] if keep > 0 else []
    for version in old:
        retired = base / f"{RETIRED_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(base / str(version), retired)
        except FileNotFoundError:
            continue  # another push retired it
        shutil.rmtree(retired, ignore_errors=True)
    return tuple(old)


def _sweep_leftovers(base: Path) -> None:
    """Retired folders, and staging folders of pushes whose process is gone (killed)."""
    for path in base.iterdir():
        if path.name.startswith(RETIRED_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(STAGING_PREFIX):
            pid = path.name[len(STAGING_PREFIX):].split("-", 1)[0]
            if not pid.isdigit() or not alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def push(model_dir: str | Path, evaluation_dir: str | Path, serving_dir: str | Path, model_name: str,
         keep_versions: int = 3, warmup_batch_sizes: Sequence[int] = (1, 8), formats: Sequence[str] = (),
         examples: str | Path | None = None, export_settings: ExportConfig | None = None) -> PushOutputs:
    """Copies `model_dir` to the next integer version, only if `evaluation_dir` blessed this very model;
    with `formats`, its edge artifacts (gated on the eval split of `examples`) in assets.extra/edge/."""
    evaluation_dir, serving_dir, model_dir = Path(evaluation_dir), Path(serving_dir), Path(model_dir)
    verdict = _blessed_verdict(evaluation_dir, model_dir)
    if formats and examples is None:
        raise InputError("push.formats: the artifacts' parity gate needs the records (--examples), found none")
    from ..export import saved_step_parity

    stepped = saved_step_parity(model_dir, examples, export_settings)
    if stepped is not None and not stepped.passed:
        raise StageFailed(f"not pushed: its predict_step does not give its predict_frames scores: "
                          f"{'; '.join(stepped.failures)}")
    base = serving_dir / model_name
    base.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(base)
    staging = base / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(model_dir, staging)
    extra = staging / "assets.extra"
    write_warmup(extra / WARMUP_FILE, warmup_requests(load_spec(model_dir), model_name, warmup_batch_sizes,
                                                      load_spec_json(model_dir).get("step")))
    edge = None
    if formats:
        from ..export import export

        try:
            edge = export(model_dir, str(examples), extra / EDGE_DIR, [export_format(f) for f in formats],
                          export_settings)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    while True:
        version = (versions(base) or [0])[-1] + 1
        card = model_card(load_spec_json(model_dir), verdict, model_name, version, edge)
        (extra / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        target = base / str(version)
        try:
            os.rename(staging, target)  # atomic; fails if another push took this number
            break
        except OSError:
            if not target.exists():
                shutil.rmtree(staging, ignore_errors=True)
                raise
    config = write_models_config(serving_dir, model_name)
    removed = retire_old_versions(base, keep_versions)
    return PushOutputs(str(target), version, str(config), removed, tuple(edge.refused) if edge else ())
