"""The run's summary table: one row per codec, from its job's row, its per-image metrics and its
throughput."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench import metrics
from bench.codec import Codec
from bench.registry import Spec


def _losses(values) -> str:
    """A loss curve for a CSV cell: values per epoch, ';'-separated."""
    return ";".join(f"{v:.6g}" for v in values)


def codec_row(spec: Spec, codec: Codec, role: str, frame: pd.DataFrame,
              training: tuple[np.ndarray, np.ndarray]) -> dict:
    """The job's row of the summary. A learned codec's adds what it was fitted on and its loss
    per epoch (training, and on the validation split), which the report reads for under- or
    over-training (bench.learning)."""
    latent = dict(spec.values).get("latent")
    headers = frame["header_bytes"]
    row = {
        "codec": spec.canonical, "curve": spec.curve, "family": spec.info.family or spec.info.name,
        "role": role, "lossless": bool(codec.lossless), "learned": bool(codec.learned),
        "latent": latent,
        "header_bytes": int(headers.iloc[0]) if headers.nunique() == 1 else float(headers.mean()),
        "side_info_bytes": int(codec.side_info_bytes),
    }
    if codec.learned:
        train, validation = training
        history = getattr(codec, "history", None)
        row.update({"fit_images": len(train), "fit_pixels": int(train.size),
                    "fit_validation_images": len(validation),
                    "fit_size": f"{train.shape[1]}x{train.shape[2]}" if train.ndim == 3 else "",
                    "train_loss": _losses(getattr(history, "train", [])),
                    "validation_loss": _losses(getattr(history, "validation", [])),
                    "training_kept": getattr(history, "kept", "")})
    return row


def summarize(codecs: pd.DataFrame, per_image: pd.DataFrame, throughput: pd.DataFrame,
              device: str) -> pd.DataFrame:
    """One row per codec; its throughput columns are those measured on `device`."""
    from bench.analysis import breakeven

    stats = metrics.aggregate(per_image, ["codec"])
    pixels = (per_image["height"] * per_image["width"]).groupby(per_image["codec"], sort=False).mean()
    out = codecs.merge(stats, on="codec")
    out["content_bytes"] = out["bytes_mean"] - out["header_bytes"]
    image_pixels = out["codec"].map(pixels)
    out["compression_pct"] = 100.0 * (1.0 - out["bytes_mean"] / image_pixels)
    # One byte per latent value: an image's latent values are its content bytes (one canvas of
    # `latent` values at the training size up to 64x64, several on larger images).
    latent_values = out["content_bytes"].where(out["latent"].notna())
    out["dimension_compression_pct"] = 100.0 * (1.0 - latent_values / image_pixels)
    columns = {"median_img_s": "img_s", "median_mpx_s": "mpx_s"}
    if len(throughput):
        on = throughput[throughput["device"] == device]
        for value, suffix in columns.items():
            rates = on.pivot_table(index="codec", columns="direction", values=value)
            rates = rates.rename(columns=lambda d, s=suffix: f"{d}_{s}").reset_index()
            out = out.merge(rates, on="codec", how="left")
    for col in ("encode_img_s", "decode_img_s", "encode_mpx_s", "decode_mpx_s"):
        if col not in out:
            out[col] = np.nan
    return out.merge(breakeven(out), on="codec", how="left")
