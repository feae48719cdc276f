"""`medseq stream`: a causal model reads a live series frame by frame.

Each frame goes through ingest's own per-frame preprocessing (decode, modality values,
the imaging area of ultrasound under the model's pixel-PHI policy, window, resize) and
one call of the model's step (model/step.py), carrying the state from frame to frame:
one frame's work per frame, where rerunning the model on the last T frames costs T
times that. Frames come from a multi-frame file, a folder of single-frame files in
their geometric or temporal order, or, with `follow`, a folder still being written
(a file is read once its size stops changing, in the order the files appear).

What is causal here too: a window of a percentile kind is taken from the first frame
and kept (a header or fixed window, and colour, are each frame's own, as in ingest).
A frame that cannot be decoded is reported and skipped; the stream goes on.

Events are confirmed online: a phase score's maximum (the first event) or minimum (the
second) once the score has moved `PROMINENCE` away from it (model/events.py's rule, seen
from one side), so each is reported a few frames after it happened.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...pipeline.config import PixelPhiConfig, PreprocessConfig, from_dict
from ...pipeline.errors import InputError
from ..ingest.steps import read_file_header, source_colour, vendor
from ..io.examples import RecordSpec, load_spec, load_spec_json
from ..io.storage import open_binary
from ..model import runtimes
from ..model.domain import SeriesFacts, findings
from ..model.events import PROMINENCE
from ..model.step import FRAME, FRAME_VALUE, states_of, zero_state
from ..preprocessing import pixel_phi, reasons
from ..preprocessing.decode import SeriesMeta, load_series
from ..preprocessing.geometry import OrderedSeries, order_series
from ..preprocessing.headers import FileHeader, FrameRef
from ..preprocessing.limits import InputLimits
from ..preprocessing.reasons import Rejected
from ..preprocessing.transform import frame_windows, model_frame, stored

POLL_S = 0.05  # how often a followed folder is listed


@dataclass(frozen=True)
class Arrival:
    """One decoded frame in modality units (its imaging area only), or why it is not."""

    pixels: np.ndarray | None
    meta: SeriesMeta | None
    time_ms: float | None
    read_at: float  # time.perf_counter() when its bytes began to be read
    rejected: Rejected | None = None


@dataclass(frozen=True)
class FrameOutput:
    frame: int  # in arrival order, from 0; -1 for a frame that could not be read (it takes no number)
    time_ms: float | None  # from the series' first frame, where its header gives frame times
    frame_value: float | None  # the phase score (None for a frame that could not be read)
    latency_ms: float  # from its bytes' read to its answer: decode, preprocessing and the step
    step_ms: float  # the model's step alone
    events: tuple[dict[str, Any], ...] = ()  # events confirmed at this frame (each at an earlier frame)
    domain: tuple[str, ...] = ()  # on a series' first frame, under --outside-domain warn: what the model never saw
    rejected: str | None = None
    message: str = ""
    model_input: np.ndarray | None = field(default=None, repr=False, compare=False)  # the preprocessed frame

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"frame": self.frame} if not self.rejected else {"skipped": True}
        if self.time_ms is not None:
            out["time_ms"] = round(self.time_ms, 3)
        if self.rejected:
            return {**out, "rejected": self.rejected, "message": self.message}
        out.update({FRAME_VALUE: round(float(self.frame_value or 0.0), 6), "latency_ms": round(self.latency_ms, 3),
                    "step_ms": round(self.step_ms, 3)})
        if self.events:
            out["events"] = list(self.events)
        if self.domain:
            out["domain"] = list(self.domain)
        return out


class OnlineEvents:
    """Turning points of a phase score confirmed as it arrives: a maximum (`events[0]`)
    once the score falls PROMINENCE below it, a minimum (`events[1]`) once it rises
    PROMINENCE above it; they alternate, as a heart's end-diastole and end-systole do."""

    def __init__(self, events: tuple[str, ...]) -> None:
        self.events = events
        self.reset()

    def reset(self) -> None:
        self.high: tuple[float, int, float | None] | None = None  # (score, frame, its ms)
        self.low: tuple[float, int, float | None] | None = None
        self.looking = (True, True)  # (for a maximum, for a minimum)

    def add(self, frame: int, value: float, time_ms: float | None) -> tuple[dict[str, Any], ...]:
        here = (value, frame, time_ms)
        if self.high is None or value > self.high[0]:
            self.high = here
        if self.low is None or value < self.low[0]:
            self.low = here
        found = []
        for index, (extreme, moved) in enumerate(((self.high, self.high[0] - value), (self.low, value - self.low[0]))):
            if self.looking[index] and moved >= PROMINENCE and extreme[1] < frame:
                event: dict[str, Any] = {"event": self.events[index], "frame": extreme[1]}
                if extreme[2] is not None:
                    event["time_ms"] = round(extreme[2], 3)
                found.append(event)
                self.looking = (index == 1, index == 0)  # now the other kind, from here
                self.high = self.low = here
        return tuple(found)


