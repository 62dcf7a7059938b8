"""dmask verify: check that a copied store is whole (every chunk there and readable)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = sub.add_parser(
        "verify",
        help="check a dataset or model store: every chunk present and readable",
    )
    verify.add_argument("store", nargs="+", help="dataset or model stores")


def run(args: argparse.Namespace) -> None:
    from dmask.io.integrity import verify

    for path in args.store:
        print(verify(path).summary())
