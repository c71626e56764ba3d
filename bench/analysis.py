"""The analyses the report shows: a run's tables per class and per curve, dominance, BD-rate,
the verdict, per-class extremes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench import metrics
from bench.results import RunResult, VerdictOptions


def dominated_by(points: pd.DataFrame, rate: str = "bytes_mean", quality: str = "psnr_db") -> pd.Series:
    """For each row, a codec at least as small and at least as good (strictly better in one), or ''."""
    r, q, names = points[rate].to_numpy(), points[quality].to_numpy(), points["codec"].to_numpy()
    out = []
    for i in range(len(points)):
        better = (r <= r[i]) & (q >= q[i]) & ((r < r[i]) | (q > q[i]))
        better[i] = False
        if better.any():
            # The most convincing witness: the smallest of those that dominate.
            j = np.flatnonzero(better)[np.argmin(r[better])]
            out.append(str(names[j]))
        else:
            out.append("")
    return pd.Series(out, index=points.index)


# --- curves, BD-rate and the verdict -----------------------------------------------------------

BD_METHODS = ("pchip", "cubic", "akima")  # the bjontegaard package's interpolations; pchip as JVET
MIN_POINTS = {"pchip": 2, "akima": 2, "cubic": 4}  # per curve, inside the common range
MIN_OVERLAP_DB = 0.5  # a narrower common PSNR range gives no BD number
QUALITY = {"psnr": "psnr_db", "ssim": "ssim"}


def front(points: pd.DataFrame, quality: str = "psnr_db", cost: str = "bytes_mean") -> pd.DataFrame:
    """A curve's points that no cheaper (or equal) point of the same curve matches in quality,
    sorted by cost: quality strictly increases along it. Other points are dominated by their own
    curve and would make the interpolation non-monotone."""
    p = points[np.isfinite(points[quality]) & np.isfinite(points[cost])]
    p = p.sort_values([cost, quality], ascending=[True, False], kind="stable")
    keep, best = [], -np.inf
    for index, q in zip(p.index, p[quality]):
        if q > best:
            keep.append(index)
            best = q
    return p.loc[keep]


def exact(points: pd.DataFrame, quality: str = "psnr_db", cost: str = "bytes_mean") -> pd.DataFrame:
    """A lossy curve's points that gave back every test image unchanged (PSNR ∞), cheapest first.
    The front leaves them out (∞ cannot be interpolated), but like a lossless codec each reaches
    every PSNR target at its own cost."""
    return points[np.isposinf(points[quality]) & np.isfinite(points[cost])].sort_values(cost, kind="stable")


def cost_at(curve_front: pd.DataFrame, target: float, quality: str = "psnr_db",
            cost: str = "bytes_mean") -> float:
    """The cost at `target` quality, interpolated (PCHIP on log cost) between measured points;
    NaN outside the measured range: never extrapolated."""
    q, c = curve_front[quality].to_numpy(float), np.log(curve_front[cost].to_numpy(float))
    if len(q) == 0 or not q[0] <= target <= q[-1]:
        return float("nan")
    if len(q) == 1:
        return float(np.exp(c[0]))
    from scipy.interpolate import PchipInterpolator

    return float(np.exp(PchipInterpolator(q, c)(target)))


def lossy_curves(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {name: g for name, g in summary[~summary["lossless"]].groupby("curve", sort=False)}


def bd_table(summary: pd.DataFrame, method: str = "pchip") -> pd.DataFrame:
    """BD-rate and BD-PSNR of every lossy curve against every other, each over its own common
    range (PSNR for BD-rate, rate for BD-PSNR), with `note` saying why a pair has no number."""
    import warnings

    import bjontegaard

    fronts = {name: front(g) for name, g in lossy_curves(summary).items()}
    rows = []
    for family, f in fronts.items():
        for anchor, a in fronts.items():
            if family == anchor:
                continue
            lo = max(f["psnr_db"].min(), a["psnr_db"].min())
            hi = min(f["psnr_db"].max(), a["psnr_db"].max())
            bytes_lo = max(f["bytes_mean"].min(), a["bytes_mean"].min())
            bytes_hi = min(f["bytes_mean"].max(), a["bytes_mean"].max())
            inside = [int(((g["psnr_db"] >= lo - 1e-9) & (g["psnr_db"] <= hi + 1e-9)).sum())
                      for g in (f, a)]
            row = {"family": family, "anchor": anchor, "method": method,
                   "bd_rate_pct": np.nan, "bd_psnr_db": np.nan,
                   "psnr_low_db": lo if hi > lo else np.nan, "psnr_high_db": hi if hi > lo else np.nan,
                   "bytes_low": bytes_lo if bytes_hi > bytes_lo else np.nan,
                   "bytes_high": bytes_hi if bytes_hi > bytes_lo else np.nan,
                   "points_in_overlap": inside[0], "anchor_points_in_overlap": inside[1],
                   "note": ""}
            need = MIN_POINTS[method]
            if min(len(f), len(a)) < need:
                short, n = (family, len(f)) if len(f) < need else (anchor, len(a))
                row["note"] = f"{short} has {n} point(s) on its curve; {method} needs {need}"
            elif not hi > lo:
                row["note"] = "no common PSNR range"
            elif hi - lo < MIN_OVERLAP_DB:
                row["note"] = f"common PSNR range {hi - lo:.2f} dB < {MIN_OVERLAP_DB} dB"
            elif min(inside) < need:
                short = family if inside[0] < need else anchor
                row["note"] = (f"{short} has {min(inside)} point(s) in {lo:.1f}–{hi:.1f} dB; "
                               f"{method} needs {need}")
            else:
                args = (a["bytes_mean"], a["psnr_db"], f["bytes_mean"], f["psnr_db"])
                options = {"method": method, "require_matching_points": False, "min_overlap": 0}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # its overlap warning: checked above
                    row["bd_rate_pct"] = bjontegaard.bd_rate(*args, **options)
                    if bytes_hi > bytes_lo:
                        row["bd_psnr_db"] = bjontegaard.bd_psnr(*args, **options)
            rows.append(row)
    return pd.DataFrame(rows, columns=BD_COLUMNS)


BD_COLUMNS = ["family", "anchor", "method", "bd_rate_pct", "bd_psnr_db", "psnr_low_db",
              "psnr_high_db", "bytes_low", "bytes_high", "points_in_overlap",
              "anchor_points_in_overlap", "note"]


def cost_column(summary: pd.DataFrame, amortize: int | None) -> pd.Series:
    """Bytes per image; with `amortize` N, plus each codec's side information spread over N."""
    if amortize is None:
        return summary["bytes_mean"]
    return summary["bytes_mean"] + summary["side_info_bytes"] / amortize


