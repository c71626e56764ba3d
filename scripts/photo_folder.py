"""A folder of large photographs for `--dataset folder:PATH`: seeded random square crops of the
ten pictures `photo-crops` cuts (scikit-image's, read from the installed package, 8-bit gray),
one sub-folder (class) per picture. A picture smaller than the crop in a side gives a square crop
of its shorter side, mirrored out to the crop's size.

    .venv/bin/python scripts/photo_folder.py /tmp/photos-256                 # 6 crops of 256x256 each
    .venv/bin/python -m bench run --dataset folder:/tmp/photos-256 --codecs factorized,jpeg,webp
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import PHOTO_FILES, read_photo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--side", type=int, default=256, help="crop side in pixels (default 256)")
    parser.add_argument("--per-picture", type=int, default=6, help="crops per picture (default 6)")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; name a new folder")
    if not 1 <= args.side <= 1024 or args.per_picture < 1:
        parser.error("--side must be 1..1024 and --per-picture at least 1")
    rng = np.random.default_rng(args.seed)
    for name in PHOTO_FILES:
        gray = read_photo(name)
        (args.out / name).mkdir(parents=True)
        for k in range(args.per_picture):
            s = min(args.side, *gray.shape)
            y, x = (int(rng.integers(0, side - s + 1)) for side in gray.shape)
            crop = gray[y : y + s, x : x + s]
            crop = np.pad(crop, [(0, args.side - side) for side in crop.shape], mode="reflect")
            Image.fromarray(crop).save(args.out / name / f"{k}.png")
    print(f"{len(PHOTO_FILES) * args.per_picture} images of {args.side}x{args.side} in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
