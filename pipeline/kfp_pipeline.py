"""`medseq compile --kfp`: medseq's stages as a Kubeflow Pipelines (KFP v2) pipeline.

One lightweight Python component per stage (synth when the config has a `synth` section,
ingest, validate, train, evaluate, push), each calling the stage through
pipeline/kfp_steps.py, with KFP artifacts between them: `Dataset` for the synthetic
DICOM, the records, the statistics and the evaluation; `Model` for the trained model;
`Metrics` for ingest's counts, training's best epoch and evaluate's overall metrics;
`ClassificationMetrics` with the ROC curve and the confusion matrix of a class target
(KFP's UI draws both). push runs only under `dsl.If(decision == "BLESSED")`. A folder,
file or DICOMweb input is fingerprinted first (never cached) and ingest takes the
fingerprint as a parameter: KFP's cache reuses every step while the input is unchanged.
The run ends with its record (never cached): its id, parameters, each step run or
reused, and the decision, as KFP metadata.

Parameters: `config` (the whole effective config as JSON: every value of it, laid over
the shipped config inside each step as `--config` is), `serving_dir` (the TF Serving base
folder evaluate compares with and push writes into). The hash key comes from
`ingest.hash_key_file` (a mounted secret) or $MEDSEQ_HASH_KEY in the step's environment. The
image the steps run in is named once (`IMAGE`, `--image`): it must hold medseq with the
`kfp` extra; nothing is pip-installed at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import PipelineConfig, to_dict
from .errors import InputError

IMAGE = "medseq:latest"  # an image with `pip install 'medseq[kfp]'`; --image names another
PIPELINE_NAME = "medseq"


def _kfp() -> Any:
    try:
        import kfp
    except ImportError:
        raise InputError("compiling a Kubeflow pipeline needs kfp: pip install 'medseq[kfp]'") from None
    return kfp


def pipeline(config: PipelineConfig, serving_dir: str = "", image: str = IMAGE) -> Any:
    """The KFP pipeline of `config`'s stages; its parameters default to `config` (as YAML)
    and `serving_dir`."""
    from .kfp_components import medseq_pipeline

    _kfp()
    # One line of JSON (YAML reads it): kfp's compiler repeats each default in a comment
    # at the top of the file, which a value of several lines breaks.
    return medseq_pipeline(json.dumps(to_dict(config)), config.synth is not None, serving_dir, image)


def compile_pipeline(config: PipelineConfig, path: str | Path, serving_dir: str = "", image: str = IMAGE) -> Path:
    """Writes the KFP v2 pipeline YAML of `config` to `path` and checks it loads back
    through kfp's own loader."""
    kfp = _kfp()
    from kfp import compiler

    path = Path(path)
    compiler.Compiler().compile(pipeline(config, serving_dir, image), str(path))
    kfp.components.load_component_from_file(str(path))  # kfp's own loader reads it back
    return path