def candidates(summary: pd.DataFrame, metric: str, targets: list[float],
               amortize: int | None = None) -> list[pd.DataFrame]:
    """Per target quality, every curve's cost at it, cheapest first: lossy curves interpolated on
    their measured range, lossless codecs at their own size (they reach any target), and so do a
    lossy curve's exact points (`exact`). A curve whose cheapest point already exceeds the target
    reaches it at that point's cost: measured, not extrapolated. `setting` is the cheapest measured
    point of the curve that reaches the target: the spec a user would run."""
    quality = QUALITY[metric]
    s = summary.assign(cost=cost_column(summary, amortize))
    fronts = [(curve, front(g, quality, "cost"), exact(g, quality, "cost"), bool(g["learned"].iloc[0]))
              for curve, g in s[~s["lossless"]].groupby("curve", sort=False)]
    lossless = [{"curve": r["curve"], "cost": r["cost"], "learned": bool(r["learned"]),
                 "setting": r["codec"]} for _, r in s[s["lossless"]].iterrows()]
    out = []
    for target in targets:
        rows = []
        for curve, f, exact_points, learned in fronts:
            reach = [(p["cost"], p["codec"]) for _, p in exact_points.head(1).iterrows()]
            if not f.empty:
                lowest = f.iloc[0]
                cost = (lowest["cost"] if target <= lowest[quality]
                        else cost_at(f, target, quality, "cost"))
                if np.isfinite(cost):
                    reach.append((cost, f[f[quality] >= target - 1e-12].iloc[0]["codec"]))
            if reach:
                cost, setting = min(reach, key=lambda r: r[0])
                rows.append({"curve": curve, "cost": cost, "learned": learned, "setting": setting})
        c = pd.DataFrame(rows + lossless, columns=["curve", "cost", "learned", "setting"])
        out.append(c.sort_values("cost", kind="stable").reset_index(drop=True))
    return out


