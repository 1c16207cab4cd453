"""What `bolt cores` shows: the topology, what each decision rests on, and the planned pools."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bolt_tasks.cpulist import format_cpulist
from bolt_tasks.names import Pool
from bolt_tasks.settings import Settings
from bolt_workers.launcher import plan_pool
from bolt_workers.topology import Topology


def cores_report(settings: Settings, topology: Topology) -> dict[str, Any]:
    """The topology and both pools' plans as plain data (the shape of `bolt cores --json`)."""
    return {
        "topology": topology.as_dict(),
        "pools": [plan_pool(pool, settings, topology).as_dict() for pool in Pool],
    }


def print_cores(report: dict[str, Any], console: Console) -> None:
    """Print a cores report as two tables and the reasons behind them."""
    topology = report["topology"]
    machine = Table(title="cores", show_header=False, title_justify="left")
    machine.add_row("P cores", format_cpulist(topology["p_cores"]) or "(none)")
    machine.add_row("E cores", format_cpulist(topology["e_cores"]) or "(none)")
    machine.add_row("told apart by", topology["source"])
    quota = topology["quota_cpus"]
    machine.add_row("CPU quota", "none" if quota is None else f"{quota:g} CPUs")
    machine.add_row("pinning possible", "yes" if topology["can_pin"] else "no")
    console.print(machine)
    console.print("based on:", highlight=False)
    for reason in topology["reasons"]:
        console.print(f"  - {reason}", markup=False, highlight=False, soft_wrap=True)
    console.print(_pools_table(report["pools"]))
    for plan in report["pools"]:
        for reason in plan["reasons"]:
            console.print(
                f"  {plan['pool'].upper()}: {reason}", markup=False, highlight=False, soft_wrap=True
            )


def _pools_table(plans: list[dict[str, Any]]) -> Table:
    table = Table(title="planned pools", title_justify="left")
    for column in ("pool", "kind", "children", "cores", "pinned", "queues"):
        table.add_column(column)
    for plan in plans:
        scale = plan["autoscale"]
        size = str(plan["children"]) if scale is None else f"{scale[0]}..{scale[1]} (autoscaled)"
        table.add_row(
            plan["pool"].upper(),
            plan["kind"],
            size,
            format_cpulist(plan["cores"]),
            _pinning(plan),
            ",".join(plan["queues"]),
        )
    return table


def _pinning(plan: dict[str, Any]) -> str:
    if not plan["pinned"]:
        return "no"
    return "each child to one core" if plan["pool"] == Pool.P.value else "the process"
