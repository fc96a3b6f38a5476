"""Build sample_data/ from her2st section C2 (run once; the output is committed).

Writes a tiled, pyramidal, JPEG-compressed TIFF at the true 0.688 µm/px (levels as
successive top-level pages so that OpenSlide sees all of them) and the measured spots
as .h5ad with centres in that TIFF's level-0 pixels.

Usage: python scripts/make_sample_data.py [--her2st ../shared/data/her2st] [--out sample_data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SECTION = "C2"
# Crop around the tissue with a margin of bare glass (full-res pixels: x0, y0, x1, y1).
CROP = (1200, 2600, 8600, 8900)
TILE = 256
QUALITY = 80


def write_pyramid_tiff(image: np.ndarray, path: Path, mpp: float) -> list[tuple[int, int]]:
    import tifffile
    from PIL import Image

    levels = [image]
    while max(levels[-1].shape[:2]) > 2 * TILE:
        prev = Image.fromarray(levels[-1])
        levels.append(np.asarray(prev.reduce(2)))
    res = 1e4 / mpp  # pixels per centimetre
    tmp = path.with_suffix(".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level,
                photometric="rgb",  # tifffile would store RGB samples as YCbCr otherwise
                compression="jpeg",
                compressionargs={"level": QUALITY},
                tile=(TILE, TILE),
                subfiletype=0 if i == 0 else 1,
                resolution=(res / 2**i, res / 2**i),
                resolutionunit="CENTIMETER",
                description=(
                    None if i else "her2st section C2 H&E (Andersson et al., Nat Commun 12, 6012, 2021; Zenodo 3957257)"
                ),
                metadata=None,
            )
    tmp.replace(path)
    return [(lv.shape[1], lv.shape[0]) for lv in levels]


def main() -> None:
    from PIL import Image

    from napari_stpredict.io.st_data import HER2ST_MPP, read_her2st_section

    parser = argparse.ArgumentParser()
    parser.add_argument("--her2st", type=Path, default=Path("../shared/data/her2st"))
    parser.add_argument("--out", type=Path, default=Path("sample_data"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    adata = read_her2st_section(args.her2st, SECTION)
    image_path = Path(adata.uns["spatial"][SECTION]["metadata"]["image_path"])
    Image.MAX_IMAGE_PIXELS = None
    full = np.asarray(Image.open(image_path).convert("RGB"))
    x0, y0, x1, y1 = CROP
    crop = np.ascontiguousarray(full[y0:y1, x0:x1])
    dims = write_pyramid_tiff(crop, args.out / "her2st_C2.tiff", HER2ST_MPP)
    print("levels", dims)

    adata.obsm["spatial"] = adata.obsm["spatial"] - np.array([x0, y0], dtype=float)
    lib = adata.uns["spatial"].pop(SECTION)
    lib["metadata"] = {
        "source": lib["metadata"]["source"],
        "section": SECTION,
        "image": "her2st_C2.tiff",
        "crop_of_original_fullres": list(CROP),
        "coordinates": "obsm['spatial'] is (x, y) in level-0 pixels of her2st_C2.tiff",
    }
    adata.uns["spatial"] = {SECTION: lib}
    adata.write_h5ad(args.out / "her2st_C2_spots.h5ad", compression="gzip")
    print(adata)


if __name__ == "__main__":
    main()
