"""The stage components of the KFP pipeline (pipeline/kfp_pipeline.py): lightweight
Python components, each a few lines that call pipeline/kfp_steps.py inside the image.

No `from __future__ import annotations` here: KFP reads the artifact types from the
annotations themselves (`Output[Dataset]`), which postponed annotations turn into text.
"""

from typing import Any


def components(image: str) -> dict[str, Any]:
    """The stage components, each running in `image`."""
    from kfp import dsl
    from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

    component = dsl.component(base_image=image, install_kfp_package=False)

    @component
    def fingerprint_input(config: str) -> str:
        from medseq.pipeline import kfp_steps

        return kfp_steps.input_fingerprint(config)

    @component
    def synth(config: str, dicom: Output[Dataset]) -> None:
        from medseq.pipeline import kfp_steps

        kfp_steps.synth(config, dicom.path)

    @component
    def ingest(config: str, input_print: str, records: Output[Dataset], counts: Output[Metrics]) -> None:
        from medseq.pipeline import kfp_steps

        records.metadata["input"] = input_print
        for name, value in kfp_steps.ingest(config, records.path).items():
            counts.log_metric(name, value)
        kfp_steps.keep(counts)

    @component
    def ingest_synthetic(config: str, dicom: Input[Dataset], records: Output[Dataset], counts: Output[Metrics]) -> None:
        from medseq.pipeline import kfp_steps

        for name, value in kfp_steps.ingest(config, records.path, dicom.path).items():
            counts.log_metric(name, value)
        kfp_steps.keep(counts)

    @component
    def validate(config: str, records: Input[Dataset], statistics: Output[Dataset]) -> None:
        from medseq.pipeline import kfp_steps

        kfp_steps.validate(config, records.path, statistics.path)

    @component
    def train(config: str, records: Input[Dataset], statistics: Input[Dataset], model: Output[Model],
              metrics: Output[Metrics]) -> None:
        from medseq.pipeline import kfp_steps

        for name, value in kfp_steps.train(config, records.path, model.path).items():
            metrics.log_metric(name, value)
        kfp_steps.keep(metrics)

    @component
    def evaluate(config: str, serving_dir: str, records: Input[Dataset], model: Input[Model],
                 evaluation: Output[Dataset], metrics: Output[Metrics], curves: Output[ClassificationMetrics]) -> str:
        from medseq.pipeline import kfp_steps

        done = kfp_steps.evaluate(config, records.path, model.path, evaluation.path, serving_dir)
        for name, value in done["metrics"].items():
            metrics.log_metric(name, value)
        evaluation.metadata["decision"] = done["decision"]
        if "roc" in done:
            curves.log_roc_curve(done["roc"]["fpr"], done["roc"]["tpr"], done["roc"]["thresholds"])
            curves.log_confusion_matrix(done["confusion"]["classes"], done["confusion"]["matrix"])
        kfp_steps.keep(metrics, curves)
        return str(done["decision"])

    @component
    def push(config: str, serving_dir: str, records: Input[Dataset], model: Input[Model],
             evaluation: Input[Dataset], served: Output[Model]) -> None:
        from medseq.pipeline import kfp_steps

        version = kfp_steps.push(config, records.path, model.path, evaluation.path, serving_dir)
        served.metadata["version_dir"] = version
        kfp_steps.keep(served)

    @component
    def run_record(run_id: str, run_name: str, config: str, serving_dir: str, input_print: str,
                   records: Input[Dataset], statistics: Input[Dataset], model: Input[Model],
                   evaluation: Input[Dataset], decision: str, run: Output[Artifact]) -> None:
        from medseq.pipeline import kfp_steps

        outputs = {"ingest": records.uri, "validate": statistics.uri, "train": model.uri, "evaluate": evaluation.uri}
        run.metadata.update(kfp_steps.record(run_id, run_name, config, serving_dir, input_print, outputs, decision))
        kfp_steps.keep(run)

    return {"fingerprint_input": fingerprint_input, "synth": synth, "ingest": ingest,
            "ingest_synthetic": ingest_synthetic, "validate": validate, "train": train, "evaluate": evaluate,
            "push": push, "run_record": run_record}


def medseq_pipeline(text: str, synthetic: bool, serving_dir: str, image: str) -> Any:
    """The pipeline: (synth | the input's fingerprint ->) ingest -> validate -> train ->
    evaluate -> push if BLESSED, and the run's record (never cached); `text` the config its
    `config` parameter defaults to."""
    from kfp import dsl

    steps = components(image)

    @dsl.pipeline(name="medseq", description="medseq: DICOM series -> records -> CNN + LSTM -> TFMA gate -> "
                  "TF Serving, one component per stage")
    def medseq(config: str = text, serving_dir: str = serving_dir) -> None:
        if synthetic:
            made = steps["synth"](config=config)
            ingested = steps["ingest_synthetic"](config=config, dicom=made.outputs["dicom"])
            printed: Any = "synth"  # the config's synth section, a parameter already
        else:  # the input's fingerprint is ingest's parameter: KFP's cache reuses it while nothing is new
            looked = steps["fingerprint_input"](config=config).set_caching_options(False)
            printed = looked.output
            ingested = steps["ingest"](config=config, input_print=printed)
        records = ingested.outputs["records"]
        validated = steps["validate"](config=config, records=records)
        trained = steps["train"](config=config, records=records, statistics=validated.outputs["statistics"])
        evaluated = steps["evaluate"](config=config, serving_dir=serving_dir, records=records,
                                      model=trained.outputs["model"])
        with dsl.If(evaluated.outputs["Output"] == "BLESSED", name="blessed"):
            steps["push"](config=config, serving_dir=serving_dir, records=records, model=trained.outputs["model"],
                          evaluation=evaluated.outputs["evaluation"])
        steps["run_record"](run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                            config=config, serving_dir=serving_dir,
                            input_print=printed, records=records,
                            statistics=validated.outputs["statistics"], model=trained.outputs["model"],
                            evaluation=evaluated.outputs["evaluation"],
                            decision=evaluated.outputs["Output"]).set_caching_options(False)

    return medseq
