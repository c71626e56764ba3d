"""report.md and its PNG plots, rendered from saved results only (never re-encodes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import analysis, metrics
from bench.results import write_text_atomic
from bench.runner import RunResult

REFERENCE_FAMILY = "jpeg"
LATENT_FAMILIES = ("ae", "pca")


def num(x, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (float, np.floating)) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return fmt.format(x)


def table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


def per_class(result: RunResult) -> pd.DataFrame:
    rows = result.per_image[result.per_image["role"] == "main"]
    out = metrics.aggregate(rows, ["codec", "label"])
    classes = result.meta["classes"]
    out["class"] = [classes[int(i)] for i in out["label"]]
    return out


def curves(result: RunResult) -> pd.DataFrame:
    """Every point (main and sweep) with its family, sorted by rate within each family."""
    s = result.summary.copy()
    return s.sort_values(["family", "bpp"]).reset_index(drop=True)


def render(result: RunResult, out_dir: Path) -> Path:
    import matplotlib

    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    pc = per_class(result)
    # Ten distinct hues, then their light shades: a run often has more than ten series.
    colors = [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["tab20"].colors[1::2]]
    with matplotlib.rc_context({"axes.prop_cycle": matplotlib.cycler(color=colors)}):
        text = _markdown(result, pc, plots)
    path = out_dir / "report.md"
    write_text_atomic(path, text)
    return path


def _markdown(result: RunResult, pc: pd.DataFrame, plots: Path) -> str:
    points = curves(result)
    dominated = analysis.dominated_by(points)
    sections = [
        _header(result),
        _summary(result, points, dominated),
        _ae_vs_pca(result),
        _per_class(result, pc, plots),
        _ink(result, pc, plots),
        _compression_vs_error(result, plots),
        _rate_distortion(points, dominated, plots),
        _bd_rates(points),
        _throughput(result),
        _samples(result, plots),
        _tsne(result, plots),
    ]
    return "\n\n".join(s for s in sections if s).rstrip() + "\n"


def _main(result: RunResult) -> pd.DataFrame:
    return result.summary[result.summary["role"] == "main"]


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
    lines += [
        f"- **Images:** {m['train_images']:,} train (for fitting learned codecs), "
        f"{m['test_images']:,} test (every number below), {m['image_shape'][0]}x{m['image_shape'][1]} "
        "8-bit grayscale",
        f"- **Command:** `{m.get('command', 'n/a')}` ({m.get('seconds', '?')} s)",
        f"- **Machine:** {env.get('cpu', 'n/a')}, {env.get('cores', '?')} cores, "
        f"{env.get('ram_gib', '?')} GiB; {env.get('platform', '')}; devices measured: "
        f"{', '.join(m['devices'])}",
        "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- **Created:** {env.get('created', 'n/a')}",
    ]
    return "\n".join(lines)


def _summary(r: RunResult, points: pd.DataFrame, dom: pd.Series) -> str:
    s = _main(r)
    dominated = dict(zip(points["codec"], dom))
    df = pd.DataFrame({
        "codec": s["codec"],
        "lossless": np.where(s["lossless"], "yes", "no"),
        "bytes/image": [f"{m:.1f} ± {sd:.1f}" for m, sd in zip(s["bytes_mean"], s["bytes_std"].fillna(0))],
        "fixed overhead (B)": s["header_bytes"].map(lambda v: num(v, "{:.0f}")),
        "bpp": s["bpp"].map(num),
        "compression % (bytes)": s["compression_pct"].map(lambda v: num(v, "{:.1f}")),
        "compression % (dims)": s["dimension_compression_pct"].map(lambda v: num(v, "{:.1f}")),
        "MSE": s["mse"].map(lambda v: num(v, "{:.5f}")),
        "PSNR dB": s["psnr_db"].map(num),
        "SSIM": s["ssim"].map(lambda v: num(v, "{:.4f}")),
        "encode img/s": s["encode_img_s"].map(lambda v: num(v, "{:,.0f}")),
        "decode img/s": s["decode_img_s"].map(lambda v: num(v, "{:,.0f}")),
        "side info (B)": s["side_info_bytes"].map(lambda v: num(v, "{:,.0f}") if v else "0"),
        "pays off after (images)": s["breakeven_images"].map(
            lambda v: "never" if v == np.inf else num(v, "{:,.0f}")),
        "dominated by": [dominated.get(c, "") for c in s["codec"]],
    })
    return "\n".join([
        "## Summary",
        "",
        "Bytes are what a standalone decoder needs per image, headers included. *Fixed overhead* is "
        "the size of an all-black image: what the format costs before any content. "
        "*Compression % (bytes)* = 1 - bytes / pixels; *compression % (dims)* is the published "
        "experiment's definition for latent codecs, 1 - latent values / pixels. *Side info* is what "
        "every decoder needs once besides the payloads (network weights, PCA basis), and *pays off "
        "after* is the number of images after which it is repaid by the bytes saved against the "
        "best lossless codec in this run. PSNR is that of the mean MSE (∞ = exact); MSE on pixels in "
        "[0, 1]; SSIM as scikit-image with data_range 255 and a 7x7 window. Throughput is on "
        f"{r.meta['devices'][0]} (every device: see Throughput). *Dominated by* names a codec at "
        "least as small with at least the PSNR (sweep points included).",
        "",
        table(df),
    ])


def _ae_vs_pca(r: RunResult) -> str:
    s = _main(r).set_index("codec")
    rows = []
    for ae in s.index:
        if s.loc[ae, "family"] != "ae":
            continue
        level = ae.split(":")[0][2:]
        pca = f"pca{level}"
        if pca not in s.index:
            continue
        a, p = s.loc[ae], s.loc[pca]
        rows.append({"level": f"{level} %", "latent bytes": num(a["latent"], "{:.0f}"),
                     "AE PSNR dB": num(a["psnr_db"]), "PCA PSNR dB": num(p["psnr_db"]),
                     "AE - PCA dB": num(a["psnr_db"] - p["psnr_db"], "{:+.2f}"),
                     "AE SSIM": num(a["ssim"], "{:.4f}"), "PCA SSIM": num(p["ssim"], "{:.4f}"),
                     "AE MSE": num(a["mse"], "{:.5f}"), "PCA MSE": num(p["mse"], "{:.5f}")})
    if not rows:
        return ""
    return "\n".join([
        "## Autoencoder against its PCA control",
        "",
        "Same latent size, same one-byte quantization: does the non-linear network earn its cost?",
        "",
        table(pd.DataFrame(rows)),
    ])


def _per_class(r: RunResult, pc: pd.DataFrame, plots: Path) -> str:
    parts = ["## Quality per class", "",
             "Per codec and class (the test images' labels). In each table **bold** marks the best "
             "class and _italic_ the worst by that table's metric (lowest MSE, highest PSNR or SSIM).",
             "", "![PSNR per class](plots/per_class_psnr.png)"]
    metric_tables = (("mse", "MSE", "{:.5f}"), ("psnr_db", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"))
    extremes = {m: analysis.class_extremes(pc, m, higher_is_better=m != "mse").set_index("codec")
                for m, _, _ in metric_tables}
    family = r.summary.set_index("codec")["family"]
    by_mse = extremes["mse"]
    ae = [c for c in by_mse.index if family.get(c) == "ae"]
    if ae and r.meta["dataset"].startswith("mnist"):
        found = "; ".join(f"{c}: easiest {by_mse.loc[c, 'best_class']}, hardest "
                          f"{by_mse.loc[c, 'worst_class']}" for c in ae)
        parts[2:2] = ["The published experiment found digit 1 the easiest and digit 2 (at 95 %) or "
                      f"8 (at 99 %) the hardest. This run, by MSE: {found}.", ""]
    for metric, title, fmt in metric_tables:
        rows = []
        for codec, row in _by_class(pc, metric, r.meta["classes"]).iterrows():
            best, worst = (extremes[metric].loc[codec, k] for k in ("best_class", "worst_class"))
            cells = {"codec": codec}
            for cls, v in row.items():
                text = num(v, fmt)
                cells[cls] = f"**{text}**" if cls == best else f"_{text}_" if cls == worst else text
            cells["best"], cells["worst"] = best or "—", worst or "—"
            rows.append(cells)
        parts += ["", f"### {title}", "", table(pd.DataFrame(rows))]
    _plot_per_class(r, pc, plots / "per_class_psnr.png")
    return "\n".join(parts)


def _by_class(pc: pd.DataFrame, metric: str, classes: list[str]) -> pd.DataFrame:
    """Codecs x classes of one metric, classes in the dataset's order."""
    wide = pc.pivot_table(index="codec", columns="class", values=metric, sort=False)
    return wide.reindex(columns=[c for c in classes if c in wide.columns])


