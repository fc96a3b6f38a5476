"""``stpredict convert``: her2st sections, a Space Ranger folder or HEST-1k samples to ``.h5ad``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StPredictError

__all__ = ["add", "run"]


def add(sub) -> None:
    """Add the command's parser to ``sub``."""
    p = sub.add_parser("convert", help="convert ST data (her2st, Space Ranger, HEST-1k) to .h5ad")
    p.add_argument("kind", choices=["her2st", "visium", "hest"], help="input layout")
    p.add_argument("source", type=Path, help="her2st folder, Space Ranger output folder, or HEST folder")
    p.add_argument("--ids", nargs="+", default=None, help="HEST: the sample ids to convert (e.g. TENX95 NCBI785)")
    p.add_argument("--sections", nargs="*", default=None, help="her2st sections (default: all)")
    p.add_argument("--image", type=Path, default=None, help="Visium: the full-resolution H&E image")
    p.add_argument(
        "--genes",
        nargs="*",
        default=None,
        help="only these genes (symbols, any case, or Ensembl IDs); missing ones are reported",
    )
    p.add_argument(
        "--id", default=None, help="Visium: the section's name (default: the sample folder, <sample> for <sample>/outs)"
    )
    p.add_argument(
        "--patient", default=None, help="Visium, HEST: the patient (training splits by it; default: the id, or HEST's)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace .h5ad files that exist already")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the command; returns its exit status."""
    from ..io.st_data import her2st_sections, match_genes, read_her2st_section, read_visium, visium_sample_name
    from ..vocabulary import safe_filename

    if args.kind != "hest" and args.ids:
        print("error: --ids is for hest (her2st takes --sections, visium --id)", file=sys.stderr)
        return 2
    if args.kind == "hest":
        from ..io.hest import read_hest_sample

        if not args.ids:
            print("error: convert hest needs --ids (the HEST sample ids to convert)", file=sys.stderr)
            return 2
        if args.id:
            print("error: --id is for visium (HEST samples keep their ids)", file=sys.stderr)
            return 2
        if not (args.source / "st").is_dir():
            print(f"error: {args.source}: not a HEST folder (no st/ inside)", file=sys.stderr)
            return 2
        names = list(dict.fromkeys(args.ids))
        loaders = [lambda i=i: read_hest_sample(args.source, i, patient=args.patient) for i in names]
    elif args.kind == "her2st":
        if args.id or args.patient:
            print("error: --id and --patient are for visium (her2st names its sections)", file=sys.stderr)
            return 2
        sections = args.sections or her2st_sections(args.source)
        names = list(sections)
        loaders = [lambda s=s: read_her2st_section(args.source, s, with_image=False) for s in sections]
    else:  # visium
        name = (args.id or visium_sample_name(args.source)).strip()
        if not safe_filename(name).strip("._"):
            print(f"error: {args.source}: no usable section name ({name!r}); give one with --id", file=sys.stderr)
            return 2
        names = [name]
        loaders = [lambda: read_visium(args.source, library_id=name, patient=args.patient, fullres_image=args.image)]
    targets = [args.out / f"{safe_filename(n)}.h5ad" for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:  # checked before reading anything
        print(
            f"error: {', '.join(existing[:5])}: exists already; pass --overwrite to replace it, or another --out/--id",
            file=sys.stderr,
        )
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: --out {args.out}: cannot create the folder ({exc.strerror or exc})", file=sys.stderr)
        return 2
    status = 0
    for name, load, path in zip(names, loaders, targets, strict=True):
        try:
            adata = load()
        except StPredictError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.genes:
            idx, found, missing = match_genes(adata.var, args.genes)
            if missing:
                print(
                    f"{name}: {len(missing)} requested genes are not in the data: {', '.join(missing)}", file=sys.stderr
                )
            adata = adata[:, idx].copy()
        from ..io.atomic import atomic_path

        with atomic_path(path) as tmp:
            adata.write_h5ad(tmp, compression="gzip")
        print(f"{name}: {adata.n_obs} spots x {adata.n_vars} genes -> {path}")
    return status