class Stream:
    """A causal model (a SavedModel, or a step artifact of `medseq export`) with its
    state, reading one series frame by frame: `read` a decoded frame, `step` a
    preprocessed one; `reset` before another series."""

    def __init__(self, model: str | Path) -> None:
        spec_json = load_spec_json(model)
        step = spec_json.get("step") or {"streams": False, "reason": "it was exported before medseq streamed"}
        if not step.get("streams"):
            raise InputError(f"{model}: this model cannot stream: {step.get('reason')}")
        self.spec: RecordSpec = load_spec(model)
        if self.spec.depth:
            raise InputError(f"{model}: this model reads a volume per time point (preprocess.four_d: volumes); "
                             "medseq stream reads one image per frame")
        self.config = from_dict(PreprocessConfig, self.spec.preprocess, "model preprocess")
        self.phi = from_dict(PixelPhiConfig, self.spec.pixel_phi.get("policy", {}), "model pixel_phi")
        self.limits = InputLimits.from_record(self.spec.input_limits)
        self.domain = spec_json.get("training", {}).get("domain")
        self.states = states_of(step)
        self.run = runtimes.load_step(_step_artifact(model))
        self.online = OnlineEvents(self.spec.classes)
        self.reset()

    def reset(self) -> None:
        self.state = zero_state(self.states, 1)
        self.frames = 0
        self.windows: list[tuple[float, float]] | None = None
        self.first_ms: float | None = None  # the first frame's time in its header
        self.findings: tuple[str, ...] = ()  # the domain check's, told with the next frame read
        self.online.reset()

    def step(self, frame: np.ndarray) -> tuple[float, float]:
        """One preprocessed frame (the model's frame shape and dtype) -> (its score, ms)."""
        start = time.perf_counter()
        out = self.run({FRAME: frame[None], **self.state})
        took = (time.perf_counter() - start) * 1e3
        self.state = {s.key: np.asarray(out[s.key], np.float32) for s in self.states}
        return float(np.asarray(out[FRAME_VALUE]).reshape(-1)[0]), took

    def prepare(self, pixels: np.ndarray, meta: SeriesMeta) -> np.ndarray:
        """A decoded frame (H, W[, 3]) in modality units -> the model's input frame."""
        if self.windows is None:
            self.windows = frame_windows(pixels[None], meta, self.config)
        return stored(model_frame(pixels, self.windows, meta, self.config), self.config)

    def read(self, pixels: np.ndarray, meta: SeriesMeta, time_ms: float | None = None,
             read_at: float | None = None) -> FrameOutput:
        """The next frame of the series: its answer, and any event it confirms."""
        start = time.perf_counter() if read_at is None else read_at
        frame = self.prepare(pixels, meta)
        value, step_ms = self.step(frame)
        index, self.frames = self.frames, self.frames + 1
        events = self.online.add(index, value, time_ms)
        told, self.findings = self.findings, ()
        return FrameOutput(index, time_ms, value, (time.perf_counter() - start) * 1e3, step_ms, events, told,
                           model_input=frame)

    def skip(self, arrival: Arrival) -> FrameOutput:
        """A frame that could not be read: reported, and the stream goes on without it."""
        assert arrival.rejected is not None
        return FrameOutput(-1, arrival.time_ms, None, 0.0, 0.0, rejected=arrival.rejected.code,
                           message=arrival.rejected.message)

    def check_domain(self, header: FileHeader, ordered: OrderedSeries, outside_domain: str) -> None:
        """A series outside the model's training domain (a modality, frame axis or colour
        it never saw): InputError under "refuse"; under "warn" the findings go with the
        next frame's answer (`FrameOutput.domain`)."""
        if not self.domain:
            return
        facts = SeriesFacts(header.modality, vendor(header.manufacturer), source_colour(header), ordered.axis,
                            len(ordered.frames), ())
        hard = findings(self.domain, facts).hard
        if hard and outside_domain == "refuse":
            raise InputError(f"outside the model's training domain: {'; '.join(hard)} "
                             "(--outside-domain warn streams it anyway)")
        self.findings = hard

    def frames_of(self, source: str | Path, follow: bool = False, idle_timeout_s: float = 10.0,
                  outside_domain: str = "refuse") -> Iterator[Arrival]:
        """The frames of `source` as they arrive: a multi-frame file, a folder of a
        series' files, or with `follow` a folder still being written."""
        source = Path(source)
        if follow:
            if not source.is_dir():
                raise InputError(f"--follow: expected a folder that files are written into, found {source}")
            yield from self._followed(source, idle_timeout_s, outside_domain)
            return
        if not source.exists():
            raise InputError(f"input not found: {source} (expected a multi-frame DICOM file or a folder of one "
                             "series' files)")
        headers = []
        for path in sorted(source.rglob("*")) if source.is_dir() else [source]:
            header = read_file_header(str(path), None, self.limits) if path.is_file() else None
            if isinstance(header, Rejected):
                yield Arrival(None, None, None, time.perf_counter(), header)
            elif header is not None:
                headers.append(header)
        if not headers:
            raise InputError(f"{source}: expected DICOM frames of one series, found none that can be read")
        keys = {h.series_key_source for h in headers}
        if len(keys) > 1:
            raise InputError(f"{source}: expected the frames of one series, found {len(keys)} series "
                             "(stream them one at a time)")
        yield from self._series(headers, outside_domain)

    def _time_ms(self, ref: FrameRef, index: int, ordered: OrderedSeries) -> float | None:
        """ms from the stream's first frame: its trigger time or frame time offset, else
        its place times the series' frame interval; None for frames without time."""
        if ordered.axis != "time":
            return None
        if ref.temporal is not None:
            self.first_ms = ref.temporal if self.first_ms is None else self.first_ms
            return ref.temporal - self.first_ms
        return index * ordered.interval if ordered.interval else None

    def _series(self, headers: list[FileHeader], outside_domain: str, check: bool = True) -> Iterator[Arrival]:
        try:
            pixel_phi.screen(headers, self.phi)
            ordered = order_series(headers)
        except Rejected as exc:
            yield Arrival(None, None, None, time.perf_counter(), exc)
            return
        if check:
            self.check_domain(headers[0], ordered, outside_domain)
        by_path = {h.path: h for h in headers}
        for index, ref in enumerate(ordered.frames):
            read_at = time.perf_counter()
            at = self._time_ms(ref, index, ordered)
            try:
                volume, meta = load_series(dataclasses.replace(ordered, frames=(ref,)), by_path, open_binary,
                                           self.limits.decode_timeout_s)
                volume, _ = pixel_phi.imaging_area(volume, (ref,), by_path, self.phi)
            except Rejected as exc:
                yield Arrival(None, None, at, read_at, exc)
                continue
            except Exception as exc:
                if reasons.must_propagate(exc):
                    raise
                yield Arrival(None, None, at, read_at, Rejected(reasons.DECODE_ERROR, f"the frame cannot be decoded "
                                                                 f"({type(exc).__name__})"))
                continue
            yield Arrival(volume[0], meta, at, read_at)

    def _followed(self, folder: Path, idle_timeout_s: float, outside_domain: str) -> Iterator[Arrival]:
        """Files as they are written: each read once its size held over one poll; its
        frames in its own order; the stream ends `idle_timeout_s` after the last new file."""
        seen: set[Path] = set()
        sizes: dict[Path, int] = {}
        last_new, checked = time.monotonic(), False
        while time.monotonic() - last_new < idle_timeout_s:
            ready = []
            for entry in sorted(folder.rglob("*"), key=_arrival_order):
                if entry in seen or not entry.is_file() or entry.name.startswith("."):
                    continue
                size = entry.stat().st_size
                if sizes.get(entry) == size and size > 0:
                    ready.append(entry)
                sizes[entry] = size
            for path in ready:
                seen.add(path)
                last_new = time.monotonic()
                header = read_file_header(str(path), None, self.limits)
                if isinstance(header, Rejected):
                    yield Arrival(None, None, None, time.perf_counter(), header)
                    continue
                yield from self._series([header], outside_domain, check=not checked)
                checked = True
            time.sleep(POLL_S)


