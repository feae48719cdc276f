"""What every stage shares, and no stage owns: files on any filesystem (`storage`: local
paths, and gs://, s3://, hdfs://... through Beam's FileSystems), the record contract
(`records`: TFRecord framing and tf.Example encoding; `record_spec`: what an ingest output
holds and how a record parses), keyed hashes (`deid`), output ownership (`output_lock`),
Beam pipelines as medseq starts them (`beam`: one factory, the filesystem DoFns) and an
object store's or runner's failure in one line (`remote_errors`).

Stages import from here and never from one another's modules (TFX keeps the same in
`tfx.dsl.io.fileio` and `tfx.types`). Nothing here imports a stage.
"""
