"""The report's figures: one PNG per figure, drawn with matplotlib from a run's saved results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import analysis
from bench.markdown import num
from bench.results import RunResult

LATENT_FAMILIES = ("ae", "pca")  # the codecs with a latent dimension, the published chart's x axis


def draw_all(result: RunResult, a: analysis.Analysis, per_class: pd.DataFrame,
             plots_dir: Path) -> dict[str, Path]:
    """Every figure the run has data for, as plots_dir/<name>.png: {name: path} of those drawn."""
    import matplotlib

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(exist_ok=True)
    main = analysis.main_rows(result)
    lossy = analysis.lossy_per_class(result, per_class)
    latent = main[main["family"].isin(LATENT_FAMILIES)]
    figures = {
        "per_class_psnr": (draw_per_class, result, per_class),
        "ink": (draw_ink, lossy) if not lossy.empty else None,
        "compression_vs_error": (draw_compression, latent) if not latent.empty else None,
        "rate_distortion": (draw_rate_distortion, a.points),
        "samples": (draw_samples, result) if "original" in result.samples else None,
        "tsne": (draw_tsne, result.tsne) if not result.tsne.empty else None,
    }
    paths = {}
    # Ten distinct hues, then their light shades: a run often has more than ten series.
    colors = [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["tab20"].colors[1::2]]
    with matplotlib.rc_context({"axes.prop_cycle": matplotlib.cycler(color=colors)}):
        for name, job in figures.items():
            if job:
                draw, *data = job
                paths[name] = plots_dir / f"{name}.png"
                draw(*data, paths[name])
    return paths


def _figure(*args, figsize=None, **kwargs):
    """A Figure without pyplot: no global backend or figure state is touched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # legends placed beside the axes included


def draw_per_class(r: RunResult, pc: pd.DataFrame, path: Path) -> None:
    """A heatmap: codecs x classes, coloured and labelled by PSNR."""
    lossy = pc[np.isfinite(pc["psnr_db"])]
    classes = r.meta["classes"]
    wide = analysis.by_class(lossy, "psnr_db", classes)
    fig, ax = _figure(figsize=(1.0 + 0.75 * max(len(wide.columns), 4), 1.0 + 0.38 * max(len(wide), 2)))
    if wide.empty:
        ax.text(0.5, 0.5, "every codec in this run is lossless (PSNR ∞)", ha="center")
        ax.set_axis_off()
        _save(fig, path)
        return
    image = ax.imshow(wide.to_numpy(), cmap="viridis", aspect="auto")
    slant = len(classes) > 10 or max(map(len, classes)) > 6  # long names (photo-crops) overlap
    ax.set_xticks(range(len(wide.columns)), wide.columns, rotation=45 if slant else 0,
                  ha="right" if slant else "center")
    ax.set_yticks(range(len(wide)), wide.index, fontsize=8)
    for (i, j), value in np.ndenumerate(wide.to_numpy()):
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                color="white" if value < np.nanmean(wide.to_numpy()) else "black")
    ax.set_xlabel("class")
    ax.set_title("PSNR (dB) per codec and class (lossy codecs; lossless ones are exact)")
    fig.colorbar(image, ax=ax, label="PSNR (dB)")
    _save(fig, path)


def draw_ink(pc: pd.DataFrame, path: Path) -> None:
    fig, (a, b) = _figure(1, 2, figsize=(12, 4.2))
    for codec, g in pc.groupby("codec", sort=False):
        a.plot(g["class"], g["mse"], marker="o", label=codec)
        b.plot(g["class"], g["mse_per_100_ink"], marker="o", label=codec)
    a.set_title("MSE per class")
    b.set_title("MSE per 100 ink pixels per class")
    # A log scale needs a positive value: every codec may be exact on these images.
    log = bool((pc["mse"] > 0).any())
    for ax, ylabel in ((a, "MSE (pixels in [0, 1])"), (b, "MSE per 100 ink pixels")):
        if log:
            ax.set_yscale("log")
            ylabel += ", log scale"
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("class")
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=45)
    b.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def draw_compression(fam: pd.DataFrame, path: Path) -> None:
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
    log = bool((fam["mse"] > 0).any())  # a log scale needs a positive value
    for ax in (a, b):
        if log:
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)