def _arrival_order(path: Path) -> tuple[float, str]:
    try:
        return os.stat(path).st_mtime, path.name
    except OSError:
        return float("inf"), path.name


def _step_artifact(model: str | Path) -> Path:
    """The step of `model`: the SavedModel itself, or an export's step artifact (a
    whole-series .tflite/.onnx names the step file beside it)."""
    path = Path(model)
    fmt = runtimes.artifact_format(path)
    if fmt is None or path.stem.endswith(runtimes.STEP_SUFFIX):
        return path
    step = path.with_name(f"{path.stem}{runtimes.STEP_SUFFIX}{path.suffix}")
    if not step.is_file():
        raise InputError(f"{path}: expected its step artifact {step.name} beside it (medseq export writes it "
                         "for a causal model), found none")
    return step


def stream(model: str | Path, source: str | Path, *, realtime: bool = False, follow: bool = False,
           idle_timeout_s: float = 10.0, outside_domain: str = "refuse") -> Iterator[FrameOutput]:
    """Every frame of `source` through `model`'s step, in arrival order; with `realtime`
    paced by the frames' times (a clip played as it was recorded)."""
    reader = Stream(model)
    started = time.perf_counter()
    for arrival in reader.frames_of(source, follow, idle_timeout_s, outside_domain):
        if realtime and arrival.time_ms is not None:
            wait = started + arrival.time_ms / 1e3 - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            arrival = dataclasses.replace(arrival, read_at=time.perf_counter())
        if arrival.rejected is not None or arrival.pixels is None or arrival.meta is None:
            yield reader.skip(arrival)
            continue
        yield reader.read(arrival.pixels, arrival.meta, arrival.time_ms, arrival.read_at)


__all__ = ["Arrival", "FrameOutput", "OnlineEvents", "Stream", "stream"]
