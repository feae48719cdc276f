"""The steps of the ingest job, without Beam: read a header, build a series' record,
write a shard. Each does one thing and counts what happened.

`transforms.py` runs them as the Beam job's DoFns; `in_process.py` calls them directly
for a small local input, importing no Beam at all. Rejected inputs leave as
`Tagged(REJECTED, RejectedRow)`s (a Beam tagged output in the job); nothing is dropped
silently and no header text is put in a message.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

import numpy as np

from ...pipeline import features as F
from ...pipeline.config import SAFE_PIXEL_PHI, PixelPhiConfig, PreprocessConfig, SplitConfig
from ..io import deid, storage
from ..io.records import encode_example, write_tfrecords
from ..preprocessing import reasons
from ..preprocessing.decode import is_colour
from ..preprocessing.geometry import OrderedSeries
from ..preprocessing.headers import FileHeader, read_header
from ..preprocessing.limits import DEFAULT_LIMITS, InputLimits
from ..preprocessing.prepare import prepare_series
from ..preprocessing.reasons import Rejected
from ..preprocessing.transform import Prepared
from .frame_targets import FrameTarget, frame_target

log = logging.getLogger("medseq.ingest")
PROGRESS_SECONDS = 5.0
SpillRef = tuple[str, int, int]  # (spill file, offset, length)


@dataclass(frozen=True)
class RejectedRow:
    # Relative to the input root: as found inside the job, with its identifying parts
    # hashed by `redacted_line` (deid.safe_path) before it is written anywhere.
    path: str
    series_key: str  # "" when the file never reached a series
    reason: str
    message: str
    files: int = 1  # input files this line accounts for
    # The identifier tokens known where it was rejected (its own headers'); never written.
    identifiers: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def to_json(self) -> str:
        return json.dumps({name: getattr(self, name) for name in _ROW_FIELDS}, sort_keys=True)


_ROW_FIELDS = ("path", "series_key", "reason", "message", "files")


def redacted_line(row: RejectedRow, key: bytes, identifiers: Container[str]) -> str:
    """A rejected.jsonl line: the row with every identifying part of its path hashed under
    one rule for the whole job (`identifiers`: the tokens of every header it read)."""
    safe = deid.safe_path(row.path, key, deid.AnyOf(row.identifiers, identifiers))
    return RejectedRow(safe, row.series_key, row.reason, row.message, row.files).to_json()


@dataclass(frozen=True)
class Record:
    split: str
    series_key: str
    label: str
    modality: str
    manufacturer: str
    valid_frames: int
    files: int
    # Places the record in its shard and the shard in its split. A hash of the content
    # the model reads, not of the keyed series_key: the same data trains in the same
    # order (the same weights) whatever the secret key.
    order_key: str
    nbytes: int  # of its tf.train.Example
    # A 4-D series' record: (its slice position, 0 for a record of volumes; the series'
    # positions; the attribute that ordered time).
    four_d: tuple[int, int, str] | None = None
    pixel_phi: tuple[str, ...] = ()  # what ingest.pixel_phi did to let it in (pixel_phi.DECISIONS)
    colour: str = "grey"  # of the source pixels (decode.is_colour): "grey" or "colour"
    labeled_frames: int | None = None  # train.target frames: output frames with a weight (`label`: its events)

    def index_line(self) -> str:
        line: dict[str, Any] = {"split": self.split, "series_key": self.series_key, "label": self.label,
                                "modality": self.modality, "manufacturer": self.manufacturer,
                                "valid_frames": self.valid_frames, "files": self.files, "bytes": self.nbytes,
                                "colour": self.colour}
        if self.four_d is not None:
            line["four_d"] = list(self.four_d)
        if self.pixel_phi:
            line["pixel_phi"] = list(self.pixel_phi)
        if self.labeled_frames is not None:
            line["labeled_frames"] = self.labeled_frames
        return json.dumps(line, sort_keys=True)


class Placed(NamedTuple):
    """A record and where its tf.train.Example's bytes are: with a local staging folder, a
    spill file of the bundle that built it (`SpillRef`: the bytes never travel through the
    runner, which on one machine holds every element of a GroupByKey in memory, so memory
    stays flat as the archive grows); with a remote one (workers that share no disk with
    each other), the bytes themselves, through the runner's own shuffle."""

    record: Record
    example: SpillRef | bytes