def _ink(r: RunResult, pc: pd.DataFrame, plots: Path) -> str:
    lossy = _main(r)[~_main(r)["lossless"]]["codec"].tolist()
    if not lossy:
        return ""
    pc = pc[pc["codec"].isin(lossy)]
    ink = pc.groupby("class", sort=False)["ink_mean"].first()
    rows = []
    for codec, g in pc.groupby("codec", sort=False):
        g = g.set_index("class")
        rows.append({"codec": codec, **{
            c: f"{num(g.loc[c, 'mse'], '{:.3g}')} / {num(g.loc[c, 'mse_per_100_ink'], '{:.3g}')}"
            for c in ink.index}})
    head = {"codec": "mean ink pixels", **{c: num(v, "{:.1f}") for c, v in ink.items()}}
    _plot_ink(pc, plots / "ink.png")
    return "\n".join([
        "## Error normalised by ink",
        "",
        f"Ink = pixels above {metrics.INK_THRESHOLD} (of 255) in the original. Each cell: MSE / MSE "
        "per 100 ink pixels. A class whose raw error is high but whose error per ink is ordinary has "
        "more ink, not a harder shape.",
        "",
        "![MSE and MSE per ink](plots/ink.png)",
        "",
        table(pd.DataFrame([head, *rows])),
    ])


