"""Is a learned codec's verdict limited by its training? What each one was fitted on, and what its
loss per epoch on the validation split says: under-trained, over-fitted, or settled. Read from
the saved summary only (the jobs put the loss curves in their rows), never guessed.

The rule, on the validation loss per epoch v[1..E] (and the training loss t[1..E]):

- over-fitted: the last epoch's v is more than OVER_FITTED_RISE above the curve's minimum v[m]
  (m < E), while the training loss went on falling (t[E] < t[m]): more training images would help;
- under-trained: v fell by more than UNDER_TRAINED_FALL per epoch (relative, on average) over the
  last k = max(1, round(E / 4)) epochs and ends at its minimum: more epochs would help;
- settled: neither; 'unsteady' when v rose past the threshold but the training loss did not fall;
- cannot tell: fewer than 2 epochs, or no validation loss recorded (a codec fitted in closed form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.markdown import num, table, text

UNDER_TRAINED_FALL = 0.01  # relative fall of the validation loss per epoch, over the last epochs
OVER_FITTED_RISE = 0.02  # relative rise of the last validation loss above the curve's minimum


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


@dataclass(frozen=True)
class Reading:
    status: str  # "under-trained", "over-fitted", "settled", "unsteady" or "cannot tell"
    note: str  # one line, with the numbers it was read from


def parse(cell) -> list[float]:
    """A loss curve from its CSV cell ('0.05;0.04;...', or one number that CSV reads as a float);
    [] for none."""
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return [] if math.isnan(cell) else [float(cell)]
    if not isinstance(cell, str) or not cell.strip():
        return []
    return [float(v) for v in cell.split(";")]


def tail(epochs: int) -> int:
    return max(1, min(round(epochs / 4), epochs - 1))


def read(train: list[float], validation: list[float]) -> Reading:
    """The rule in the module's docstring."""
    v, t = validation, train
    if not v:
        return Reading("cannot tell", "no validation loss per epoch (fitted in closed form, or the "
                       "codec records none)")
    if len(v) < 2:
        return Reading("cannot tell", f"{len(v)} epoch: a validation loss, but no trend to read "
                       "(train 2 or more epochs to see one)")
    e = len(v)
    m = min(range(e), key=lambda i: v[i])
    rise = (v[-1] - v[m]) / abs(v[m]) if v[m] else math.inf
    if m < e - 1 and rise > OVER_FITTED_RISE:
        if len(t) == e and t[-1] < t[m]:
            fall = (t[m] - t[-1]) / abs(t[m]) if t[m] else math.inf
            return Reading("over-fitted", f"validation loss {_pct(rise)} above its minimum at epoch "
                           f"{m + 1} of {e} while the training loss fell {_pct(fall)}: more training "
                           "images would help")
        return Reading("unsteady", f"validation loss {_pct(rise)} above its minimum at epoch {m + 1} "
                       f"of {e}, and the training loss did not fall meanwhile")
    k = tail(e)
    before = v[-1 - k]
    per_epoch = (before - v[-1]) / abs(before) / k if before else 0.0
    window = "the last epoch" if k == 1 else f"the last {k} epochs"
    if per_epoch > UNDER_TRAINED_FALL and m == e - 1:
        return Reading("under-trained", f"validation loss still falling {_pct(per_epoch)} per epoch "
                       f"over {window} of {e}: more epochs would help (--epochs)")
    return Reading("settled", f"validation loss changed {'+' if per_epoch <= 0 else '-'}"
                   f"{_pct(abs(per_epoch))} per epoch over {window} of {e}")


def _trained_on(row, meta: dict) -> str:
    images, pixels = row.get("fit_images"), row.get("fit_pixels")
    if images is None or (isinstance(images, float) and math.isnan(images)):
        return "n/a"
    what = "tiles" if meta.get("mixed_sizes") else "images"
    size = text(row.get("fit_size"))
    out = f"{int(images):,} {what}" + (f" of {size}" if size else "")
    out += f" ({num(pixels / 1e6, '{:.2f}')} Mpx)"
    if meta.get("mixed_sizes") and "train_images" in meta:
        out += f" cut from {meta['train_images']:,} images"
    validation = row.get("fit_validation_images")
    if validation is not None and not (isinstance(validation, float) and math.isnan(validation)):
        out += f"; {int(validation):,} validation {what}"
    return out


def _curve(v: list[float]) -> str:
    if len(v) < 2:
        return f"{v[0]:.4g}" if v else "–"
    m = min(range(len(v)), key=lambda i: v[i])
    return f"{v[0]:.4g} → {v[m]:.4g} (epoch {m + 1}) → {v[-1]:.4g}"


def section(summary: pd.DataFrame, meta: dict) -> str:
    """The report's lines on the learned side's training, one per learned codec of the run."""
    if "fit_images" not in summary or "learned" not in summary:
        return ""
    learned = summary[summary["learned"].astype(bool)]
    if learned.empty:
        return ""
    rows = []
    # Settings that share one trained model (a variable-rate codec's sweep points) share a row;
    # codecs with no loss history (fitted in closed form) keep one row each.
    same_model = [r.get("curve", r["codec"]) + str(r.get("train_loss")) + str(r.get("validation_loss"))
                  if parse(r.get("train_loss")) else r["codec"] for _, r in learned.iterrows()]
    for _, group in learned.groupby(same_model, sort=False):
        r = group.iloc[0]
        train, validation = parse(r.get("train_loss")), parse(r.get("validation_loss"))
        reading = read(train, validation)
        kept = r.get("training_kept")
        if isinstance(kept, str) and kept:  # the weights are not the last epoch's
            reading = Reading("start kept", f"the codec kept {kept}; its epochs read *{reading.status}*: "
                              f"{reading.note}")
        codec = r["codec"]
        if len(group) > 1:
            codec += f" and {len(group) - 1} more setting{'s' if len(group) > 2 else ''} (one model)"
        rows.append({"codec": codec, "trained on": _trained_on(r, meta),
                     "epochs": str(len(train)) if train else "–",
                     "validation loss: first → lowest → last": _curve(validation),
                     "reading": f"**{reading.status}**: {reading.note}"})
    return "\n".join([
        "### Is the learned side starved of data or training?",
        "",
        "What each learned codec was fitted on, and what its loss per epoch on the validation split "
        "(held out of the training split; never the test split) says. *Under-trained*: the "
        f"validation loss still fell more than {_pct(UNDER_TRAINED_FALL)} per epoch over the last "
        "quarter of the epochs (at least the last one) and ends at its lowest; *over-fitted*: it "
        f"ends more than {_pct(OVER_FITTED_RISE)} above its lowest while the training loss still "
        "fell; *settled*: neither; *start kept*: training ended worse than the model's starting "
        "point, which the codec keeps. A codec reading under-trained or over-fitted would do better "
        "with more epochs or more images, so its place in the verdict is a lower bound. The loss "
        "is each family's own training objective, so values compare within a codec only.",
        "",
        table(pd.DataFrame(rows)),
    ])
