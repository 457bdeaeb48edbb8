"""``audit cache purge [--config RUN.toml | --cache-dir DIR]``: remove every series the PACS cache holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.errors import ConfigError
from audit.pacs import SeriesCache, default_cache_dir, pacs_section
from audit.toml import Table, read_toml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="manage the on-disk cache of series retrieved from a PACS")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    purge = actions.add_parser("purge", help="remove every cached series (patient data) and leftover temporaries")
    where = purge.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="an audit run config: purge its [pacs] cache_dir")
    where.add_argument("--cache-dir", type=Path, help="the cache folder (default: the [pacs] default, "
                                                       "$XDG_CACHE_HOME/ct-robustness-audit/pacs)")
    purge.set_defaults(func=run_purge)


def cache_root(args: argparse.Namespace) -> Path:
    """The folder to purge: --cache-dir, the config's [pacs] cache_dir, or the default."""
    if args.cache_dir is not None:
        return args.cache_dir
    if args.config is not None:
        raw = read_toml(args.config)
        if "pacs" not in raw:
            raise ConfigError(f"{args.config}: no [pacs] table; give --cache-dir instead")
        return pacs_section(Table.of(raw, "pacs", args.config.resolve().parent)).cache_root
    return default_cache_dir()


def run_purge(args: argparse.Namespace) -> int:
    root = cache_root(args)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: not a folder; expected the PACS cache folder")
    series, freed = SeriesCache(root, 0).purge()
    print(f"audit cache purge: removed {series} series ({freed / 1e6:.1f} MB) from {root}")
    return 0
