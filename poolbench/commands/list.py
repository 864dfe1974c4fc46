"""``poolbench list``: every pooler with its tiers, parameter formula and devices."""
from __future__ import annotations

from rich.table import Table

from .. import registry
from ._console import console, print_table


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("list", help="list every registered pooler and its tiers")
    parser.add_argument("--device", default="cpu", help="mark tiers unavailable on this device (default: cpu)")
    parser.set_defaults(func=run)


def run(args) -> int:
    table = Table(title=f"poolbench poolers (availability on {args.device})")
    for column in ("pooler", "family", "tiers", "params", "devices", "stochastic"):
        table.add_column(column)
    for name in registry.names():
        by_tier = [registry.get_spec(name, tier) for tier in registry.tiers(name)]
        first = by_tier[0]
        tier_labels = [
            spec.tier if spec.unavailable_reason(args.device) is None else f"[dim]{spec.tier}✗[/dim]" for spec in by_tier
        ]
        devices = sorted({d for spec in by_tier for d in spec.devices})
        table.add_row(name, first.family, ", ".join(tier_labels), first.params, ", ".join(devices),
                      "yes" if first.stochastic else "")
    print_table(table)
    errors = registry.load_plugins()
    for plugin, error in errors.items():
        console(stderr=True).print(f"[yellow]plugin {plugin} failed to load: {error}")
    return 0
