"""dmask verify: check that a copied store is whole (every chunk there and readable)."""

from __future__ import annotations

import argparse

from dmask.cli.common import add_command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = add_command(
        sub,
        "verify",
        "check stores: every chunk present and readable",
        ["dmask verify model.zarr faces.zarr    # after copying them elsewhere"],
        description="Check dataset, model or statistics stores: every chunk "
        "listed in the store's manifest is present, of its size, and decodes.",
    )
    verify.add_argument("store", nargs="+", help="dataset, model or statistics stores")


def run(args: argparse.Namespace) -> None:
    from dmask.io.integrity import verify

    for path in args.store:
        print(verify(path).summary())