open_binary = storage.open_binary  # a file of any filesystem, read as stored
REJECTED = "rejected"
LABELED = "labeled"
IDENTIFIERS = "identifiers"  # (token, 1): what a reported path must not show (deid.identifier_tokens)


class Tagged(NamedTuple):
    """An output of a step to a side output (`tag`), not the main one."""

    tag: str
    value: Any


class Counts:
    """What a step counts; the Beam job reports them as metrics (transforms.py)."""

    def inc(self, name: str) -> None:
        pass

    def update(self, name: str, value: int) -> None:
        pass


def real_root(root: str) -> str | None:
    """The input root with its symbolic links resolved; None on a remote filesystem."""
    return None if storage.remote(root) else os.path.realpath(root)


def outside(path: str, resolved_root: str | None) -> bool:
    """A local path that resolves (through symbolic links) outside `resolved_root` (from `real_root`)."""
    if resolved_root is None or storage.remote(path):
        return False
    folder, name = os.path.split(path)
    # A file that is no link resolves to its folder's real path and its own name: one
    # lstat a file, not one for every folder above it (the folders' are cached).
    real = os.path.realpath(path) if name in ("", ".", "..") or os.path.islink(path) else \
        os.path.join(_real_folder(folder), name)
    return os.path.commonpath([real, resolved_root]) != resolved_root


@functools.lru_cache(maxsize=1 << 15)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


class _Progress:
    """One line per worker every few seconds: the DirectRunner gives no live metrics."""

    def __init__(self) -> None:
        self.counts = {"files": 0, "series": 0, "rejected": 0}
        self.last = time.monotonic()

    def add(self, name: str) -> None:
        self.counts[name] += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            c = self.counts
            print(f"ingest [worker {os.getpid()}]: {c['files']} files read, {c['series']} series written, "
                  f"{c['rejected']} rejected", flush=True)


_PROGRESS = _Progress()


class _Silent(_Progress):
    """For a caller whose output is its own (`medseq predict` prints JSON lines)."""

    def add(self, name: str) -> None:
        pass


SILENT = _Silent()


def read_file_header(path: str, resolved_root: str | None,
                     limits: InputLimits = DEFAULT_LIMITS) -> FileHeader | Rejected:
    """One input file's header, or why it cannot be read: ingest's rules for every file
    (links out of the input are not followed, only regular files are opened, the header
    is read within `limits`), and predict's too."""
    try:
        if outside(path, resolved_root):
            return Rejected(reasons.OUTSIDE_INPUT, "a symbolic link that points outside the input folder; "
                            "expected files inside it (the link is not followed)")
        with open_binary(path) as f:
            return read_header(f, path, limits)
    except Rejected as exc:
        return exc
    except storage.NotRegularFile as exc:
        return _not_a_file(path, exc.kind)
    except OSError as exc:
        return Rejected(reasons.UNREADABLE, f"the file cannot be opened ({type(exc).__name__})")
    except BaseException as exc:
        if reasons.must_propagate(exc):
            raise
        return Rejected(reasons.PROCESSING_ERROR, f"unexpected {type(exc).__name__} while reading the header")


def _not_a_file(path: str, kind: str) -> Rejected:
    if kind == "a folder":  # listed because os.walk could not list it (storage.match)
        try:
            os.listdir(path)
        except OSError as exc:
            return Rejected(reasons.UNLISTABLE_FOLDER, f"a folder that cannot be listed ({exc.strerror or 'error'}): "
                            "its files were not read; expected a folder medseq may list and read")
    return Rejected(reasons.NOT_A_FILE, f"{kind}, not a regular file: it was not opened; expected DICOM files")


