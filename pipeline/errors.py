"""Domain exceptions. Each carries a default message and is shown to people as one line."""

from __future__ import annotations


class MedseqError(Exception):
    """Base of every error meant for a user: the CLI prints it as one line, exit status 2."""

    default_message = "medseq failed"
    exit_code = 2

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)


class ConfigError(MedseqError):
    default_message = "the configuration is not valid"


class InputError(MedseqError):
    default_message = "an input is missing or not what was expected"


class HashKeyError(MedseqError):
    default_message = (
        "no de-identification key: set MEDSEQ_HASH_KEY or pass --hash-key-file"
    )


class StageFailed(MedseqError):
    """A stage ran and its outcome stops the pipeline (anomalies, no blessing)."""

    default_message = "a pipeline stage failed"
    exit_code = 1


class ArchiveError(MedseqError):
    """The DICOM archive (a DICOMweb service) refused or could not be reached: nothing
    about the data, so the job stops before it writes anything."""

    default_message = "the DICOMweb service could not be read"
    exit_code = 1


class EvaluationFailed(MedseqError):
    """TFMA could not evaluate (a broken eval config, a failed runner): no verdict is
    written, so nothing can be pushed; NOT_BLESSED is kept for a verdict on the model."""

    default_message = "the candidate could not be evaluated"
    exit_code = 2


class RunnerFailed(MedseqError):
    """A Beam job failed on its runner (a worker killed, a runner stopped): nothing about
    the data or the model; the output keeps what it held before, and a rerun may pass."""

    default_message = "the Beam job failed on its runner"
    exit_code = 1