def draw_rate_distortion(points: pd.DataFrame, path: Path) -> None:
    """Learned curves solid, classical dashed; twenty colours, then markers, keep two dozen curves
    apart. One legend beside both panels, so it never hides a curve."""
    import matplotlib as mpl

    curves = list(points[~points["lossless"]].groupby("curve", sort=False))
    lossless = points[points["lossless"]]
    entries = len(curves) + len(lossless)
    columns = max(1, -(-entries // 28))
    fig, (a, b) = _figure(1, 2, figsize=(12, 5.2))
    finite = points["psnr_db"][np.isfinite(points["psnr_db"])]
    top = (finite.max() if len(finite) else 40) + 3
    colours = mpl.colormaps["tab20"].colors
    for i, (curve, g) in enumerate(curves):
        g = g.sort_values("bpp")
        style = {"color": colours[i % len(colours)], "marker": "os^Dv"[i // len(colours) % 5],
                 "ms": 4, "ls": "-" if bool(g["learned"].iloc[0]) else "--", "label": curve}
        # A setting that gave back every image unchanged (PSNR ∞) sits on the lossless line.
        a.plot(g["bpp"], g["psnr_db"].where(~np.isposinf(g["psnr_db"]), top), **style)
        b.plot(g["bpp"], g["ssim"], **{**style, "label": None})
    for i, (_, row) in enumerate(lossless.iterrows()):
        marker, shade = "*PXDs^v<>ph"[i % 11], ("black", "dimgrey", "darkgrey")[i // 11 % 3]
        style = {"marker": marker, "s": 80, "color": shade, "zorder": 3}
        a.scatter(row["bpp"], top, label=f"{row['codec']} (lossless)", **style)
        b.scatter(row["bpp"], row["ssim"], **style)
    exact = bool(np.isposinf(points.loc[~points["lossless"], "psnr_db"]).any())
    if len(lossless) or exact:
        a.axhline(top, color="grey", lw=0.5, ls="--")
        a.annotate("lossless or exact (∞ dB)" if exact else "lossless (∞ dB)", (0.01, top),
                   xycoords=("axes fraction", "data"), va="bottom", fontsize=7, color="grey")
    a.set_ylabel("PSNR (dB)")
    b.set_ylabel("SSIM")
    for ax, title in ((a, "Rate–distortion: PSNR"), (b, "Rate–distortion: SSIM")):
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    if entries:
        fig.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncols=columns,
                   title="solid: learned, dashed: classical" if curves else None, title_fontsize=7)
    _save(fig, path)


def draw_samples(r: RunResult, path: Path) -> None:
    """One mosaic image, drawn once: a grid of 130 small axes takes seconds to render. Tiles larger
    than 28x28 scale the figure (up to twice); mixed sizes sit centred in cells of the largest."""
    from bench.samples import SAMPLE_MAX_SIDE, SAMPLE_SHAPES, sample_indices

    original = r.samples["original"]
    codecs = [c for c in r.samples if c != "original" and not c.startswith(".")]
    per_image = r.per_image[r.per_image["role"] == "main"]
    firsts = per_image.drop_duplicates("index").sort_values("index")
    test_labels = firsts["label"].to_numpy()
    picks = sample_indices(test_labels)
    classes = r.meta["classes"]
    rows, cols = 1 + len(codecs), len(original)
    h, w = original.shape[1:]
    zoom = max(h, w, 28) / 28
    gap_y, gap_x = round(14 * zoom), round(6 * zoom)  # pixels of room for the caption under each tile
    mosaic = np.full((rows * (h + gap_y), cols * (w + gap_x)), 255, np.uint8)
    for i, images in enumerate([original, *(r.samples[c] for c in codecs)]):
        for j in range(cols):
            y, x = i * (h + gap_y), j * (w + gap_x)
            mosaic[y : y + h, x : x + w] = images[j]
    scale = min(zoom, 2.0)
    fig, ax = _figure(figsize=(0.75 * cols * scale + 1.6, 0.6 * rows * scale + 0.4))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    labels = [f"class {classes[int(test_labels[p])]}" for p in picks]
    cropped = False
    if SAMPLE_SHAPES in r.samples or h == SAMPLE_MAX_SIDE or w == SAMPLE_MAX_SIDE:
        full = firsts.set_index("index")
        for j, p in enumerate(picks):
            fh, fw = (int(full.loc[p, k]) for k in ("height", "width")) if "height" in full else (h, w)
            cropped |= max(fh, fw) > SAMPLE_MAX_SIDE
            labels[j] += f"\n{fh}x{fw}" + (" (crop)" if max(fh, fw) > SAMPLE_MAX_SIDE else "")
    ax.set_xticks([j * (w + gap_x) + w / 2 for j in range(cols)], labels, fontsize=7)
    ax.xaxis.tick_top()
    if max(len(line) for label in labels for line in label.split("\n")) * 4.5 > w + gap_x:
        # Names wider than their tile (photo-crops' file names): slanted, so they do not overlap.
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("left")
    ax.set_yticks([i * (h + gap_y) + h / 2 for i in range(rows)], ["original", *codecs], fontsize=7)
    lookup = per_image.set_index(["codec", "index"])
    for i, codec in enumerate(codecs, start=1):
        for j, pick in enumerate(picks):
            row = lookup.loc[(codec, pick)]
            ax.text(j * (w + gap_x) + w / 2, i * (h + gap_y) + h + 1,
                    f"{row['bytes']}B {num(row['psnr_db'], '{:.1f}')}dB",
                    ha="center", va="top", fontsize=4.5)
    ax.set_title("One test image per class: original and reconstructions (bytes, PSNR)"
                 + (f"; larger images: their central {SAMPLE_MAX_SIDE}x{SAMPLE_MAX_SIDE}"
                    if cropped else ""))
    for side in ax.spines.values():
        side.set_visible(False)
    _save(fig, path)


def draw_tsne(points: pd.DataFrame, path: Path) -> None:
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