def _compression_vs_error(r: RunResult, plots: Path) -> str:
    s = _main(r)
    fam = s[s["family"].isin(LATENT_FAMILIES)]
    if fam.empty:
        return ""
    _plot_compression(fam, plots / "compression_vs_error.png")
    return "\n".join([
        "## Compression against error (the published chart)",
        "",
        "Left: compression by latent dimension, as published. Right: by real bytes per image. "
        "With one byte per latent value the two agree; a float32 latent would sit at a quarter of "
        "the byte savings.",
        "",
        "![Compression against MSE](plots/compression_vs_error.png)",
    ])


def _rate_distortion(points: pd.DataFrame, dom: pd.Series, plots: Path) -> str:
    _plot_rd(points, plots / "rate_distortion.png")
    df = pd.DataFrame({
        "codec": points["codec"], "role": points["role"], "bpp": points["bpp"].map(num),
        "bytes": points["bytes_mean"].map(lambda v: num(v, "{:.1f}")),
        "PSNR dB": points["psnr_db"].map(num), "SSIM": points["ssim"].map(lambda v: num(v, "{:.4f}")),
        "dominated": np.where(dom != "", "yes", ""), "by": dom,
    })
    return "\n".join([
        "## Rate–distortion",
        "",
        "Bits per pixel against PSNR and SSIM. Lossy classical codecs are curves over their quality "
        "sweep, AE and PCA families curves over their four sizes, lossless codecs single points "
        "(drawn at the top of the PSNR panel, since their PSNR is infinite). A point is *dominated* "
        "when another is at least as small and at least as good in PSNR, one of them strictly.",
        "",
        "![Rate-distortion](plots/rate_distortion.png)",
        "",
        table(df),
    ])


def _bd_rates(points: pd.DataFrame) -> str:
    lossy = points[~points["lossless"]]
    ref = lossy[lossy["family"] == REFERENCE_FAMILY]
    rows = []
    for family, g in lossy.groupby("family", sort=False):
        if family == REFERENCE_FAMILY:
            continue
        value = (analysis.bd_rate(ref["bpp"], ref["psnr_db"], g["bpp"], g["psnr_db"])
                 if len(ref) >= 2 else float("nan"))
        rows.append({"family": family, "points": len(g),
                     f"BD-rate vs {REFERENCE_FAMILY}": num(value, "{:+.1f} %")})
    if not rows:
        return ""
    return "\n".join([
        f"## BD-rate against {REFERENCE_FAMILY}",
        "",
        "Bjøntegaard delta rate: the average bit-rate difference at equal PSNR, from cubic fits of "
        "log(bpp) against PSNR (lower order with fewer than 4 points), integrated over the PSNR "
        f"range both curves cover. Negative: fewer bits than {REFERENCE_FAMILY}. n/a: the curves "
        f"do not overlap in PSNR, or {REFERENCE_FAMILY} has fewer than 2 points (add "
        f"`--sweep {REFERENCE_FAMILY}:quality=10..95`).",
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
        "rounds": t["rounds"], "precision": t["precision"],
        "PSNR dB": t["psnr_db"].map(num), "library": t["library"].fillna(""),
    })
    return "\n".join([
        "## Throughput",
        "",
        f"Timed region: host uint8 images in, payload bytes out (encode), and back (decode), "
        f"host-device copies included; {r.meta['warmup']} warm-up call(s), then the median of "
        f"{r.meta['rounds']} timed rounds (range = slowest – fastest round); CUDA is synchronised "
        "before and after each round. PSNR is measured on the timed batch, per device.",
        "",
        table(df),
    ])


