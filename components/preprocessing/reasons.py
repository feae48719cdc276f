"""Why an input was rejected: stable codes for rejected.jsonl and qc.json.

Messages are written by medseq, never copied from a header or from a library's
exception text, so no identifier can leak through them.
"""

from __future__ import annotations

NOT_DICOM = "not_dicom"
MISSING_FILE_META = "missing_file_meta"
UNREADABLE = "unreadable"
NOT_A_FILE = "not_a_file"  # a FIFO, socket, device or folder where a file was listed: never opened for reading
UNLISTABLE_FOLDER = "unlistable_folder"  # a folder of the input that cannot be listed: its files are not read
TRUNCATED = "truncated"  # the file ends (or a declared length runs) before its pixels
NO_PIXEL_DATA = "no_pixel_data"
MISSING_ATTRIBUTE = "missing_attribute"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
DECODE_ERROR = "decode_error"
DECODE_TIMEOUT = "decode_timeout"
INFLATE_LIMIT = "inflate_limit"  # a deflated data set larger than ingest.max_inflated_mb inflated
DECODED_SIZE_LIMIT = "decoded_size_limit"  # pixels that decode to more than ingest.max_decoded_mb
OUTSIDE_INPUT = "outside_input"  # a symbolic link out of the input folder: not followed
DUPLICATE_INSTANCE = "duplicate_instance"
INCONSISTENT_SHAPE = "inconsistent_shape"
INCONSISTENT_ORIENTATION = "inconsistent_orientation"
INCONSISTENT_FRAME_OF_REFERENCE = "inconsistent_frame_of_reference"
INCONSISTENT_SPACING = "inconsistent_spacing"
MISSING_SLICES = "missing_slices"
DUPLICATE_POSITION = "duplicate_position"
INCOMPLETE_4D = "incomplete_4d"  # a 4-D series whose positions do not all hold the same number of times
UNORDERED_4D = "unordered_4d"  # a 4-D series that no time attribute orders the same way at every position
TOO_FEW_FRAMES = "too_few_frames"
BURNED_IN_ANNOTATION = "burned_in_annotation"  # Burned In Annotation YES (ingest.pixel_phi)
SECONDARY_CAPTURE = "secondary_capture"  # a screenshot, scan or other converted image (ingest.pixel_phi)
NO_IMAGING_REGION = "no_imaging_region"  # ultrasound whose listed regions leave no pixel of the image
UNLABELED = "unlabeled"
UNKNOWN_LABEL = "unknown_label"
BAD_VALUE = "bad_value"  # train.target value: its labels.csv value is not a finite number
VALUE_OUT_OF_RANGE = "value_out_of_range"  # train.target value: outside train.value.range
BAD_FRAME_LABEL = "bad_frame_label"  # train.target frames: a frame number or time that is not a number >= 0
FRAME_LABEL_OUT_OF_RANGE = "frame_label_out_of_range"  # a key frame past the series' last frame
NO_LABELED_SPAN = "no_labeled_span"  # not one key frame of each of train.frames.events
KEY_FRAME_COLLISION = "key_frame_collision"  # two different events land on one output frame (too few frames)
PROCESSING_ERROR = "processing_error"  # an unexpected failure on one input; the job goes on
FETCH_FAILED = "fetch_failed"  # a DICOMweb series that WADO-RS could not deliver (the HTTP status in the message)
INCOMPLETE_FETCH = "incomplete_fetch"  # fewer instances arrived than QIDO-RS counted

ALL = (
    NOT_DICOM, MISSING_FILE_META, UNREADABLE, NOT_A_FILE, UNLISTABLE_FOLDER, TRUNCATED, NO_PIXEL_DATA,
    MISSING_ATTRIBUTE, UNSUPPORTED_TRANSFER_SYNTAX, DECODE_ERROR, DECODE_TIMEOUT, INFLATE_LIMIT, DECODED_SIZE_LIMIT,
    OUTSIDE_INPUT, DUPLICATE_INSTANCE,
    INCONSISTENT_SHAPE,
    INCONSISTENT_ORIENTATION, INCONSISTENT_FRAME_OF_REFERENCE, INCONSISTENT_SPACING,
    MISSING_SLICES, DUPLICATE_POSITION, INCOMPLETE_4D, UNORDERED_4D, TOO_FEW_FRAMES, BURNED_IN_ANNOTATION,
    SECONDARY_CAPTURE, NO_IMAGING_REGION, UNLABELED, UNKNOWN_LABEL, BAD_VALUE, VALUE_OUT_OF_RANGE,
    BAD_FRAME_LABEL, FRAME_LABEL_OUT_OF_RANGE, NO_LABELED_SPAN, KEY_FRAME_COLLISION,
    PROCESSING_ERROR, FETCH_FAILED, INCOMPLETE_FETCH,
)


def must_propagate(exc: BaseException) -> bool:
    """Exceptions that end the program, not one input. Everything else, also the
    BaseException that a Rust codec raises when it panics on corrupt data
    (pyo3's PanicException, e.g. in pylibjpeg-rle), rejects the one input."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


class Rejected(Exception):
    """An input that cannot become a record: `code` is one of ALL, `message` is for people."""

    def __init__(self, code: str, message: str, identifiers: tuple[str, ...] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.identifiers = identifiers  # header values known when rejected; never printed
