"""medseq: DICOM series -> TFRecords -> CNN+LSTM classifier -> TF Serving.

`medseq.pipeline` holds what ties the stages together: configuration, feature names,
errors, the stage runner and the command line. The stages live in `medseq.components`.
"""

__version__ = "0.1.0"
