"""The ``npvi`` command line.

``npvi demo`` trains a Flipout Bayesian MLP on scikit-learn's diabetes data and
prints held-out metrics (see :mod:`npvi.demo`).

>>> build_parser().parse_args(["demo", "--epochs", "5"]).epochs
5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    """argparse type: an integer in ``[0, 2**32)``, as ``jax.random.PRNGKey`` accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``npvi`` command."""
    parser = argparse.ArgumentParser(
        prog="npvi",
        description="Variational Bayesian dense layers (reparameterization, local "
        "reparameterization, Flipout) for NumPyro.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a Flipout Bayesian MLP on the diabetes data and print held-out metrics",
        description="Train a Flipout Bayesian MLP (npvi.DenseFlipout, npvi.MeanFieldGuide, "
        "npvi.ELBO, minibatch SVI with Adam) on scikit-learn's bundled diabetes regression "
        "data with a fixed 80/20 train/held-out split, then print the held-out RMSE and "
        "average predictive negative log-likelihood next to a baseline that predicts the "
        "training mean. Needs scikit-learn (pip install 'npvi[demo]').",
    )
    demo.add_argument("--epochs", type=_positive_int, default=200, help="passes over the training data (default: 200)")
    demo.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of initialisation, minibatch order and sampling; the split is fixed (default: 0)",
    )
    demo.add_argument(
        "--num-samples",
        type=_positive_int,
        default=500,
        help="posterior predictive draws for the held-out metrics (default: 500)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``npvi`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Bad options make argparse print a usage message and raise ``SystemExit(2)``.
    """
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from npvi.demo import run_demo

        try:
            run_demo(epochs=args.epochs, seed=args.seed, num_samples=args.num_samples)
        except ModuleNotFoundError as error:  # scikit-learn is an optional dependency
            print(f"npvi demo: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
