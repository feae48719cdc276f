"""The one entry every stage exposes, and what each stage reads.

Every component package has `run(config, inputs, out, beam_args) -> <Stage>Outputs`:

    config     the whole PipelineConfig (a stage reads its own section and what it shares)
    inputs     the stage's inputs below: the folders of the stages before it
    out        the one folder it writes (push: the TF Serving base folder)
    beam_args  Beam options from the command line, laid over the section's `beam_args`;
               stages that run no Beam pipeline (train, push) take them and ignore them

`medseq <stage>` (pipeline/cli.py) and `medseq run` (pipeline/stages.py) both call it,
so an option or default reaches a stage the same way from either. The executor of each
stage keeps its explicit arguments (TFX's component/executor split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

BeamArgs = Sequence[str]


@dataclass(frozen=True)
class IngestInputs:
    input: str  # folder or glob of DICOM files (local, gs://, s3://)
    labels: str  # labels.csv
    key: bytes | None = field(default=None, repr=False)  # None: ingest.hash_key_file, else $MEDSEQ_HASH_KEY


@dataclass(frozen=True)
class ValidateInputs:
    examples: str  # an ingest output folder
    baseline: str | None = None  # a validate output of the training records: the records are checked for drift


@dataclass(frozen=True)
class TrainInputs:
    examples: str


@dataclass(frozen=True)
class EvaluateInputs:
    examples: str
    model: str  # the candidate SavedModel
    baseline: str | None = None  # the SavedModel now served: change thresholds apply


@dataclass(frozen=True)
class PushInputs:
    model: str
    evaluation: str  # an evaluate output folder: push only when it holds BLESSED
    examples: str | None = None  # the records whose eval split gates push.formats' artifacts


@dataclass(frozen=True)
class ExportInputs:
    model: str  # a `medseq train` output folder or a medseq SavedModel
    examples: str  # the records whose eval split the parity gate runs on
    formats: tuple[str, ...] = ()  # FORMAT:PRECISION; empty: push.formats
