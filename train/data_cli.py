"""`facemtl data`: write an MTFL split as a manifest (`convert`), check a source (`check`).

Registered through the `facemtl.commands` entry points; no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from facemtl.runtime.cli import CommandError


def register_data(sub) -> None:
    p = sub.add_parser("data", help="dataset manifests: convert an MTFL split, check a source",
                       description="Data sources for `facemtl train` and `evaluate` (docs/data.md).")
    verbs = p.add_subparsers(dest="verb", metavar="{convert,check}")
    verbs.required = True
    c = verbs.add_parser("convert", help="write an MTFL split as a JSON-lines manifest")
    c.add_argument("mtfl", type=Path, help="the MTFL folder (training.txt, testing.txt)")
    c.add_argument("--split", default="training", choices=["training", "testing"])
    c.add_argument("--out", required=True, type=Path, help="the manifest to write (.jsonl); image paths are "
                                                            "written relative to its folder")
    c.set_defaults(func=_run_convert)
    k = verbs.add_parser("check", help="read a source and every image; list every bad face (file and line)")
    k.add_argument("source", type=Path, help="an MTFL folder, a manifest or a folder per class")
    k.add_argument("--split", default="training", choices=["training", "testing"], help="MTFL file to read")
    k.add_argument("--model", type=Path, help="model.keras or spec.json whose heads the labels must fit "
                                              "(default: the MTFL heads)")
    k.add_argument("--detector", default="yunet", help="frames faces without landmarks (needs --model's calibration)")
    k.add_argument("--skip-bad", action="store_true", help="count the bad faces instead of failing")
    k.set_defaults(func=_run_check)


def _run_convert(args) -> int:
    from facemtl.runtime.errors import FacemtlError
    from facemtl.train.mtfl import load_split
    from facemtl.train.sources import mtfl_to_manifest

    try:
        n = mtfl_to_manifest(load_split(args.mtfl, args.split), args.out)
    except FacemtlError as e:
        raise CommandError(str(e)) from e
    print(f"wrote {n} faces to {args.out}")
    return 0


def _spec_for(path: Path | None):
    from facemtl.runtime.spec import ModelSpec, default_spec

    if path is None:
        return default_spec()
    if path.suffix == ".json":
        return ModelSpec.load(path)
    spec_file = path.with_name("spec.json")
    if spec_file.exists():
        return ModelSpec.load(spec_file)
    raise CommandError(f"{path}: no spec.json beside it; pass the spec.json itself")


def _run_check(args) -> int:
    from facemtl.runtime.errors import FacemtlError
    from facemtl.train.sources import load_faces, raise_problems, read_source

    try:
        spec = _spec_for(args.model)
        faces, problems = read_source(args.source, spec, args.split)
        loaded = load_faces(faces, spec, args.detector)
        problems = problems + loaded.problems
        raise_problems(problems, str(args.source), args.skip_bad)
    except FacemtlError as e:
        raise CommandError(str(e)) from e
    counts = ", ".join(f"{k} {v}" for k, v in loaded.faces.label_counts().items() if v)
    print(f"{args.source}: {len(loaded)} usable faces ({counts}); {len(problems)} bad")
    return 0
