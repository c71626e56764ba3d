"""report.md, rendered from saved results only (never re-encodes): the Markdown text, which links
the figures plots.py draws."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import analysis, learning, plots, report_quality
from bench.analysis import Analysis
from bench.markdown import PLOTS, image, num, table, text
from bench.results import RunResult, write_csv_atomic, write_text_atomic


def render(result: RunResult, out_dir: Path) -> Path:
    """report.md, plots/*.png, and the derived tables bd_rate.csv and verdict.csv."""
    out_dir = Path(out_dir)
    pc = analysis.per_class(result)
    a = analysis.analyse(result)
    write_csv_atomic(out_dir / "bd_rate.csv", a.bd)
    write_csv_atomic(out_dir / "verdict.csv", pd.concat([a.verdict, a.verdict_at_scale]))
    # Every figure first: the text only links the ones that exist.
    figures = plots.draw_all(result, a, pc, out_dir / PLOTS)
    path = out_dir / "report.md"
    write_text_atomic(path, _markdown(result, a, pc, figures))
    return path


def _markdown(result: RunResult, a: Analysis, pc: pd.DataFrame, figures: dict[str, Path]) -> str:
    sections = [
        _header(result),
        _failed_jobs(result),
        _verdict(result, a),
        _summary(result, a),
        report_quality.sizes(result),
        report_quality.ae_vs_pca(result),
        report_quality.lossless(result),
        report_quality.per_class(result, pc, figures),
        report_quality.ink(result, pc, figures),
        report_quality.compression_vs_error(figures),
        _rate_distortion(a, figures),
        _bd_rates(a),
        _throughput(result),
        report_quality.samples(figures),
        report_quality.tsne(result, figures),
    ]
    return "\n\n".join(s for s in sections if s).rstrip() + "\n"


# --- sections -------------------------------------------------------------------------

def _header(r: RunResult) -> str:
    m, env = r.meta, r.meta.get("environment", {})
    versions = env.get("versions", {})
    lines = [
        "# aecodec-bench report",
        "",
        f"- **Dataset:** `{m['dataset']}`: {m['dataset_source']}",
    ]
    if m.get("dataset_why"):
        lines.append(f"- **Why this dataset:** {m['dataset_why']}")
    rule = m.get("training_rule")
    lines += [
        f"- **Images:** {m['train_images']:,} train (learned codecs fit on these), "
        f"{m.get('validation_images', 0):,} validation (held out of train; every choice a learned "
        f"codec makes), {m['test_images']:,} test (every number below, and nothing else), "
        + (f"8-bit grayscale of mixed sizes (test: {m['image_sizes']})" if m.get("mixed_sizes") else
           f"{m['image_shape'][0]}x{m['image_shape'][1]} 8-bit grayscale"),
        *([f"- **Training size:** {rule[0].upper()}{rule[1:]}."] if rule else []),
        f"- **Command:** `{m.get('command', 'n/a')}` ({m.get('seconds', '?')} s)",
        f"- **Machine:** {env.get('cpu', 'n/a')}, {env.get('cores', '?')} cores, "
        f"{env.get('ram_gib', '?')} GiB; {env.get('platform', '')}; devices measured: "
        f"{', '.join(m['devices'])}",
        "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    if env.get("plugins"):
        lines.append("- **Codec plugins installed:** " + "; ".join(
            f"`{name}` from {p.get('distribution', p['entry_point'])} {p.get('version', '')}".rstrip()
            + (" (requires " + ", ".join(f"{k} {v}" for k, v in p["requires"].items()) + ")"
               if p.get("requires") else "")
            for name, p in env["plugins"].items()))
    lines.append(f"- **Created:** {env.get('created', 'n/a')}")
    return "\n".join(lines)


def _failed_jobs(r: RunResult) -> str:
    failed = r.meta.get("failed_jobs", [])
    if not failed:
        return ""
    return "\n".join(["## Failed jobs", "", "These codecs failed and are missing from every "
                      "table below; the run finished the others.", "",
                      table(pd.DataFrame(failed))])


def _target(metric: str, value: float) -> str:
    return f"PSNR ≥ {value:g} dB" if metric == "psnr" else f"SSIM ≥ {value:g}"


def _speed(v) -> str:
    return num(v, "{:,.0f}")


def _mpx(v) -> str:
    """Megapixels per second: whole numbers from 100, else three significant digits."""
    return num(v, "{:,.0f}" if isinstance(v, (int, float)) and v >= 100 else "{:.3g}")


def _pixels_per_image(r: RunResult) -> float:
    """A saved run's pixels per image, for runs saved before megapixels/s were (one size only)."""
    h, w = r.meta["image_shape"]
    return float(h * w)


def _verdict_table(v: pd.DataFrame, at_scale: bool) -> str:
    rows = []
    for _, r in v.iterrows():
        row = {"target": _target(r["metric"], r["target"])}
        if not isinstance(r.get("curve"), str):
            row["cheapest"] = "n/a: no codec in this run reaches it (add a sweep, or a lossless codec)"
            rows.append(row)
            continue
        quality = (num(r["setting_quality"]) + " dB" if r["metric"] == "psnr"
                   else num(r["setting_quality"], "{:.4f}"))
        row.update({
            "cheapest": r["curve"] + (" (learned)" if r["learned"] else ""),
            "bytes/image": num(r["bytes"], "{:.1f}"),
            "run it as": f"`{r['setting']}` ({r['setting_bytes']:.1f} B, {quality})",
            "encode img/s": _speed(r["encode_img_s"]), "decode img/s": _speed(r["decode_img_s"]),
        })
        if at_scale:
            row["side info (B)"] = num(r["side_info_bytes"], "{:,.0f}")
        if isinstance(r.get("runner_up_curve"), str):
            row["runner-up"] = r["runner_up_curve"] + (" (learned)" if r["runner_up_learned"] else "")
            row["its bytes/image"] = num(r["runner_up_bytes"], "{:.1f}")
        rows.append(row)
    return table(pd.DataFrame(rows).fillna(""))


def _wins(v: pd.DataFrame) -> str:
    answered = v[v["curve"].map(lambda c: isinstance(c, str))] if "curve" in v else v.iloc[:0]
    learned = int(answered["learned"].astype(bool).sum()) if len(answered) else 0
    return f"learned codecs are cheapest at {learned} of {len(answered)} answered targets"


def _verdict(r: RunResult, a: Analysis) -> str:
    main = analysis.main_rows(r)
    learned = main[main["learned"].astype(bool)]
    parts = [
        "## Verdict: the cheapest codec at the quality you need",
        "",
        "For each target quality: the codec that needs the fewest bytes per image to reach it on "
        "this test split, and the runner-up. A lossy codec's bytes are read off its measured "
        "curve (its quality sweep, or a family's sizes), interpolated between measured points "
        "(PCHIP on log bytes) and never extrapolated beyond them; a curve whose cheapest point "
        "already exceeds the target reaches it at that point's bytes; a lossless codec, or a lossy "
        "setting that gave back every image unchanged (∞ dB), reaches every target at its own size. "
        "*Run it as* names the cheapest measured setting that reaches the target, with its bytes "
        f"and quality: the speed columns are that setting's, measured on {r.meta['devices'][0]}. "
        "Curves are keyed by codec and its fixed parameters, so "
        "`jpeg:optimize=1` and `jpeg` compete separately. Also in `verdict.csv`.",
        "",
        f"### Per file: payload bytes only ({_wins(a.verdict)})",
        "",
        "What each image's file costs. What a decoder needs once (a learned codec's weights, shared "
        "tables) is not in it: see the next table and *side info* in the summary.",
        "",
        _verdict_table(a.verdict, at_scale=False),
        "",
        f"### At scale: side information spread over {a.amortize:,} images ({_wins(a.verdict_at_scale)})",
        "",
        f"Bytes per image + side info / {a.amortize:,} (`--amortize N` sets N): the cost per image "
        "when one decoder serves that many images.",
        "",
        _verdict_table(a.verdict_at_scale, at_scale=True),
    ]
    if len(learned):
        rows = [{"codec": c["codec"], "bytes/image": num(c["bytes_mean"], "{:.1f}"),
                 "PSNR dB": num(c["psnr_db"]), "side info (B)": num(c["side_info_bytes"], "{:,.0f}"),
                 "against": text(c["breakeven_reference"]) or "–",
                 "pays back after (images)": _breakeven(c, with_note=True)}
                for _, c in learned.iterrows()]
        parts += [
            "",
            "### When a learned codec's side information pays back",
            "",
            "The number of images after which a learned codec's side information is repaid by its "
            "byte savings against the cheapest classical codec *at the same quality*: for a lossy "
            "codec, the classical lossy curves read at its PSNR (interpolated, never extrapolated); "
            "for a lossless one, the classical lossless codecs; for a lossy one that gave back every "
            "image unchanged, those and the classical lossy settings that did too. *never*: the "
            "classical codec is smaller at that quality; *n/a*: no classical curve in this run "
            "covers it.",
            "",
            table(pd.DataFrame(rows)),
        ]
    starved = learning.section(r.summary, r.meta)
    if starved:
        parts += ["", starved]
    return "\n".join(parts)


def _breakeven(row, with_note: bool = False) -> str:
    value, note = row["breakeven_images"], text(row["breakeven_note"])
    detail = f" ({note})" if note and with_note else ""
    if value == np.inf:
        return "never" + detail
    if isinstance(value, float) and math.isnan(value):
        return "n/a" + detail if note else "–"
    return num(value, "{:,.0f}")


def _summary(r: RunResult, a: Analysis) -> str:
    s = analysis.main_rows(r)
    dominated = dict(zip(a.points["codec"], a.dominated))
    columns = {
        "codec": s["codec"],
        "lossless": np.where(s["lossless"], "yes", "no"),
        "bytes/image": [f"{m:.1f} ± {sd:.1f}" for m, sd in zip(s["bytes_mean"], s["bytes_std"].fillna(0))],
        "header (B)": s["header_bytes"].map(lambda v: num(v, "{:.0f}")),
        "content (B)": s["content_bytes"].map(lambda v: num(v, "{:.1f}")),
    }
    if s["model_bytes_mean"].notna().any():
        columns["model predicts (B)"] = s["model_bytes_mean"].map(lambda v: num(v, "{:.1f}"))
    columns.update({
        "bpp": s["bpp"].map(num),
        "compression % (bytes)": s["compression_pct"].map(lambda v: num(v, "{:.1f}")),
        "compression % (dims)": s["dimension_compression_pct"].map(lambda v: num(v, "{:.1f}")),
        "MSE": s["mse"].map(lambda v: num(v, "{:.5f}")),
        "PSNR dB": s["psnr_db"].map(num),
        "SSIM": s["ssim"].map(lambda v: num(v, "{:.4f}")),
        "encode img/s": s["encode_img_s"].map(_speed),
        "decode img/s": s["decode_img_s"].map(_speed),
        **{f"{d} MPx/s": (s[f"{d}_mpx_s"] if f"{d}_mpx_s" in s
                          else s[f"{d}_img_s"] * _pixels_per_image(r) / 1e6).map(_mpx)
           for d in ("encode", "decode")},
        "side info (B)": s["side_info_bytes"].map(lambda v: num(v, "{:,.0f}") if v else "0"),
        "pays back after (images)": [_breakeven(row) for _, row in s.iterrows()],
        "dominated by": [dominated.get(c, "") for c in s["codec"]],
    })
    return "\n".join([
        "## Summary",
        "",
        "Bytes are what a standalone decoder needs per image. *Header* is the part of each file "
        "that carries no image content: for a file format, the size of its smallest valid file at "
        "this image size (the smallest encoding of a constant image: container, headers, tables); "
        "0 for codecs that send content only (the autoencoders' and PCA's latent bytes, raw "
        "pixels). *Content* = bytes - header. *Model predicts* is the code length an "
        "entropy-coded learned codec's probability model predicts, beside the real bytes, so the "
        "coding overhead shows. *Compression % (bytes)* = 1 - bytes / pixels; *compression % "
        "(dims)* is the published experiment's definition for latent codecs, 1 - latent values / "
        "pixels. *Side info* is what every decoder needs once besides the payloads (network "
        "weights, PCA basis); *pays back after*: see the verdict. PSNR is that of the mean MSE "
        "(∞ = exact); MSE on pixels in [0, 1]; SSIM as scikit-image with data_range 255 and a "
        f"7x7 window. Throughput is on {r.meta['devices'][0]} (every device: see Throughput), in "
        "images and in megapixels per second. *Dominated by* names a codec at least as small with "
        "at least the PSNR (sweep points included)."
        + (" The test images mix sizes: every figure is a mean over images, each measured at its own "
           "size (*header* too, each size's own), and *compression %* is 1 - mean bytes / mean "
           "pixels; per size: see the next section." if r.meta.get("mixed_sizes") else ""),
        "",
        table(pd.DataFrame(columns)),
    ])


def _rate_distortion(a: Analysis, figures: dict[str, Path]) -> str:
    points, dom = a.points, a.dominated
    df = pd.DataFrame({
        "curve": points["curve"], "codec": points["codec"], "role": points["role"],
        "bpp": points["bpp"].map(num), "bytes": points["bytes_mean"].map(lambda v: num(v, "{:.1f}")),
        "PSNR dB": points["psnr_db"].map(num), "SSIM": points["ssim"].map(lambda v: num(v, "{:.4f}")),
        "dominated": np.where(dom != "", "yes", ""), "by": dom,
    })
    return "\n".join([
        "## Rate–distortion",
        "",
        "Bits per pixel against PSNR and SSIM. A curve is a codec with its fixed parameters, over "
        "what moves its rate (a quality sweep, or a family's sizes); lossless codecs are single "
        "points (drawn at the top of the PSNR panel, since their PSNR is infinite). A point is "
        "*dominated* when another is at least as small and at least as good in PSNR, one of them "
        "strictly.",
        "",
        image(figures, "rate_distortion", "Rate-distortion"),
        "",
        table(df),
    ])


def _bd_rates(a: Analysis) -> str:
    bd = a.bd
    need = analysis.MIN_POINTS[a.bd_method]
    lossy = a.points[~a.points["lossless"]]
    points = {c: g for c, g in lossy.groupby("curve", sort=False)}
    single = sorted(c for c, g in points.items() if len(analysis.front(g)) < need)
    bd = bd[~bd["family"].isin(single) & ~bd["anchor"].isin(single)]
    if bd.empty:
        return ""
    # Pairs with a number first, then the n/a ones; each group by family.
    bd = bd.assign(na=bd["bd_rate_pct"].isna()).sort_values(["na", "family", "bd_rate_pct"],
                                                             kind="stable")
    rows, seen = [], set()
    for _, r in bd.iterrows():
        pair = frozenset((r["family"], r["anchor"]))
        if pair in seen or (np.isfinite(r["bd_rate_pct"]) and r["bd_rate_pct"] > 0):
            continue  # each pair once, read as "family needs x % fewer bits than anchor"
        seen.add(pair)
        rows.append({
            "family": r["family"], "anchor": r["anchor"],
            "BD-rate": num(r["bd_rate_pct"], "{:+.1f} %"), "BD-PSNR": num(r["bd_psnr_db"], "{:+.2f} dB"),
            "PSNR range (dB)": f"{r['psnr_low_db']:.1f} – {r['psnr_high_db']:.1f}"
            if np.isfinite(r["psnr_low_db"]) else "none",
            "points in range": f"{r['points_in_overlap']} / {r['anchor_points_in_overlap']}",
            "n/a because": text(r["note"]),
        })
    return "\n".join([
        "## BD-rate: every curve against every other",
        "",
        "Bjøntegaard delta rate: the average difference in bytes at equal PSNR, computed by the "
        f"`bjontegaard` package ({a.bd_method} interpolation of log rate against PSNR; "
        "`--bd-method` picks pchip, cubic or akima) over the PSNR range *both curves of the pair* "
        "cover, stated beside each number; BD-PSNR is the average PSNR difference at equal rate, "
        "over the rate range both cover (n/a when one curve is smaller everywhere). Each pair "
        "is listed once, the cheaper curve as *family*: "
        "a negative BD-rate means it needs that many percent fewer bytes than the *anchor*. Each "
        "curve uses its own front (a sweep point that a smaller point of the same curve matches is "
        f"left out). *n/a*: the common range is under {analysis.MIN_OVERLAP_DB} dB, or a curve has "
        f"fewer than {need} points in it. Both directions of every pair are in `bd_rate.csv`."
        + (f" Single points, not curves (a codec's default setting beside its sweep), are left "
           f"out here: {', '.join(single)}." if single else ""),
        "",
        table(pd.DataFrame(rows)),
    ])


def _throughput(r: RunResult) -> str:
    t = r.throughput
    if t.empty:
        return ""
    df = pd.DataFrame({
        "codec": t["codec"], "device": t["device"], "device name": t["device_name"],
        "direction": t["direction"], "batch": t["batch"].map("{:,}".format),
        "median img/s": t["median_img_s"].map(lambda v: num(v, "{:,.0f}")),
        "range img/s": [f"{a:,.0f} – {b:,.0f}" for a, b in zip(t["min_img_s"], t["max_img_s"])],
        "median MPx/s": (t["median_mpx_s"] if "median_mpx_s" in t
                         else t["median_img_s"] * _pixels_per_image(r) / 1e6).map(_mpx),
        "rounds": t["rounds"], "precision": t["precision"],
        "PSNR dB": t["psnr_db"].map(num), "library": t["library"].fillna(""),
    })
    return "\n".join([
        "## Throughput",
        "",
        f"Timed region: host uint8 images in, payload bytes out (encode), and back (decode), "
        f"host-device copies included; {r.meta['warmup']} warm-up call(s), then the median of up to "
        f"{r.meta['rounds']} timed rounds (at least 3; past 3, no round starts after a second of "
        "timed rounds; the *rounds* column) (range = slowest – fastest round); CUDA is synchronised "
        "before and after each round. PSNR is measured on the timed batch, per device. The "
        "selected codecs are timed on every selected device; the settings the verdict names "
        "(often sweep points) on the first device that runs them. Each codec is timed alone, "
        "one after another, never while other work runs. MPx/s = img/s x pixels per image (of "
        "the timed batch), in millions."
        + (" The test images mix sizes: a timed call codes every size of the batch, one uniform "
           "batch per size, one after another." if r.meta.get("mixed_sizes") else ""),
        "",
        table(df),
    ])


