"""Count Autobahn|Testsuite verdicts from the suite's JSON reports.

    python compliance/verdicts.py compliance/reports/asgi-asyncio/*/index.json

Each ``index.json`` (one per ``wstest`` run, under its ``outdir``) maps agent -> case ->
``behavior``. The cases of several runs (a suite split into groups) are merged per
agent; a case that appears in more than one run counts once, from the last file given,
so a group re-run after a fix replaces the earlier verdicts. Prints one Markdown row per
agent in the column order of ``compliance/README.md``, then every case that is neither
OK nor INFORMATIONAL. The exit status is 1 when there is such a case, so a script can
tell a clean run from a dirty one without reading the table.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

VERDICTS = ("OK", "INFORMATIONAL", "NON-STRICT", "FAILED", "UNIMPLEMENTED")
CLEAN = {"OK", "INFORMATIONAL"}


def case_key(case: str) -> tuple[int, ...]:
    """Sort "9.10.2" after "9.2.1", as the suite's own index does."""
    return tuple(int(part) for part in case.split("."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("index", nargs="+", type=Path, help="index.json files of wstest runs")
    args = parser.parse_args()
    merged: dict[str, dict[str, str]] = {}
    for path in args.index:
        report = json.loads(path.read_text())
        for agent, cases in report.items():
            for case, result in cases.items():
                merged.setdefault(agent, {})[case] = result["behavior"]
    print("| agent | cases | " + " | ".join(VERDICTS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in VERDICTS) + " |")
    dirty: list[str] = []
    for agent, cases in merged.items():
        counts = Counter(cases.values())
        other = sorted(set(counts) - set(VERDICTS))
        cells = [str(counts.get(v, 0)) for v in VERDICTS]
        extra = f" (also: {', '.join(f'{v} {counts[v]}' for v in other)})" if other else ""
        print(f"| {agent} | {len(cases)} | " + " | ".join(cells) + f" |{extra}")
        for case in sorted(cases, key=case_key):
            if cases[case] not in CLEAN:
                dirty.append(f"{agent}: {case} {cases[case]}")
            elif cases[case] == "INFORMATIONAL":
                print(f"  INFORMATIONAL: {case}")
    for line in dirty:
        print(line)
    return 1 if dirty else 0


if __name__ == "__main__":
    raise SystemExit(main())
