"""Two runs of the same codecs, point by point and as curves: did a change cost bytes or quality?

    python scripts/compare_runs.py OLD NEW [--curves ar-lossy,factorized]
    python scripts/compare_runs.py OLD NEW --pair factorized factorized:epochs=72

OLD and NEW are run folders, or their summary.csv files: for example an example report before a
change, taken from git (`git show REV:reports/example-mnist-5k/summary.csv > /tmp/old.csv`), and
after. For each curve in both (all shared curves, or --curves): every setting measured in both,
its bytes per image and PSNR before and after, and the BD-rate of the new curve against the old
(PCHIP over the PSNR range both cover, on each curve's undominated points, as the report
computes it; negative: fewer bytes).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import bjontegaard
import pandas as pd

from bench.analysis import front


def summary(path: str) -> pd.DataFrame:
    p = Path(path)
    return pd.read_csv(p / "summary.csv" if p.is_dir() else p)


def setting(codec: str, curve: str) -> str:
    """A codec's name without the fixed parameters of its curve: what pairs `factorized:quality=2`
    of the curve `factorized` with `factorized:epochs=72:quality=2` of `factorized:epochs=72`."""
    name, *params = codec.split(":")
    fixed = set(curve.split(":")[1:])
    return ":".join([name, *(p for p in params if p not in fixed)])


def compare(old: pd.DataFrame, new: pd.DataFrame, curve: str, new_curve: str | None = None) -> str:
    """The old run's `curve` against the new run's `new_curve` (default: the same curve), setting
    by setting (`setting`)."""
    new_curve = new_curve or curve
    a = old[old["curve"] == curve].sort_values("bytes_mean")
    b = new[new["curve"] == new_curve].sort_values("bytes_mean")
    a_keyed = a.assign(setting=[setting(c, curve) for c in a["codec"]])
    b_keyed = b.assign(setting=[setting(c, new_curve) for c in b["codec"]])
    points = a_keyed[["setting", "codec", "bytes_mean", "psnr_db"]].merge(
        b_keyed[["setting", "bytes_mean", "psnr_db"]], on="setting", suffixes=("_old", "_new"))
    title = curve if new_curve == curve else f"{curve} → {new_curve}"
    lines = [f"## {title}", "", "| setting | bytes before | after | change | PSNR before | after |",
             "|---|---:|---:|---:|---:|---:|"]
    for _, r in points.iterrows():
        change = 100 * (r["bytes_mean_new"] / r["bytes_mean_old"] - 1)
        lines.append(f"| `{r['codec']}` | {r['bytes_mean_old']:.3f} | {r['bytes_mean_new']:.3f} | "
                     f"{change:+.2f} % | {r['psnr_db_old']:.2f} | {r['psnr_db_new']:.2f} |")
    fa, fb = front(a), front(b)  # the points the report's BD-rates use: PSNR rising with bytes
    if len(fa) >= 2 and len(fb) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rate = bjontegaard.bd_rate(fa["bytes_mean"], fa["psnr_db"], fb["bytes_mean"], fb["psnr_db"],
                                       method="pchip", require_matching_points=False, min_overlap=0)
        lines += ["", f"BD-rate, new curve against old: {rate:+.2f} %"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--curves", default="", help="comma-separated curves (default: every shared one)")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("OLD", "NEW"),
                   help="compare the old run's curve OLD with the new run's NEW (a recipe variant), "
                        "e.g. --pair factorized factorized:epochs=72; repeatable")
    args = p.parse_args(argv)
    old, new = summary(args.old), summary(args.new)
    old_curves, new_curves = set(old["curve"]), set(new["curve"])
    shared = [c for c in dict.fromkeys(new["curve"]) if c in old_curves]
    wanted = [(c, c) for c in args.curves.split(",") if c] + [tuple(pair) for pair in args.pair]
    wanted = wanted or [(c, c) for c in shared]
    missing = [f"{a} (old run)" for a, _ in wanted if a not in old_curves]
    missing += [f"{b} (new run)" for _, b in wanted if b not in new_curves]
    if missing:
        print(f"compare_runs: not in both runs: {', '.join(missing)} (shared: {', '.join(shared)})",
              file=sys.stderr)
        return 2
    print("\n\n".join(compare(old, new, a, b) for a, b in wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
