"""The one harness every benchmark runs on: its command line, timing, tables, machine, JSON.

- :func:`parser`: the ``argparse`` parser a benchmark starts from (``--out``, ``--quick``).
- :class:`Stopwatch` and :func:`timed`: wall-clock seconds (``time.perf_counter``), of a block,
  of a call, or of the laps between marks.
- :func:`interleaved`: contenders taking turns round by round, so machine noise hits all alike.
- :func:`percentile`: a nearest-rank percentile of latencies.
- :func:`table`: the plain-text tables the benchmarks print.
- :func:`machine`: what the JSON says about the machine it ran on.
- :func:`write_result`: the JSON itself, parent folders made, the path printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

R = TypeVar("R")
C = TypeVar("C")
T = TypeVar("T")


def parser(prog: str, doc: str, *, full_doc: bool = False, out: str | None = None,
           out_help: str | None = None, quick: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's parser: described by ``doc``'s first line (all of it with ``full_doc``,
    as written), with ``--out`` (a ``Path``, default ``out``) and, where ``quick`` gives its
    help, ``--quick``.

    >>> ap = parser("r1kit bench x", "What x costs.\\n\\nMore.", out="x.json", quick="small")
    >>> ap.description, ap.parse_args(["--quick"])
    ('What x costs.', Namespace(out=PosixPath('x.json'), quick=True))
    """
    ap = argparse.ArgumentParser(
        prog=prog, description=doc if full_doc else doc.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter if full_doc else argparse.HelpFormatter)
    if out_help is None:
        out_help = "JSON output path (default: %(default)s)" if out else "write the figures as JSON here"
    ap.add_argument("--out", type=Path, default=out, help=out_help)
    if quick:
        ap.add_argument("--quick", action="store_true", help=quick)
    return ap


class Stopwatch:
    """Wall-clock seconds since it started (at construction, or on entering a ``with``), up to
    its end (leaving the ``with``) if it has ended; :meth:`lap` marks a lap.

    >>> with Stopwatch() as watch:
    ...     first = watch.lap()
    >>> watch.laps == [first] and 0 <= first <= watch.seconds
    True
    """

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.start = self._mark = time.perf_counter()
        self.end: float | None = None
        self.laps: list[float] = []

    def __enter__(self) -> Self:
        self.restart()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (time.perf_counter() if self.end is None else self.end) - self.start

    def lap(self) -> float:
        """Seconds since the last lap (or the start), kept in :attr:`laps`."""
        now = time.perf_counter()
        self.laps.append(now - self._mark)
        self._mark = now
        return self.laps[-1]


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """``fn(*args, **kwargs)`` and the seconds it took.

    >>> out, seconds = timed(sorted, [2, 1])
    >>> out, seconds >= 0
    ([1, 2], True)
    """
    with Stopwatch() as watch:
        out = fn(*args, **kwargs)
    return out, watch.seconds


def interleaved(rounds: Iterable[R], contenders: Sequence[C], *,
                rotate: bool = True) -> Iterator[tuple[R, C]]:
    """Every contender once per round, round after round, so that a change in the machine's
    load hits all alike; with ``rotate``, round ``i`` starts at contender ``i mod n`` so that
    none always goes first.

    >>> list(interleaved([1, 2, 3], "ab"))
    [(1, 'a'), (1, 'b'), (2, 'b'), (2, 'a'), (3, 'a'), (3, 'b')]
    >>> list(interleaved([1, 2], "ab", rotate=False))
    [(1, 'a'), (1, 'b'), (2, 'a'), (2, 'b')]
    """
    for i, item in enumerate(rounds):
        k = i % len(contenders) if rotate else 0
        for contender in [*contenders[k:], *contenders[:k]]:
            yield item, contender


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 to 100) of ``values``: the sorted value at rank
    ``round(q / 100 * (n - 1))``.

    >>> percentile(range(1, 201), 99), percentile([3.0], 99), percentile([4, 1, 3, 2], 0)
    (198, 3.0, 1)
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, widths: Sequence[int] = (),
          align: str = "", sep: str = " ", rule: bool = False) -> str:
    """``rows`` under ``headers``, a line each, the cells (``str()`` of them) joined by ``sep``.

    A column is as wide as its widest cell, and at least ``widths[i]``; ``align`` gives each
    column's ``<`` or ``>`` (default: the first left, the others right). A row shorter than
    ``headers`` ends in a cell written as it is, over the columns left (an error, say).
    ``rule`` draws a line of ``-`` under the headers.

    >>> print(table(["name", "s", "MB"], [["a", "1.50", 10], ["bb", "12.25", 200],
    ...                                  ["c", "ERROR: no such file"]], widths=[4]))
    name     s  MB
    a     1.50  10
    bb   12.25 200
    c    ERROR: no such file
    >>> print(table(["k", "v"], [["x", 1]], widths=[3, 4], sep="", rule=True))
    k     v
    -------
    x     1
    """
    lines = [list(map(str, headers)), *(list(map(str, r)) for r in rows)]
    sized = [c if len(c) == len(headers) else c[:-1] for c in lines]  # not a spanning cell
    width = [max([widths[i] if i < len(widths) else 0, *(len(c[i]) for c in sized if i < len(c))])
             for i in range(len(headers))]
    align = align or "<" + ">" * (len(headers) - 1)

    def line(cells: list[str]) -> str:
        padded = [f"{c:{a}{w}}" for c, a, w in zip(cells, align, width)]
        return sep.join(padded if len(cells) == len(headers) else [*padded[:-1], cells[-1]])

    out = [line(cells) for cells in lines]
    if rule:
        out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def machine(torch: bool = False) -> dict[str, Any]:
    """The machine a benchmark ran on, for its JSON: platform and CPU count, with ``torch``
    also torch's version and whether CUDA is there.

    >>> sorted(machine())
    ['cpus', 'platform']
    """
    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    if torch:
        import torch as th

        info.update(torch=th.__version__, cuda=th.cuda.is_available())
    return info


def write_result(path: str | Path, result: Any, **dumps: Any) -> Path:
    """Write ``result`` as JSON to ``path`` (``json.dumps`` options in ``dumps``, indent 1 by
    default), creating its folder, and print ``wrote PATH``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, **{"indent": 1, **dumps}), encoding="utf-8")
    print(f"wrote {out}")
    return out
