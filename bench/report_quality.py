"""The report's sections on quality: per image size (mixed sizes), per class, error per ink, the
autoencoders against their PCA controls, lossless rates beside published ones, the published
compression chart, samples and the t-SNE (bench.report assembles them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import analysis, metrics
from bench.literature import PUBLISHED_LOSSLESS_MNIST
from bench.markdown import image, num, table
from bench.results import RunResult


def sizes(r: RunResult) -> str:
    """Per codec and image size, for a run whose test images mix sizes."""
    if not r.meta.get("mixed_sizes") or "height" not in r.per_image:
        return ""
    rows = r.per_image[r.per_image["role"] == "main"]
    out = metrics.aggregate(rows, ["codec", "height", "width"])
    header = rows.groupby(["codec", "height", "width"], sort=False)["header_bytes"].mean()
    order = {c: i for i, c in enumerate(dict.fromkeys(rows["codec"]))}
    out = out.assign(order=out["codec"].map(order)).sort_values(["order", "height", "width"],
                                                                kind="stable")
    table_rows = [{
        "codec": c["codec"], "size": f"{c['height']}x{c['width']}", "test images": f"{c['images']:,}",
        "bytes/image": num(c["bytes_mean"], "{:.1f}"),
        "header (B)": num(header.loc[(c["codec"], c["height"], c["width"])], "{:.0f}"),
        "bpp": num(c["bpp"]), "PSNR dB": num(c["psnr_db"]), "SSIM": num(c["ssim"], "{:.4f}"),
    } for _, c in out.iterrows()]
    learned = analysis.main_rows(r)["learned"].astype(bool).any()
    return "\n".join([
        "## Per image size",
        "",
        f"The test images mix sizes ({r.meta.get('image_sizes', '')}). Every codec is given one "
        "uniform batch per size and measured per image; here each size on its own (header: that "
        "size's smallest valid file)."
        + (" Learned codecs were trained on one size (see *Training size* above): at the other "
           "sizes they code images of a size they were not trained on." if learned else ""),
        "",
        table(pd.DataFrame(table_rows)),
    ])


def ae_vs_pca(r: RunResult) -> str:
    s = analysis.main_rows(r).set_index("codec")
    rows = []
    for ae in s.index:
        if s.loc[ae, "family"] != "ae":
            continue
        level = ae.split(":")[0][2:]
        pca = f"pca{level}"
        if pca not in s.index:
            continue
        a, p = s.loc[ae], s.loc[pca]
        rows.append({"level": f"{level} %", "latent bytes": num(a["content_bytes"], "{:.0f}"),
                     "AE PSNR dB": num(a["psnr_db"]), "PCA PSNR dB": num(p["psnr_db"]),
                     # Both exact (∞ dB) is no difference, not ∞ - ∞.
                     "AE - PCA dB": num(0.0 if a["psnr_db"] == p["psnr_db"] else a["psnr_db"] - p["psnr_db"],
                                        "{:+.2f}"),
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

def lossless(r: RunResult) -> str:
    s = r.summary[r.summary["lossless"]].drop_duplicates("codec")
    if s.empty:
        return ""
    rows = [{"codec": c, "source": "this run", "bits/pixel": bpp,
             "bytes/image": num(b, "{:.1f}"),
             "note": "one standalone payload per image" + (f"; {side:,.0f} B side info, sent once"
                                                          if side else "")}
            for c, bpp, b, side in zip(s["codec"], s["bpp"], s["bytes_mean"], s["side_info_bytes"])]
    mnist = r.meta["dataset"] in ("mnist", "mnist-5k")
    if mnist:
        rows += [{"codec": name, "source": f"published: {source}", "bits/pixel": bpp,
                  "bytes/image": "", "note": note}
                 for name, bpp, source, note in PUBLISHED_LOSSLESS_MNIST]
    df = pd.DataFrame(rows).sort_values("bits/pixel", kind="stable")
    df["bits/pixel"] = df["bits/pixel"].map(lambda v: num(v, "{:.3f}"))
    lines = ["## Lossless", "",
             "Bits per pixel of every lossless codec in this run (payload bytes x 8 / pixels, "
             "headers included)"]
    if mnist:
        lines[-1] += (", beside published lossless results on MNIST. Those are quoted, not measured "
                      "here: on the full 10,000-digit test set (this run: "
                      f"{r.meta['test_images']:,} test digits), and mostly not per-image files; "
                      "the note says what each figure is.")
    else:
        lines[-1] += "."
    return "\n".join([*lines, "", table(df)])

def per_class(r: RunResult, pc: pd.DataFrame, figures: dict[str, Path]) -> str:
    present = set(pc["class"])
    absent = [c for c in r.meta["classes"] if c not in present] if present else []
    parts = ["## Quality per class", "",
             "Per codec and class (the test images' labels). In each table **bold** marks the best "
             "class and _italic_ the worst by that table's metric (lowest MSE, highest PSNR or SSIM)."
             + (f" No test image has the class {', '.join(f'`{c}`' for c in absent)}: too few images "
                "of it for the split to hold one out, so it is in no table." if absent else ""),
             "", image(figures, "per_class_psnr", "PSNR per class")]
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
        for codec, row in analysis.by_class(pc, metric, r.meta["classes"]).iterrows():
            best, worst = (extremes[metric].loc[codec, k] for k in ("best_class", "worst_class"))
            cells = {"codec": codec}
            for cls, v in row.items():
                text = num(v, fmt)
                cells[cls] = f"**{text}**" if cls == best else f"_{text}_" if cls == worst else text
            cells["best"], cells["worst"] = best or "—", worst or "—"
            rows.append(cells)
        parts += ["", f"### {title}", "", table(pd.DataFrame(rows))]
    return "\n".join(parts)

def ink(r: RunResult, pc: pd.DataFrame, figures: dict[str, Path]) -> str:
    if "ink" not in figures:
        return ""
    pc = analysis.lossy_per_class(r, pc)
    ink = pc.groupby("class", sort=False)["ink_mean"].first()
    rows = []
    for codec, g in pc.groupby("codec", sort=False):
        g = g.set_index("class")
        rows.append({"codec": codec, **{
            c: f"{num(g.loc[c, 'mse'], '{:.3g}')} / {num(g.loc[c, 'mse_per_100_ink'], '{:.3g}')}"
            for c in ink.index}})
    head = {"codec": "mean ink pixels", **{c: num(v, "{:.1f}") for c, v in ink.items()}}
    return "\n".join([
        "## Error normalised by ink",
        "",
        f"Ink = pixels above {metrics.INK_THRESHOLD} (of 255) in the original. Each cell: MSE / MSE "
        "per 100 ink pixels. A class whose raw error is high but whose error per ink is ordinary has "
        "more ink, not a harder shape.",
        "",
        image(figures, "ink", "MSE and MSE per ink"),
        "",
        table(pd.DataFrame([head, *rows])),
    ])

def compression_vs_error(figures: dict[str, Path]) -> str:
    if "compression_vs_error" not in figures:
        return ""
    return "\n".join([
        "## Compression against error (the published chart)",
        "",
        "Left: compression by latent dimension, as published. Right: by real bytes per image. "
        "With one byte per latent value the two agree; a float32 latent would sit at a quarter of "
        "the byte savings.",
        "",
        image(figures, "compression_vs_error", "Compression against MSE"),
    ])

def samples(figures: dict[str, Path]) -> str:
    if "samples" not in figures:
        return ""
    return "\n".join(["## Samples", "",
                      "One test image per class: the original and each codec's reconstruction, "
                      "with its bytes and PSNR.", "", image(figures, "samples", "Samples")])

def tsne(r: RunResult, figures: dict[str, Path]) -> str:
    note = r.meta.get("tsne_note", "")
    if "tsne" not in figures:
        if note.startswith("skipped"):
            return "\n".join(["## t-SNE of originals and reconstructions", "",
                              f"The t-SNE was {note}."])
        return ""
    n_orig = int((r.tsne["kind"] == "original").sum())
    return "\n".join([
        "## t-SNE of originals and reconstructions", "",
        f"{n_orig} test originals (blue rings) and their reconstructions by each autoencoder (red "
        "dots), "
        f"{len(r.tsne)} points embedded together in one t-SNE (scikit-learn, after PCA to 50 "
        "dimensions, seed 0), so the rings are the same in every panel. A dot inside its ring: the "
        "reconstruction keeps the original's neighbours; dots that drift show what the codec loses."
        + (f" The embedding is {note}." if note else ""),
        "", image(figures, "tsne", "t-SNE")])
