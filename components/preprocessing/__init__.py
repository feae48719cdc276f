"""The preprocessing shared by ingest and predict: headers, ordering, decoding and the
one numeric transform (DESIGN: one preprocessing, two callers).

Importing this package silences pydicom's value warnings and error logs: they quote
header values (dates, names) and would carry them into worker logs. Every problem
pydicom would report surfaces instead as a `Rejected` reason written by medseq.
"""

import logging
import warnings

import pydicom.config

pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