def verdict(summary: pd.DataFrame, targets: list[tuple[str, float]],
            amortize: int | None = None) -> pd.DataFrame:
    """For each target quality: the cheapest codec and the runner-up (see `candidates`)."""
    by_codec = summary.set_index("codec")
    ranked = {}  # the curves' fronts are made once per metric
    for metric in dict.fromkeys(m for m, _ in targets):
        values = [t for m, t in targets if m == metric]
        ranked.update(zip(((metric, t) for t in values), candidates(summary, metric, values, amortize)))
    rows = []
    for metric, target in targets:
        c = ranked[metric, target]
        row = {"metric": metric, "target": target, "amortize": amortize or 0}
        for rank, prefix in ((0, ""), (1, "runner_up_")):
            if len(c) > rank:
                pick = c.iloc[rank]
                at = by_codec.loc[pick["setting"]]
                row.update({f"{prefix}curve": pick["curve"], f"{prefix}bytes": pick["cost"],
                            f"{prefix}learned": pick["learned"], f"{prefix}setting": pick["setting"],
                            f"{prefix}setting_bytes": at["bytes_mean"],
                            f"{prefix}setting_quality": at[QUALITY[metric]],
                            f"{prefix}side_info_bytes": at["side_info_bytes"],
                            f"{prefix}encode_img_s": at.get("encode_img_s", np.nan),
                            f"{prefix}decode_img_s": at.get("decode_img_s", np.nan)})
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_settings(summary: pd.DataFrame, targets: list[tuple[str, float]],
                     amortize: int) -> list[str]:
    """The specs the verdict tables name (per file and amortised): their speed is measured."""
    names = []
    for n in (None, amortize):
        v = verdict(summary, targets, n)
        for col in ("setting", "runner_up_setting"):
            if col in v:
                names += v[col].dropna().tolist()
    return list(dict.fromkeys(names))


def breakeven(summary: pd.DataFrame) -> pd.DataFrame:
    """For each learned codec: after how many images its side information is paid back by its
    byte savings against the cheapest classical codec at the same quality (lossy: at its PSNR,
    interpolated on each classical sweep; lossless: against classical lossless codecs; lossy but
    exact on every test image: against those and the sweeps' exact settings)."""
    classical = summary[~summary["learned"]]
    curves = lossy_curves(classical)
    lossy_fronts = {c: front(g) for c, g in curves.items()}
    def refs(points: pd.DataFrame) -> list[tuple]:
        return [(c["codec"], c["bytes_mean"], c["side_info_bytes"]) for _, c in points.iterrows()]

    lossless_refs = refs(classical[classical["lossless"]])
    exact_refs = [ref for g in curves.values() for ref in refs(exact(g).head(1))]
    rows = []
    for _, r in summary.iterrows():
        out = {"codec": r["codec"], "breakeven_images": np.nan, "breakeven_reference": "",
               "breakeven_note": ""}
        if not r["learned"]:
            rows.append(out)
            continue
        if r["lossless"]:
            refs, where = lossless_refs, "lossless"
        elif np.isposinf(r["psnr_db"]):
            refs, where = lossless_refs + exact_refs, "at ∞ dB (exact)"
        else:
            refs, where = [], f"at {r['psnr_db']:.2f} dB"
            for curve, f in lossy_fronts.items():
                b = cost_at(f, r["psnr_db"])
                if np.isfinite(b):
                    side = f[f["psnr_db"] >= r["psnr_db"] - 1e-12].iloc[0]["side_info_bytes"]
                    refs.append((curve, b, side))
        if not refs:
            if r["lossless"]:
                out["breakeven_note"] = "no classical lossless codec in this run"
            elif np.isfinite(r["psnr_db"]):
                out["breakeven_note"] = f"no classical lossy curve in this run spans {r['psnr_db']:.2f} dB"
            else:
                out["breakeven_note"] = "no classical codec in this run gives back these images exactly"
            rows.append(out)
            continue
        name, ref_bytes, ref_side = min(refs, key=lambda t: t[1])
        out["breakeven_reference"] = f"{name} ({ref_bytes:.1f} B {where})"
        saved = ref_bytes - r["bytes_mean"]
        if saved <= 0:
            out["breakeven_images"] = np.inf
            out["breakeven_note"] = f"{name} is smaller {where}: {ref_bytes:.1f} B vs {r['bytes_mean']:.1f} B"
        else:
            out["breakeven_images"] = max(1.0, float(np.ceil((r["side_info_bytes"] - ref_side) / saved)))
        rows.append(out)
    return pd.DataFrame(rows)