class ReadHeaderStep:
    """path -> (series key source, FileHeader.to_bytes()), from the header pass.

    With a local `staging` folder the header bytes go to a spill file of the bundle and
    only their place, a `SpillRef`, travels: a local runner holds every element of the
    GroupByKey that follows in its main process, and a path and two numbers are a tenth
    of a header. A remote staging folder (a distributed runner, whose shuffle is on disk)
    would cost a ranged read per file, so there the bytes travel themselves."""

    REJECTED = REJECTED

    def __init__(self, root: str, key: bytes, *, staging: str | None = None,
                 limits: InputLimits = DEFAULT_LIMITS, progress: _Progress = _PROGRESS) -> None:
        self.root, self.key, self.limits, self.progress = root, key, limits, progress
        self.resolved_root = real_root(root)  # once, not once per file
        self.staging = staging if staging is not None and not storage.remote(staging) else None
        self._spill: _Spill | None = None
        self._tokens: set[str] = set()
        self.counts = Counts()

    def start_bundle(self) -> None:
        self._spill = None
        self._tokens = set()

    def finish_bundle(self) -> None:
        _close(self._spill)
        self._spill = None

    def _identifiers(self, values: Iterable[str]) -> Iterator[Tagged]:
        """Each identifier token once a bundle (the files of a series share theirs)."""
        for token in deid.identifier_tokens(*values) - self._tokens:
            self._tokens.add(token)
            yield Tagged(IDENTIFIERS, (token, 1))

    def process(self, path: str) -> Iterator[object]:
        self.progress.add("files")
        self.counts.inc("files_read")
        header = read_file_header(path, self.resolved_root, self.limits)
        if isinstance(header, Rejected):
            yield from self._identifiers(header.identifiers)
            yield self._dead_letter(path, header)
            return
        yield from self._identifiers(header.identifiers)
        data = header.to_bytes()
        if self.staging is None:
            yield header.series_key_source, data
            return
        self._spill = self._spill or _Spill.new(self.staging)
        yield header.series_key_source, (self._spill.path, self._spill.write(data), len(data))

    def _dead_letter(self, path: str, exc: Rejected) -> Tagged:
        self.counts.inc("files_rejected")
        self.progress.add("rejected")
        return Tagged(REJECTED, RejectedRow(deid.relative(path, self.root), "", exc.code, exc.message,
                                            identifiers=deid.identifier_tokens(*exc.identifiers)))


def series_folder(headers: list[FileHeader], root: str) -> str:
    """Where a series is, relative to the input root: the folder its files share (the
    first file, when they are spread over folders of the root itself)."""
    paths = sorted(h.path for h in headers)
    where = os.path.commonpath(paths) if len(paths) > 1 else paths[0]
    if len(where.rstrip("/")) <= len(root.rstrip("/")):  # files of one series in several folders
        where = paths[0]
    return deid.relative(where, root)


class PreparedSeries(NamedTuple):
    """One model input of a series (a 4-D series may give one per slice position)."""

    source: str  # the series key source (deid.keyed_hash(key, "series", source) names it)
    headers: list[FileHeader]
    ordered: OrderedSeries
    prepared: Prepared


