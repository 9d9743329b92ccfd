"""The ``npvi`` command line.

``npvi demo`` trains a Bayesian MLP on scikit-learn's bundled digits or diabetes
data, prints held-out metrics and writes result files (see :mod:`npvi.demo`);
``npvi demo --model cnn`` trains a Bayesian CNN on the digit images and reports the
MLP next to it.

Most of a small job's first run is XLA compiling its programs. ``npvi demo`` turns on
JAX's persistent compilation cache with :func:`npvi.enable_compilation_cache`, so a second
run loads them from disk: in ``$NPVI_CACHE_DIR`` if it is set, else in the user's cache
directory (:func:`npvi.compilation_cache.default_cache_dir`); ``--no-cache`` leaves it off.
In a script of your own the same is one line, ``npvi.enable_compilation_cache()``.

>>> build_parser().parse_args(["demo", "--epochs", "5"]).epochs
5
>>> build_parser().parse_args(["demo"]).model
'mlp'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Re-exported: cli's names before npvi.compilation_cache existed.
from npvi.compilation_cache import CACHE_ENV, default_cache_dir, enable_compilation_cache

__all__ = ["CACHE_ENV", "build_parser", "default_cache_dir", "enable_compilation_cache", "main"]

# Kept here, not imported from npvi.demo, so that `npvi --help` does not import the demo.
DATASETS = ("digits", "diabetes")
ESTIMATOR_CHOICES = ("flipout", "lrt", "reparam")
MODEL_CHOICES = ("mlp", "cnn")


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
        description="Variational Bayesian dense and convolutional layers (reparameterization, local "
        "reparameterization, Flipout) for NumPyro.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a Bayesian MLP or CNN on bundled data, print held-out metrics and write result files",
        description="Train a Bayesian MLP of npvi layers (npvi.MeanFieldGuide, npvi.ELBO, npvi.fit with Adam) "
        "on scikit-learn's bundled digits (classification, default) or diabetes (regression) data with a "
        "fixed 80/20 train/held-out split; print held-out accuracy, NLL and ECE (digits) or RMSE and NLL "
        "(diabetes) next to a baseline that ignores the inputs; and write metrics.json, inference_data.nc, "
        "elbo.png and reliability.png or predictive.png to --out. With --model cnn, train a Bayesian CNN "
        "(npvi.Conv2D* layers) on the 8x8 digit images instead, and the MLP with it for comparison. "
        "Needs scikit-learn (pip install 'npvi[demo]').",
    )
    demo.add_argument("--dataset", choices=DATASETS, default="digits", help="bundled dataset (default: digits)")
    demo.add_argument(
        "--model",
        choices=MODEL_CHOICES,
        default="mlp",
        help="network: mlp (default), or cnn (digits only: two 3x3 convolutions with max-pooling and a dense "
        "layer; the same run trains the MLP too and prints both)",
    )
    demo.add_argument(
        "--estimator",
        choices=ESTIMATOR_CHOICES,
        default="flipout",
        help="gradient estimator of the layers, dense and convolutional (default: flipout)",
    )
    demo.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="passes over the training data, for every network trained (default: 60 MLP and 30 CNN on digits, "
        "200 diabetes)",
    )
    demo.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of initialisation, minibatch order and sampling; the split is fixed (default: 0)",
    )
    demo.add_argument(
        "--num-samples",
        type=_positive_int,
        default=None,
        help="posterior predictive draws for the held-out metrics (default: 300 digits, 500 diabetes)",
    )
    demo.add_argument(
        "--out", default="npvi-demo", metavar="DIR", help="directory for the result files (default: npvi-demo/)"
    )
    demo.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    demo.add_argument(
        "--no-cache",
        action="store_true",
        help=f"do not use JAX's persistent compilation cache (default: on, in ${CACHE_ENV} or the user's "
        "cache directory, so that later runs skip most compilation)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``npvi`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Bad options make argparse print a usage message and raise ``SystemExit(2)``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.model == "cnn" and args.dataset != "digits":
            parser.error(f"--model cnn convolves images: it needs --dataset digits, not {args.dataset!r}")
        if not args.no_cache:
            enable_compilation_cache()
        from npvi.demo import run_demo

        try:
            run_demo(
                args.dataset,
                args.estimator,
                args.epochs,
                args.seed,
                model=args.model,
                num_samples=args.num_samples,
                out=args.out,
                progress_bar=not args.no_progress,
            )
        except ModuleNotFoundError as error:  # scikit-learn is an optional dependency
            print(f"npvi demo: {error}", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"npvi demo: cannot write the results to {args.out!r}: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
