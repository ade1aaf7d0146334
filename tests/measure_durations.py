"""Write ``tests/durations.json`` (each test's measured seconds) from a pytest JUnit XML.

    python tests/measure_durations.py JUNIT_XML [--out tests/durations.json] [--source TEXT]
                                      [--merge] [--markdown 30]

``make durations`` runs the whole suite with ``--junitxml`` and then this script. A test's time is
JUnit's ``time`` attribute: setup + call + teardown under pytest's default
``junit_duration_report=total``, so a session fixture (a tiny model built once) is charged to the
first test that asks for it. ``tests/conftest.py`` marks every test over its threshold ``slow``.

A test that failed, errored or was skipped keeps the time the previous file recorded for it, if
any: its time in this run says little about its time when it passes (a skipped vLLM test takes
0 s). Tests that this run did not report are dropped from the file, unless ``--merge`` (the XML
of a partial run, e.g. one file re-measured, updates the file's other entries). ``--markdown N``
also prints the N slowest tests as the table of docs/TESTING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().with_name("durations.json")


def node_id(classname: str, name: str, root: Path = REPO) -> str:
    """The pytest node id of a JUnit testcase: undoes ``_pytest.junitxml.mangle_test_address``,
    which writes the file path dotted and without ``.py``, then any class names, as ``classname``.

    >>> node_id("tests.test_dry_run", "test_dry_run_trains_two_steps[dapo_qwen2.5_32b.yaml]")
    'tests/test_dry_run.py::test_dry_run_trains_two_steps[dapo_qwen2.5_32b.yaml]'
    >>> node_id("rewards.math.__init__", "rewards.math")
    'rewards/math/__init__.py::rewards.math'
    >>> node_id("tests.test_gone", "test_x", root=Path("/nonexistent"))
    'tests/test_gone.py::test_x'
    >>> node_id("tests.test_gone.TestThing", "test_x", root=Path("/nonexistent"))
    'tests/test_gone.py::TestThing::test_x'
    """
    parts = classname.split(".")
    # The longest dotted prefix naming a file under root is the path; what follows are classes.
    for cut in range(len(parts), 0, -1):
        if (root / Path(*parts[:cut])).with_suffix(".py").is_file():
            break
    else:  # the file is not here (moved, or measured in another tree): classes are Test*
        cut = len(parts)
        while cut > 1 and parts[cut - 1].startswith("Test"):
            cut -= 1
    path = "/".join(parts[:cut]) + ".py"
    return "::".join([path, *parts[cut:], name])


def read_junit(xml_path: Path, root: Path = REPO) -> tuple[dict[str, float], set[str], float]:
    """(node id -> seconds, ids that did not pass, the suite's wall time in seconds)."""
    tree = ET.parse(xml_path)
    seconds: dict[str, float] = {}
    not_passed: set[str] = set()
    suites = [tree.getroot()] if tree.getroot().tag == "testsuite" else list(
        tree.getroot().iter("testsuite"))
    for case in tree.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        if not classname or classname == "pytest":  # internal errors, not tests
            continue
        nid = node_id(classname, name, root)
        seconds[nid] = seconds.get(nid, 0.0) + float(case.get("time") or 0.0)
        if any(child.tag in ("failure", "error", "skipped") for child in case):
            not_passed.add(nid)
    wall = sum(float(s.get("time") or 0.0) for s in suites)
    return seconds, not_passed, wall


def default_source(xml_path: Path) -> str:
    suite = ET.parse(xml_path).getroot()
    suite = suite if suite.tag == "testsuite" else next(suite.iter("testsuite"))
    return (f"pytest --junitxml run of {suite.get('timestamp', '?')} on "
            f"{suite.get('hostname', '?')} ({os.cpu_count()} CPUs where measured)")


def markdown_table(seconds: dict[str, float], n: int) -> str:
    """The ``n`` slowest tests as a Markdown table, with each one's share of the tests' total."""
    total = sum(seconds.values()) or 1.0
    rows = ["| # | seconds | share | test |", "|---:|---:|---:|---|"]
    for i, (nid, s) in enumerate(sorted(seconds.items(), key=lambda kv: -kv[1])[:n], 1):
        rows.append(f"| {i} | {s:.1f} | {100 * s / total:.1f}% | `{nid}` |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("junit_xml", type=Path)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--source", help="how and when the times were measured (written to the file)")
    ap.add_argument("--root", type=Path, default=REPO,
                    help="the tree the XML was measured in (to find test files; default: this one)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the tests the XML does not report (the XML of a partial run)")
    ap.add_argument("--markdown", type=int, metavar="N", default=0,
                    help="also print the N slowest tests as a Markdown table")
    args = ap.parse_args(argv)

    seconds, not_passed, wall = read_junit(args.junit_xml, args.root)
    if not seconds:
        print(f"{args.junit_xml}: no test cases", file=sys.stderr)
        return 1
    old: dict = {}
    if args.out.is_file():
        old = json.loads(args.out.read_text())
    kept = sorted(nid for nid in not_passed if nid in old.get("seconds", {}))
    for nid in kept:
        seconds[nid] = old["seconds"][nid]
    source = args.source or default_source(args.junit_xml)
    if args.merge:
        seconds = {**old.get("seconds", {}), **seconds}
        source = "; ".join(filter(None, [old.get("source"), f"updated by {source}"]))
    data = {
        "source": source,
        "suite_seconds": old.get("suite_seconds", 0.0) if args.merge else round(wall, 1),
        "seconds": {nid: round(s, 2) for nid, s in sorted(seconds.items())},
    }
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    total = sum(seconds.values())
    print(f"wrote {args.out}: {len(seconds)} tests, {total:.0f} s in tests, "
          f"suite wall time {data['suite_seconds']:.0f} s")
    if not_passed:
        print(f"  {len(not_passed)} did not pass; {len(kept)} of them keep their previous time")
    for nid, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {s:7.1f}  {nid}")
    if args.markdown:
        print(markdown_table(seconds, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