class PrepareSeriesStep:
    """(series key source, headers) -> PreparedSeries: order, check, decode, preprocess,
    within `limits`. A series that fails is a rejected row (any exception but those that
    must stop the job), and so is each exact duplicate instance it held. The part of the
    job that `medseq predict` runs too; `BuildRecordStep` adds labels and records."""

    REJECTED = REJECTED

    def __init__(self, root: str, key: bytes, preprocess_config: PreprocessConfig, *,
                 limits: InputLimits = DEFAULT_LIMITS, pixel_phi: PixelPhiConfig = SAFE_PIXEL_PHI,
                 progress: _Progress = _PROGRESS) -> None:
        self.root, self.key, self.config, self.limits, self.pixel_phi = root, key, preprocess_config, limits, pixel_phi
        self.progress = progress
        self.counts = Counts()

    def _reject(self, headers: list[FileHeader], series_key: str, code: str, message: str) -> RejectedRow:
        self.counts.inc("series_rejected")
        self.progress.add("rejected")
        return RejectedRow(series_folder(headers, self.root), series_key, code, f"{message} ({len(headers)} file(s))",
                           len(headers), deid.series_identifiers(headers))

    def start_bundle(self) -> None:
        self._headers = _SpillReader()

    def finish_bundle(self) -> None:
        self._headers.close()

    def _headers_of(self, grouped: Iterable[bytes | SpillRef]) -> list[FileHeader]:
        return [FileHeader.from_bytes(v if isinstance(v, bytes) else self._headers.read(*v)) for v in grouped]

    def prepared(self, source: str, headers: list[FileHeader],
                 check: Callable[[], None] | None = None) -> Iterator[PreparedSeries | Tagged]:
        """The series' model inputs, or its rejection; `check` may reject it first."""
        series_key = deid.keyed_hash(self.key, "series", source)
        try:
            if check is not None:
                check()
            parts = prepare_series(headers, open_binary, self.config, self.limits, self.pixel_phi)
        except Rejected as exc:
            yield Tagged(REJECTED, self._reject(headers, series_key, exc.code, exc.message))
            return
        except BaseException as exc:
            if reasons.must_propagate(exc):
                raise
            log.warning("series %s: unexpected %s", series_key[:12], type(exc).__name__)
            yield Tagged(REJECTED, self._reject(
                headers, series_key, reasons.PROCESSING_ERROR, f"unexpected {type(exc).__name__} while decoding "
                "or preprocessing"))
            return
        for path in parts[0][0].duplicates:
            yield Tagged(REJECTED, RejectedRow(
                deid.relative(path, self.root), series_key, reasons.DUPLICATE_INSTANCE,
                "an exact duplicate of another file's SOP Instance UID in this series; one copy was used",
                identifiers=deid.series_identifiers(headers)))
        for ordered, prepared in parts:
            yield PreparedSeries(source, headers, ordered, prepared)

    def process(self, element: tuple[str, Iterable[bytes | SpillRef]]) -> Iterator[object]:
        source, grouped = element
        yield from self.prepared(source, self._headers_of(grouped))


