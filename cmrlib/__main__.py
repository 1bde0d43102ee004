"""``python -m cmrlib``: take synthetic data and models away from a finished run.

    python -m cmrlib generate RUN --arm fm --n 500 [--seed S]                       # into the run, for `export`
    python -m cmrlib generate RUN --arm fm (--n N | --masks DIR) --out OUT [--format F] [--override-privacy-gate REASON]
    python -m cmrlib generate --model runs/default/models/fm (--n N | --masks DIR) --out OUT [--format F]
    python -m cmrlib export RUN --arm ddpm --format nifti|nnunet|npz --out DIR [--samples NAME] [--real SPLIT]
                                [--override-privacy-gate REASON]

RUN is a run folder (holding params.yaml) or a run name under runs/; --model a standalone model folder (a run's
models/<arm>/, copied anywhere). --masks DIR: your label maps (NIfTI, PNG or NPZ; --label-map VALUE:NAME,... for
another numbering than 1 LV, 2 MYO, 3 RV; --pixel-mm for maps without a pixel size). The study itself runs with
``python -m cmrlib.study``.
"""

from __future__ import annotations

import argparse
import sys

from . import export, registry
from .data import user_masks
from .data.records import BadCaseError
from .standalone import ModelFolderError
from .training import CheckpointError


def _gate_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--override-privacy-gate", metavar="REASON", default=None,
                        help="write the set although the arm fails the privacy gate; the reason goes into the data card")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmrlib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="new image/mask pairs from a trained run or a standalone model folder")
    gen.add_argument("run", nargs="?", default=None, help="the run (with --arm); or give --model instead")
    gen.add_argument("--arm", choices=registry.names())
    gen.add_argument("--model", metavar="DIR", help="a standalone model folder (a run's models/<arm>/)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--n", type=int, help="pairs on the model's own stage-1 masks")
    source.add_argument("--masks", metavar="DIR", help="a folder of your label maps (.nii.gz, .nii, .png, .npz)")
    gen.add_argument("--out", metavar="DIR", help="write the pairs and a data card here (new or empty folder); without "
                     "it, --n pairs are saved in the run's samples/<arm>/ for `export`")
    gen.add_argument("--format", default="nifti", choices=export.FORMATS)
    gen.add_argument("--seed", type=int, default=None, help="default: the training run's seed")
    gen.add_argument("--label-map", metavar="VALUE:NAME,...", default=None, help="your maps' numbering, e.g. 500:LV,200:MYO,600:RV")
    gen.add_argument("--pixel-mm", type=float, default=None, help="the pixel size of maps that store none (PNG, NPZ)")
    _gate_option(gen)
    exp = sub.add_parser("export", help="write a run's sample set with its data card, behind the privacy gate")
    exp.add_argument("run")
    exp.add_argument("--arm", required=True, choices=registry.names())
    exp.add_argument("--format", required=True, choices=export.FORMATS)
    exp.add_argument("--out", required=True)
    exp.add_argument("--samples", default="synthetic", help="which set of samples/<arm>/ (default: synthetic; or generated_n<N>_seed<S>)")
    exp.add_argument("--real", metavar="SPLIT", default=None, help="also the run's real slices of this split (train, "
                     "val, test, ...): a real + synthetic data set")
    _gate_option(exp)
    args = parser.parse_args(argv)
    if args.command == "generate":
        if (args.run is None) == (args.model is None):
            parser.error("give a RUN (with --arm) or --model DIR")
        if args.run is not None and args.arm is None:
            parser.error("--arm is required with a RUN")
        if args.n is not None and args.n < 1:
            parser.error("--n must be at least 1")
        if args.out is None and (args.model is not None or args.masks is not None):
            parser.error("--out DIR is required with --model or --masks")
    try:
        if args.command == "export":
            path = export.export(args.run, args.arm, args.format, args.out, args.samples, args.override_privacy_gate, args.real)
        elif args.out is None:
            path = export.generate(args.run, args.arm, args.n, args.seed)
        else:
            label_map = user_masks.parse_label_map(args.label_map) if args.label_map else None
            path = export.generate_to(args.out, args.format, run=args.run, arm=args.arm if args.run else None, model=args.model,
                                      n=args.n, masks=args.masks, seed=args.seed, label_map=label_map, pixel_mm=args.pixel_mm,
                                      override=args.override_privacy_gate)
    except (export.PrivacyGateError, CheckpointError, ModelFolderError, BadCaseError, OSError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: nothing was written (an export is moved into place only once complete)", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
