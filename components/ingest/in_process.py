"""A small local input with no Beam option: the job's graph run in this process.

A pipeline's fixed cost (importing Beam, 2-2.5 s, starting its workers, running its
stages) is about 10 s on 2 cores, more than converting a few thousand files in one
process (SMALL_INPUT_FILES). For an input this small `medseq convert` runs the very graph
the Beam job runs (`graph.ingest_graph`) through `LocalGraph`: each step over a list, in
the graph's order, writing the same files into the same staging folder;
`executor.merge_side_files` then does the rest for both. Nothing here imports Beam (local files go through `storage`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..io import storage
from .steps import Tagged


class LocalGraph:
    """`graph.Graph` over lists: one bundle per step, every element in this process."""

    spills_headers = False  # the headers are in this process's memory anyway
    parallel = False

    def create(self, label: str, items: list[Any]) -> list[Any]:
        return list(items)

    @classmethod
    def run(cls, graph: Callable[..., None], *args: Any) -> None:
        graph(cls(), *args)

    def files(self, label: str, pattern: str) -> list[Any]:
        return storage.match(pattern)  # what fileio.MatchFiles lists

    def spread(self, label: str, items: list[Any]) -> list[Any]:
        return items

    def pardo(self, label: str, items: list[Any], step: Any, tags: tuple[str, ...] = ()) -> tuple[list[Any], ...]:
        main: list[Any] = []
        tagged: dict[str, list[Any]] = {t: [] for t in tags}
        step.start_bundle()
        for item in items:
            for out in step.process(item):
                if isinstance(out, Tagged):
                    tagged[out.tag].append(out.value)
                else:
                    main.append(out)
        step.finish_bundle()
        return (main, *(tagged[t] for t in tags))

    def map(self, label: str, items: list[Any], fn: Callable[..., Any], **kwargs: Any) -> list[Any]:
        return [fn(item, **kwargs) for item in items]

    def group(self, label: str, pairs: list[tuple[Any, Any]]) -> list[tuple[Any, list[Any]]]:
        groups: dict[Any, list[Any]] = {}
        for k, v in pairs:
            groups.setdefault(k, []).append(v)
        return list(groups.items())

    def sum_per_key(self, label: str, pairs: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
        sums: dict[Any, int] = {}
        for k, v in pairs:
            sums[k] = sums.get(k, 0) + v
        return list(sums.items())

    def as_dict(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        return dict(pairs)

    def flatten(self, label: str, collections: Iterable[list[Any]]) -> list[Any]:
        return [item for items in collections for item in items]

    def write_lines(self, label: str, lines: list[str], prefix: str) -> None:
        """One text file per side output, as the Beam job leaves them for `executor.merge_side_files`."""
        with storage.create(f"{prefix}-in-process.jsonl") as f:
            f.write("".join(line + "\n" for line in lines).encode())