class BuildRecordStep(PrepareSeriesStep):
    """(series key source, headers) -> Placed(Record, example): label, then prepare (the
    step above), then encode and hash. The example spills to a local staging folder, else
    travels itself."""

    LABELED = LABELED

    def __init__(self, root: str, key: bytes, labels: dict[str, str], classes: tuple[str, ...],
                 preprocess_config: PreprocessConfig, split: SplitConfig, *, staging: str,
                 limits: InputLimits = DEFAULT_LIMITS, pixel_phi: PixelPhiConfig = SAFE_PIXEL_PHI,
                 label_column: str = "series_instance_uid", target: str = "class",
                 bad_labels: Mapping[str, tuple[str, str]] | None = None) -> None:
        super().__init__(root, key, preprocess_config, limits=limits, pixel_phi=pixel_phi)
        self.labels, self.classes = labels, classes
        # "class": `labels` holds class names; "value": numbers (repr(float)); "frames": key
        # frames (labels.key_frames), `classes` the events. `bad_labels`: the rows the job
        # rejects by name (labels.read_labels).
        self.target, self.bad_labels = target, dict(bad_labels or {})
        self.label_column = label_column  # which header value keys `labels`
        self.split = split
        self.staging = staging
        self.spills = not storage.remote(staging)
        self._spill: _Spill | None = None

    def _split_of(self, patient_id: str) -> str:
        x = deid.split_fraction(self.split.salt, patient_id)
        return "train" if x < self.split.train else "eval" if x < self.split.train + self.split.eval else "test"

    def start_bundle(self) -> None:
        super().start_bundle()
        self._spill = None

    def finish_bundle(self) -> None:
        _close(self._spill)
        self._spill = None
        super().finish_bundle()

    def process(self, element: tuple[str, Iterable[bytes | SpillRef]]) -> Iterator[object]:
        source, grouped = element
        headers = self._headers_of(grouped)
        label_key = headers[0].label_key(self.label_column)
        label = self.labels.get(label_key) if label_key else None
        bad = self.bad_labels.get(label_key) if label_key else None
        if label is not None or bad is not None:  # which labels.csv rows met a series (keyed: never the value)
            yield Tagged(LABELED, deid.keyed_hash(self.key, "labeled", label_key))

        def check() -> None:
            if bad is not None:
                raise Rejected(*bad)
            if label is None:
                by = "" if self.label_column == "series_instance_uid" else f" (by its {self.label_column})"
                raise Rejected(reasons.UNLABELED, f"the series is not listed in the labels file{by}")
            if self.target == "class" and label not in self.classes:
                raise Rejected(reasons.UNKNOWN_LABEL, f"its label is not one of the configured classes "
                               f"({', '.join(self.classes)})")

        counted: set[str] = set()
        for out in self.prepared(source, headers, check):
            if isinstance(out, Tagged):
                yield out
                continue
            assert label is not None  # check() passed
            target = None
            if self.target == "frames":
                try:
                    target = frame_target(out.ordered, self.config, label, self.classes)
                except Rejected as exc:
                    yield Tagged(REJECTED, self._reject(headers, deid.keyed_hash(self.key, "series", source),
                                                        exc.code, exc.message))
                    continue
            files = {f.path for f in out.ordered.frames} - counted  # each input file in one record's count
            counted |= files
            yield self._placed(headers, out.ordered, out.prepared, label, source, len(files), target)

    def _placed(self, headers: list[FileHeader], ordered: OrderedSeries, prepared: Prepared, label: str,
                source: str, files: int, target: FrameTarget | None = None) -> Placed:
        first = headers[0]
        # A 4-D series: one of its per-position records, or its one record of volumes.
        four_d = (ordered.position or 0, ordered.positions, ordered.time_attribute) if ordered.positions > 1 else None
        series_key = deid.keyed_hash(self.key, "series", deid.record_source(source, ordered.position))
        frames = prepared.frames
        features: dict[str, Any] = {
            F.FRAMES: frames.tobytes(),
            F.FRAMES_SHAPE: list(frames.shape),
            F.FRAMES_DTYPE: str(frames.dtype).encode(),
            F.VALID_FRAMES: [prepared.valid_frames],
            F.SERIES_KEY: series_key.encode(),
            F.PATIENT_KEY: deid.keyed_hash(self.key, "patient", first.patient_id).encode(),
            F.MODALITY: first.modality.encode(),
            F.MANUFACTURER: vendor(first.manufacturer).encode(),
            F.SITE: deid.keyed_hash(self.key, "site", first.institution)[:16].encode(),
            F.SPACING: np.asarray(prepared.spacing, np.float32),
            F.FRAME_AXIS: ordered.axis.encode(),
        }
        if self.target == "class":
            features[F.LABEL] = [self.classes.index(label)]
        elif target is not None:
            features.update(target.features())
        else:
            features[F.TARGET] = np.asarray([float(label)], np.float32)
        if ordered.position is not None:
            features[F.POSITION_INDEX] = [ordered.position]
        example = encode_example(features)
        self.counts.inc("series_written")
        self.counts.update("valid_frames", prepared.valid_frames)
        self.progress.add("series")
        # A frames target's index line names its key frames' events in order, not where they are.
        named = label if target is None else ",".join(self.classes[e] for e in target.key_events)
        record = Record(self._split_of(first.patient_id), series_key, named, first.modality,
                        vendor(first.manufacturer), prepared.valid_frames, files, content_key(prepared, label),
                        len(example), four_d, prepared.pixel_phi, source_colour(first),
                        None if target is None else int(target.weights.sum()))
        if not self.spills:
            return Placed(record, example)
        self._spill = self._spill or _Spill.new(self.staging)
        return Placed(record, (self._spill.path, self._spill.write(example), len(example)))


