"""Markdown tables from the JSON reports of training.evaluate_model (as RESULTS.md shows them).

python -m training.results_table var/results/market1501.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SUBSET = "whole-gallery scoring on the first queries"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(report: dict) -> str:
    """The ranking rows, the whole-gallery comparison and the ranking differences of one report."""
    lines = [
        f"**{report['dataset']}** ({report['queries']} queries, {report['gallery']} gallery; model "
        f"`{report['model']}`; {report['machine']})",
        "",
        "| ranking | R1 | R5 | R10 | mAP | ms/query |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        if "R1" in row:
            cells = [_pct(row[k]) for k in ("R1", "R5", "R10", "mAP")]
            lines.append(f"| {name} | {' | '.join(cells)} | {row['ms_per_query']:.1f} |")
    subset = report["rows"].get(SUBSET)
    if subset:
        n = subset["queries"]
        lines += [
            "",
            f"Whole gallery scored with every metric, first {n} queries:",
            "",
            "| reading of Eq. 4 | trivial ensemble R1 / mAP | progressive R1 / mAP | trivial ms/query "
            "| progressive ms/query | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for key, row in subset.items():
            if key.startswith("trivial vs progressive"):
                reading = key[key.index("(") + 1 : -1]
                lines.append(
                    f"| {reading} | {_pct(row['trivial_R1'])} / {_pct(row['trivial_mAP'])} "
                    f"| {_pct(row['progressive_R1'])} / {_pct(row['progressive_mAP'])} "
                    f"| {row['trivial_ms_per_query']:.0f} | {row['progressive_ms_per_query']:.1f} "
                    f"| {row['speedup']:.0f}x |"
                )
        lines += ["", "| one granularity alone | R1 | R5 | R10 | mAP |", "|---|---|---|---|---|"]
        for key, row in subset.items():
            if key.endswith(" alone"):
                cells = [_pct(row[k]) for k in ("R1", "R5", "R10", "mAP")]
                lines.append(f"| {key[: -len(' alone')]} | {' | '.join(cells)} |")
        diffs = subset["mean ranking difference of true matches"]
        lines += [
            "",
            "Mean ranking difference of the same true match: "
            + ", ".join(f"{k} {v:.0f} places" for k, v in diffs.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.results_table", description=__doc__)
    ap.add_argument("reports", type=Path, nargs="+")
    args = ap.parse_args(argv)
    for path in args.reports:
        print(tables(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
