"""``thaldask cluster ...``: inspect cluster configurations."""

from __future__ import annotations

import json

import click

from thaldask._click import handle_errors

__all__ = ["COMMANDS", "cluster", "check"]


@click.group()
def cluster():
    """Cluster configurations (local, address, kubernetes, slurm)."""


def _format_plan(plan: dict, *, full: bool) -> str:
    kind = plan["kind"]
    lines = [f"cluster kind: {kind}"]
    if kind == "local":
        lines.append(
            f"would start a LocalCluster: {plan['n_workers']} worker processes x "
            f"{plan['threads_per_worker']} thread(s), {plan['memory_per_worker']} each "
            f"(machine: {plan['host_cores']} cores, {plan['host_memory']})"
        )
        if plan["resources"]:
            lines.append(f"worker resources: {plan['resources']}")
    elif kind == "address":
        lines.append(f"would connect to the existing scheduler {plan['address']} (starts nothing)")
        if plan["tls"]:
            t = plan["tls"]
            lines.append(
                f"TLS, encryption required: ca_file={t['ca_file']} cert={t['cert']} key={t['key']}"
            )
    elif kind == "kubernetes":
        lines.append(
            f"would create DaskCluster {plan['cluster_name']!r} in namespace "
            f"{plan['namespace']!r}; scheduler {plan['scheduler_address']}, dashboard port "
            f"{plan['dashboard_port']}"
        )
        for name, g in plan["worker_groups"].items():
            res = f", dask resources {g['dask_resources']}" if g["dask_resources"] else ""
            lines.append(
                f"  worker group {name}: {g['replicas']} x {g['image']} "
                f"requests {g['requests']} limits {g['limits']}{res}"
            )
        if plan["autoscaler"]:
            a = plan["autoscaler"]
            lines.append(f"  autoscaler (default group): {a['minimum']}..{a['maximum']} workers")
        lines.append(f"total: {plan['n_workers']} workers, {plan['gpus']} GPU(s)")
        if plan["other_objects"]:
            lines.append(
                "not created by this kind (kubectl apply -k of the overlay creates them): "
                + ", ".join(plan["other_objects"])
            )
        for name, required in plan["secrets"].items():
            lines.append(
                f"Secret {name!r} must exist in the namespace"
                if required
                else f"Secret {name!r} is used when present (optional)"
            )
        if full:
            lines += ["", "# Dask manifests", plan["manifests"].rstrip()]
    elif kind == "slurm":
        lines.append(
            f"would submit {plan['jobs']} SLURM job(s) ({plan['queue'] or 'default partition'}, "
            f"walltime {plan['walltime']}): {plan['n_workers']} workers x "
            f"{plan['threads_per_worker']} thread(s), {plan['memory_per_worker']} each, "
            f"{plan['gpus']} GPU(s)"
        )
        if plan["resources"]:
            lines.append(f"worker resources: {plan['resources']}")
        if full:
            lines += ["", "# job script", plan["job_script"].rstrip()]
    return "\n".join(lines)


@cluster.command("check")
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--brief", is_flag=True, help="Leave out the manifests / job script, only the summary."
)
@handle_errors
def check(config_file, as_json, brief):
    """Show what CONFIG.yaml's cluster section would start, without starting anything."""
    from thaldask.cluster.client import describe_cluster

    plan = describe_cluster(config_file)
    if as_json:
        click.echo(json.dumps(plan, indent=2, default=str))
    else:
        click.echo(_format_plan(plan, full=not brief))


COMMANDS = [cluster]