def source_colour(header: FileHeader) -> str:
    """`colour` for colour pixels (RGB, YBR, a palette), `grey` for monochrome ones."""
    return "colour" if is_colour(header) else "grey"


def content_key(prepared: Prepared, label: str) -> str:
    """SHA-256 of what training reads of a record: independent of the key and of any identifier."""
    digest = hashlib.sha256(prepared.frames.tobytes())
    digest.update(f"{prepared.frames.shape}/{prepared.frames.dtype}/{prepared.valid_frames}/{label}".encode())
    return digest.hexdigest()


def vendor(manufacturer: str) -> str:
    """Manufacturer names vary in case and suffix between exports; keep a stable slice value."""
    name = manufacturer.strip().upper()
    return name.split()[0] if name else "UNKNOWN"


SPILL_PREFIX = "_spill-"  # staging files starting with "_" are removed when the job ends


class _Spill:
    """One bundle's outputs (headers or examples), appended to one file of the staging folder."""

    def __init__(self, path: str) -> None:
        self.path, self.size = path, 0
        self._file = storage.create(path)

    @classmethod
    def new(cls, staging: str) -> _Spill:
        return cls(storage.join(staging, f"{SPILL_PREFIX}{uuid.uuid4().hex}.bin"))

    def write(self, data: bytes) -> int:
        offset = self.size
        self._file.write(data)
        self.size += len(data)
        return offset

    def close(self) -> None:
        self._file.close()


def _close(spill: _Spill | None) -> None:
    """Closes a bundle's spill file: in finish_bundle, before the bundle commits (its
    outputs point into the file)."""
    if spill is not None:
        spill.close()


class _SpillReader:
    """Reads values back from the spill files, a few files open at a time."""

    MAX_OPEN = 32

    def __init__(self) -> None:
        self._open: dict[str, IO[bytes]] = {}

    def read(self, path: str, offset: int, nbytes: int) -> bytes:
        f = self._open.get(path)
        if f is None:
            if len(self._open) >= self.MAX_OPEN:
                self.close()
            f = self._open[path] = open_binary(path)
        f.seek(offset)
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise OSError(f"spill file {path} ends before the value at byte {offset}")
        return data

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


class WriteShardStep:
    """((split, shard, n), placed records) -> one gzip TFRecord file, records in order_key order."""

    def __init__(self, staging: str) -> None:
        self.staging = staging
        self.counts = Counts()

    def start_bundle(self) -> None:
        pass

    def finish_bundle(self) -> None:
        pass

    def process(self, element: tuple[tuple[str, int, int], Iterable[Placed]]) -> Iterator[str]:
        (split, shard, n), records = element
        path = storage.join(self.staging, split, f"{split}-{shard:05d}-of-{n:05d}.tfrecord.gz")
        ordered = sorted(records, key=lambda p: (p.record.order_key, p.record.series_key))
        spilled = _SpillReader()
        try:
            with storage.create(path) as f:
                write_tfrecords(f, (p.example if isinstance(p.example, bytes) else spilled.read(*p.example)
                                    for p in ordered))
        finally:
            spilled.close()
        yield path


def shard_of(placed: Placed, sizes: dict[str, int], num_shards: int,
             shard_bytes: float) -> tuple[tuple[str, int, int], Placed]:
    """Stable shard choice: from the order key, so reruns put each record in the same file."""
    record = placed.record
    n = num_shards or max(1, int(np.ceil(sizes.get(record.split, 0) / shard_bytes)))
    return (record.split, int(record.order_key[:8], 16) % n, n), placed
