"""Save and load a run: meta.json, CSV tables and samples.npz, written atomically."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from bench.cache import atomic_write, usual_mode
from bench.codec import BenchError
from bench.timing import cpu_name


@dataclass
class RunResult:
    meta: dict
    summary: pd.DataFrame  # one row per codec
    per_image: pd.DataFrame  # one row per codec and test image
    throughput: pd.DataFrame  # one row per codec, device and direction
    tsne: pd.DataFrame = field(default_factory=pd.DataFrame)  # 2-D points, see analysis.tsne
    # "original" and codec -> (C, H, W); mixed sizes: centred on cells of the largest, with their
    # (C, 2) sizes under bench.samples.SAMPLE_SHAPES
    samples: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class VerdictOptions:
    """The qualities the verdict answers for, and N for the at-scale table."""

    psnr_targets: tuple[float, ...] = (20.0, 25.0, 30.0, 35.0, 40.0)
    ssim_targets: tuple[float, ...] = (0.90, 0.95, 0.99)
    amortize: int = 1_000_000
    bd_method: str = "pchip"

    @property
    def targets(self) -> list[tuple[str, float]]:
        return [("psnr", t) for t in self.psnr_targets] + [("ssim", t) for t in self.ssim_targets]


TABLES = ("summary", "per_image", "throughput", "tsne")
CSV_FLOAT = "%.7g"
VERSIONED = ("aecodec-bench", "numpy", "pandas", "scikit-image", "scikit-learn", "imagecodecs",
             "pillow", "torch", "torchvision", "numba", "matplotlib", "constriction", "bjontegaard",
             "zstandard")


def plugins() -> dict[str, dict]:
    """Each installed codec plugin: its distribution, version, and the versions of what it
    requires, so that a plugin's results can be traced to its code."""
    from bench.registry import ENTRY_POINT_GROUP

    out = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        if dist is None:
            out[ep.name] = {"entry_point": ep.value}
            continue
        requires = {}
        for req in dist.requires or []:
            name = re.match(r"[A-Za-z0-9_.-]+", req).group()
            try:
                requires[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                requires[name] = "not installed"
        out[ep.name] = {"entry_point": ep.value, "distribution": dist.name,
                        "version": dist.version, "requires": requires}
    return out


def environment() -> dict:
    versions = {}
    for dist in VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        import imagecodecs

        for lib in ("jpeg8", "png", "webp", "jpegxl", "avif", "jpeg2k", "jpegls", "zlib", "brotli"):
            versions[lib] = getattr(imagecodecs, f"{lib}_version")()
    except ImportError:
        pass
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "ram_gib": round(total_ram / 2**30, 1),
        "versions": versions,
        "plugins": plugins(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def new_run_dir(root: Path, dataset: str) -> Path:
    """A folder under root named by dataset and time that does not exist yet."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in dataset).strip("-")[:40]
    path = root / f"{safe}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{safe}-{stamp}-{n}"
    return path


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Fail before any work when the output folder would be overwritten by surprise, or when
    --overwrite would replace something that is not an earlier run's folder (a file, a folder of
    the user's own)."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder; choose a folder for the report")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise BenchError(f"--out {out} exists and is not empty; choose a new folder or pass "
                             "--overwrite to replace it")
        if not is_run_dir(out):
            raise BenchError(f"--out {out} is not an earlier run's folder (no meta.json and summary.csv), "
                             "and --overwrite replaces only those; choose a new folder")
    parent = out.parent if out.parent != Path("") else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise BenchError(f"cannot write into {parent}: permission denied; choose another --out")


def save(result: RunResult, out: Path, render=None, overwrite: bool = False) -> Path:
    """Write everything into a hidden sibling folder, then move it into place in one rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        tmp.chmod(usual_mode(directory=True))  # mkdtemp's 0700 would hide the report from others
        (tmp / "meta.json").write_text(json.dumps(result.meta, indent=2, default=str) + "\n")
        for name in TABLES:
            table = getattr(result, name)
            if len(table):
                table.to_csv(tmp / f"{name}.csv", index=False, float_format=CSV_FLOAT)
        np.savez_compressed(tmp / "samples.npz", **result.samples)
        if render is not None:
            render(tmp)
        if out.exists() and overwrite:
            trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            if out.exists():
                out.rmdir()  # empty, as check_out_dir made sure
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_run_dir(path: Path) -> bool:
    return (path / "meta.json").is_file() and (path / "summary.csv").is_file()


def load(run_dir: Path) -> RunResult:
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise BenchError(f"{run_dir} is not a bench run folder (no meta.json and summary.csv)")
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
        tables = {}
        for name in TABLES:
            path = run_dir / f"{name}.csv"
            tables[name] = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        with np.load(run_dir / "samples.npz") as npz:
            samples = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(f"{run_dir}: cannot read the saved results ({exc})") from None
    return RunResult(meta, tables["summary"], tables["per_image"], tables["throughput"],
                     tables["tsne"], samples)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_csv_atomic(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda f: table.to_csv(f, index=False, float_format=CSV_FLOAT))