def class_extremes(per_class: pd.DataFrame, metric: str = "mse",
                   higher_is_better: bool = False) -> pd.DataFrame:
    """Per codec, the best and the worst class by `metric` ('' when all classes tie)."""
    rows = []
    for codec, g in per_class.groupby("codec", sort=False):
        g = g.dropna(subset=[metric])
        if g.empty or g[metric].nunique() == 1:
            rows.append({"codec": codec, "best_class": "", "worst_class": ""})
            continue
        low, high = g.loc[g[metric].idxmin(), "class"], g.loc[g[metric].idxmax(), "class"]
        best, worst = (high, low) if higher_is_better else (low, high)
        rows.append({"codec": codec, "best_class": best, "worst_class": worst})
    return pd.DataFrame(rows)


# --- a run's results, read for the report ------------------------------------------------------

def main_rows(result: RunResult) -> pd.DataFrame:
    """The summary's selected codecs, without the points of their quality sweeps."""
    return result.summary[result.summary["role"] == "main"]


def per_class(result: RunResult) -> pd.DataFrame:
    rows = result.per_image[result.per_image["role"] == "main"]
    out = metrics.aggregate(rows, ["codec", "label"])
    classes = result.meta["classes"]
    out["class"] = [classes[int(i)] for i in out["label"]]
    return out


def lossy_per_class(result: RunResult, per_class: pd.DataFrame) -> pd.DataFrame:
    """The rows of `per_class` of lossy codecs: a lossless one has no error in any class."""
    main = main_rows(result)
    return per_class[per_class["codec"].isin(main.loc[~main["lossless"], "codec"])]


def by_class(per_class: pd.DataFrame, metric: str, classes: list[str]) -> pd.DataFrame:
    """Codecs x classes of one metric, classes in the dataset's order."""
    wide = per_class.pivot_table(index="codec", columns="class", values=metric, sort=False)
    return wide.reindex(columns=[c for c in classes if c in wide.columns])


def curves(result: RunResult) -> pd.DataFrame:
    """Every point (main and sweep) with its curve, sorted by rate within each curve."""
    return result.summary.sort_values(["curve", "bpp"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Analysis:
    """The tables derived from a run's summary, computed once per rendering."""

    points: pd.DataFrame  # every point, sorted by curve and rate
    dominated: pd.Series
    bd: pd.DataFrame
    verdict: pd.DataFrame  # per file
    verdict_at_scale: pd.DataFrame  # side information spread over `amortize` images
    amortize: int
    bd_method: str


def analyse(result: RunResult) -> Analysis:
    options = result.meta.get("verdict", {})
    defaults = VerdictOptions()
    v = VerdictOptions(tuple(options.get("psnr_targets", defaults.psnr_targets)),
                       tuple(options.get("ssim_targets", defaults.ssim_targets)),
                       int(options.get("amortize", defaults.amortize)),
                       options.get("bd_method", defaults.bd_method))
    points = curves(result)
    return Analysis(points, dominated_by(points), bd_table(points, v.bd_method),
                    verdict(points, v.targets), verdict(points, v.targets, v.amortize),
                    v.amortize, v.bd_method)
