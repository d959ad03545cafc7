"""Run the suite as one pytest step per area (markers), so a failure names its area; every area runs.

    python tests/areas.py              # all areas, in order
    python tests/areas.py keras flax   # some of them
    python tests/areas.py -- -x        # extra pytest arguments after --

Each test runs in exactly one area: the first whose marker expression selects it (the expressions exclude the
areas before them). The last line sums every area as ``total: N passed, N failed, N skipped``; the exit status
is non-zero when any area failed.

The ``interop`` area (tests marked ``timm``) runs in its own environment, ``.venv-interop`` (``make interop``):
timm needs torchvision, which the main environment's CPU torch cannot import. Without it that area fails in one
line naming ``make interop``.
"""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (area, marker) in order; an area takes the tests its marker selects that no earlier area took
AREAS = [
    ("core-and-torch", None),  # no marker: the core, the PyTorch front-end, the CLI and the tasks
    ("interop", "timm"),  # timm, in .venv-interop (INTERPRETERS); second, so every later area excludes it
    ("keras", "keras"),  # every Keras test, whatever else it is marked
    ("flax", "flax"),
    ("parity", "parity"),
    ("hub", "hub"),
    ("export", "export"),
    ("serve", "serve"),  # a real uvicorn server on loopback; the page in headless Chromium
    ("train", "train"),
    ("slow", "slow"),  # real cvt-13/21/w24 sizes of the areas above that did not take them
]
# areas run by another environment's interpreter (the default: the one running this script)
INTERPRETERS = {"interop": ROOT / ".venv-interop" / "bin" / "python"}


def expression(area: str) -> str:
    """The ``-m`` expression of ``area``: its marker and none of the earlier areas' markers."""
    markers = [m for _, m in AREAS if m is not None]
    index = [name for name, _ in AREAS].index(area)
    own = AREAS[index][1]
    earlier = [m for _, m in AREAS[:index] if m is not None]
    if own is None:
        return " and ".join(f"not {m}" for m in markers)
    return " and ".join([own, *(f"not {m}" for m in earlier)])


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    chosen = (argv[: argv.index("--")] if "--" in argv else argv) or [name for name, _ in AREAS]
    unknown = sorted(set(chosen) - {name for name, _ in AREAS})
    if unknown:
        print(f"areas.py: unknown area(s) {', '.join(unknown)}; known: {', '.join(n for n, _ in AREAS)}")
        return 2
    results = ROOT / ".pytest_results"
    results.mkdir(exist_ok=True)
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    failed_areas = []
    for area in [name for name, _ in AREAS if name in chosen]:
        xml = results / f"{area}.xml"
        xml.unlink(missing_ok=True)
        print(f"\n=== area {area}: -m '{expression(area)}'", flush=True)
        python = INTERPRETERS.get(area, Path(sys.executable))
        if not python.exists():
            print(f"=== area {area}: {python.relative_to(ROOT)} is missing: run `make interop`", flush=True)
            failed_areas.append(area)
            continue
        start = time.monotonic()
        files = _marked_files(dict(AREAS)[area]) if area in INTERPRETERS else []
        # the other environments' files are not collected here (their module-level importorskip would count as a
        # skip in every area)
        ignore = (
            []
            if area in INTERPRETERS
            else [f"--ignore={f}" for a in INTERPRETERS for f in _marked_files(dict(AREAS)[a])]
        )
        cmd = [str(python), "-m", "pytest", "-q", "-m", expression(area), f"--junitxml={xml}", *ignore, *extra, *files]
        code = subprocess.call(cmd, cwd=ROOT)
        counts = _counts(xml)
        for key in totals:
            totals[key] += counts[key]
        print(
            f"=== area {area}: exit {code}, {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['skipped']} skipped in {time.monotonic() - start:.0f} s",
            flush=True,
        )
        if code not in (0, 5):  # 5: no test selected (an area emptied by -k, say)
            failed_areas.append(area)
    if failed_areas:
        print(f"failed areas: {', '.join(failed_areas)}")
    print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 1 if failed_areas else 0


def _marked_files(marker: str | None) -> list[str]:
    """The test files that use ``pytest.mark.<marker>``: another environment collects only those (the others'
    packages, transformers or jax, are not installed there, and their module-level skips would count)."""
    tests = sorted((ROOT / "tests").glob("test_*.py"))
    return [str(p.relative_to(ROOT)) for p in tests if f"pytest.mark.{marker}" in p.read_text(encoding="utf-8")]


def _counts(xml: Path) -> dict[str, int]:
    if not xml.is_file():
        return {"passed": 0, "failed": 0, "skipped": 0}
    suite = ET.parse(xml).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return {"passed": tests - skipped - failed, "failed": failed, "skipped": skipped}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
