"""``python -m cmrlib``: take synthetic data away from a finished run.

    python -m cmrlib generate RUN --arm fm --n 500 [--seed S]
    python -m cmrlib export RUN --arm ddpm --format nifti|nnunet|npz --out DIR [--samples NAME] [--override-privacy-gate REASON]

RUN is a run folder (holding params.yaml) or a run name under runs/. The study itself runs with ``python -m cmrlib.study``.
"""

from __future__ import annotations

import argparse
import sys

from . import export, registry
from .training import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmrlib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="new image/mask pairs from a trained run (stage-1 masks, then the arm)")
    gen.add_argument("run")
    gen.add_argument("--arm", required=True, choices=registry.names())
    gen.add_argument("--n", type=int, required=True)
    gen.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    exp = sub.add_parser("export", help="write a sample set with its data card, behind the privacy gate")
    exp.add_argument("run")
    exp.add_argument("--arm", required=True, choices=registry.names())
    exp.add_argument("--format", required=True, choices=export.FORMATS)
    exp.add_argument("--out", required=True)
    exp.add_argument("--samples", default="synthetic", help="which set of samples/<arm>/ (default: synthetic; or generated_n<N>_seed<S>)")
    exp.add_argument("--override-privacy-gate", metavar="REASON", default=None,
                     help="export although the arm fails the privacy gate; the reason is written into the data card")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            if args.n < 1:
                parser.error("--n must be at least 1")
            path = export.generate(args.run, args.arm, args.n, args.seed)
        else:
            path = export.export(args.run, args.arm, args.format, args.out, args.samples, args.override_privacy_gate)
    except (export.PrivacyGateError, CheckpointError, OSError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: nothing was exported (an export is moved into place only once complete)", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