def _samples(r: RunResult, plots: Path) -> str:
    if "original" not in r.samples:
        return ""
    _plot_samples(r, plots / "samples.png")
    return "\n".join(["## Samples", "",
                      "One test image per class: the original and each codec's reconstruction, "
                      "with its bytes and PSNR.", "", "![Samples](plots/samples.png)"])


def _tsne(r: RunResult, plots: Path) -> str:
    if r.tsne.empty:
        return ""
    _plot_tsne(r.tsne, plots / "tsne.png")
    n_orig = int((r.tsne["kind"] == "original").sum())
    return "\n".join([
        "## t-SNE of originals and reconstructions", "",
        f"{n_orig} test originals (blue rings) and their reconstructions by each autoencoder (red "
        "dots), "
        f"{len(r.tsne)} points embedded together in one t-SNE (scikit-learn, after PCA to 50 "
        "dimensions, seed 0), so the rings are the same in every panel. A dot inside its ring: the "
        "reconstruction keeps the original's neighbours; dots that drift show what the codec loses.",
        "", "![t-SNE](plots/tsne.png)"])


# --- plots ----------------------------------------------------------------------------

def _figure(*args, figsize=None, **kwargs):
    """A Figure without pyplot: no global backend or figure state is touched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_per_class(r: RunResult, pc: pd.DataFrame, path: Path) -> None:
    """A heatmap: codecs x classes, coloured and labelled by PSNR."""
    lossy = pc[np.isfinite(pc["psnr_db"])]
    classes = r.meta["classes"]
    wide = _by_class(lossy, "psnr_db", classes)
    fig, ax = _figure(figsize=(1.0 + 0.75 * max(len(wide.columns), 4), 1.0 + 0.38 * max(len(wide), 2)))
    if wide.empty:
        ax.text(0.5, 0.5, "every codec in this run is lossless (PSNR ∞)", ha="center")
        ax.set_axis_off()
        _save(fig, path)
        return
    image = ax.imshow(wide.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(wide.columns)), wide.columns, rotation=45 if len(classes) > 10 else 0)
    ax.set_yticks(range(len(wide)), wide.index, fontsize=8)
    for (i, j), value in np.ndenumerate(wide.to_numpy()):
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                color="white" if value < np.nanmean(wide.to_numpy()) else "black")
    ax.set_xlabel("class")
    ax.set_title("PSNR (dB) per codec and class (lossy codecs; lossless ones are exact)")
    fig.colorbar(image, ax=ax, label="PSNR (dB)")
    _save(fig, path)


def _plot_ink(pc: pd.DataFrame, path: Path) -> None:
    fig, (a, b) = _figure(1, 2, figsize=(12, 4.2))
    for codec, g in pc.groupby("codec", sort=False):
        a.plot(g["class"], g["mse"], marker="o", label=codec)
        b.plot(g["class"], g["mse_per_100_ink"], marker="o", label=codec)
    a.set_title("MSE per class")
    b.set_title("MSE per 100 ink pixels per class")
    for ax, ylabel in ((a, "MSE (pixels in [0, 1]), log scale"),
                       (b, "MSE per 100 ink pixels, log scale")):
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("class")
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=45)
    b.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def _plot_compression(fam: pd.DataFrame, path: Path) -> None:
    fig, (a, b) = _figure(1, 2, figsize=(11, 4), sharey=True)
    for family, g in fam.groupby("family", sort=False):
        g = g.sort_values("latent")
        a.plot(g["dimension_compression_pct"], g["mse"], marker="o", label=family.upper())
        b.plot(g["compression_pct"], g["mse"], marker="o", label=family.upper())
        for _, row in g.iterrows():
            a.annotate(row["codec"], (row["dimension_compression_pct"], row["mse"]), fontsize=7)
    a.set_xlabel("compression % by latent dimension")
    b.set_xlabel("compression % by bytes per image")
    a.set_ylabel("MSE (pixels in [0, 1])")
    a.set_title("Compression vs error (published definition)")
    b.set_title("Compression vs error (real bytes)")
    for ax in (a, b):
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)


def _plot_rd(points: pd.DataFrame, path: Path) -> None:
    fig, (a, b) = _figure(1, 2, figsize=(12, 4.8))
    finite = points["psnr_db"][np.isfinite(points["psnr_db"])]
    top = (finite.max() if len(finite) else 40) + 3
    lossless = points[points["lossless"]]
    for family, g in points[~points["lossless"]].groupby("family", sort=False):
        g = g.sort_values("bpp")
        a.plot(g["bpp"], g["psnr_db"], marker="o", label=family)
        b.plot(g["bpp"], g["ssim"], marker="o", label=family)
    markers = iter("*PXDs^v<>p")
    for _, row in lossless.iterrows():
        style = {"marker": next(markers, "*"), "s": 80, "color": "black", "zorder": 3,
                 "label": f"{row['codec']} (lossless)"}
        a.scatter(row["bpp"], top, **style)
        b.scatter(row["bpp"], row["ssim"], **style)
    if len(lossless):
        a.axhline(top, color="grey", lw=0.5, ls="--")
        a.annotate("lossless (∞ dB)", (0.01, top), xycoords=("axes fraction", "data"),
                   va="bottom", fontsize=7, color="grey")
    a.set_ylabel("PSNR (dB)")
    b.set_ylabel("SSIM")
    for ax, title in ((a, "Rate–distortion: PSNR"), (b, "Rate–distortion: SSIM")):
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    b.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def _plot_samples(r: RunResult, path: Path) -> None:
    """One mosaic image, drawn once: a grid of 130 small axes takes seconds to render."""
    from bench.runner import sample_indices

    original = r.samples["original"]
    codecs = [c for c in r.samples if c != "original"]
    per_image = r.per_image[r.per_image["role"] == "main"]
    test_labels = per_image.drop_duplicates("index").sort_values("index")["label"].to_numpy()
    picks = sample_indices(test_labels)
    classes = r.meta["classes"]
    rows, cols = 1 + len(codecs), len(original)
    h, w = original.shape[1:]
    gap_y, gap_x = 14, 6  # pixels of room for the caption under each tile
    mosaic = np.full((rows * (h + gap_y), cols * (w + gap_x)), 255, np.uint8)
    for i, images in enumerate([original, *(r.samples[c] for c in codecs)]):
        for j in range(cols):
            y, x = i * (h + gap_y), j * (w + gap_x)
            mosaic[y : y + h, x : x + w] = images[j]
    fig, ax = _figure(figsize=(0.75 * cols + 1.6, 0.6 * rows + 0.4))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([j * (w + gap_x) + w / 2 for j in range(cols)],
                  [f"class {classes[int(test_labels[p])]}" for p in picks], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([i * (h + gap_y) + h / 2 for i in range(rows)], ["original", *codecs], fontsize=7)
    lookup = per_image.set_index(["codec", "index"])
    for i, codec in enumerate(codecs, start=1):
        for j, pick in enumerate(picks):
            row = lookup.loc[(codec, pick)]
            ax.text(j * (w + gap_x) + w / 2, i * (h + gap_y) + h + 1,
                    f"{row['bytes']}B {num(row['psnr_db'], '{:.1f}')}dB",
                    ha="center", va="top", fontsize=4.5)
    ax.set_title("One test image per class: original and reconstructions (bytes, PSNR)")
    for side in ax.spines.values():
        side.set_visible(False)
    _save(fig, path)


def _plot_tsne(points: pd.DataFrame, path: Path) -> None:
    originals = points[points["kind"] == "original"]
    codecs = list(dict.fromkeys(points.loc[points["kind"] == "reconstruction", "codec"]))
    fig, axes = _figure(1, len(codecs), figsize=(4.5 * len(codecs) + 0.5, 4.2), squeeze=False,
                        sharex=True, sharey=True)
    for ax, codec in zip(axes[0], codecs):
        recon = points[points["codec"] == codec]
        # Rings and dots: a reconstruction that lands on its original shows as a dot in a ring.
        ax.scatter(originals["x"], originals["y"], s=16, facecolors="none",
                   edgecolors="tab:blue", linewidths=0.7, label="original")
        ax.scatter(recon["x"], recon["y"], s=4, c="tab:red", alpha=0.8, label="reconstruction")
        ax.set_title(f"t-SNE: {codec}")
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(fontsize=7, markerscale=3)
    _save(fig, path)
