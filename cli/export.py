"""`clusterplan export PLAN --to torchtitan|torchtitan-py|megatron|megatron-bridge|deepspeed`: a plan as a runnable
launch config."""

from __future__ import annotations

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import output_path, stack_option
from clusterplan.fileio import write_atomic
from clusterplan.frameworks import EXPORTERS, export_plan
from clusterplan.frameworks.common import canonical
from clusterplan.frameworks.readback import named_recipe, price_back
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.training.layout import stack_problems
from clusterplan.models.training.planfile import PlanFile, read_plan
from clusterplan.models.training.rules import RuleCode


def _value(value: object) -> str:
    """A layout value as --layout takes it (booleans 0/1, unset as none)."""
    return "none" if value is None else str(int(value)) if isinstance(value, bool) else str(value)


STACK_OF_TARGET = {"megatron": "megatron-core", "megatron-bridge": "megatron-core", "torchtitan": "torchtitan",
                   "torchtitan-py": "torchtitan", "deepspeed": "deepspeed"}
"""The execution stack a target's config runs on, unless --stack says otherwise."""


@click.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--to", "target", required=True, type=click.Choice(list(EXPORTERS)),
              help="Framework: torchtitan (v0.2 TOML), torchtitan-py (main's Python recipe), megatron (Megatron-LM "
                   "pretrain_gpt.py), megatron-bridge (recipe overrides for Megatron-Bridge's run_recipe.py), "
                   "deepspeed.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, callback=output_path,
              help="Write the config to this file (atomically) instead of stdout.")
@stack_option("the target's: megatron-core for megatron*, torchtitan for torchtitan*, deepspeed for deepspeed")
def export(plan_path: str, target: str, out_path: str | None, stack_name: str | None) -> None:
    """Write a plan file as a launch config with the command that starts it.

    \b
    Example: clusterplan export plan.yaml --to megatron --out train.sh

    The config goes to stdout (or --out); the launch line and any notes go to stderr.
    Exits 2 when the plan cannot be read or the framework cannot run it (the line says why).
    """
    plan = read_plan(plan_path)
    # the plan's own stack where the target runs it (a torchtitan plan's compile), else the target's
    default = plan.stack if plan.stack and STACK_OF_TARGET.get(target, "") in plan.stack else STACK_OF_TARGET[target]
    stack = get_stack(stack_name or default)
    # the recipe the plan was priced with, named: "" means the plan's stack's first, not the target's
    # what a torchtitan config compiles follows a stack the user named or the plan was priced on, not the default
    chosen = stack.name if stack_name or stack.name == plan.stack else None
    result = export_plan(target, plan.model, plan.cluster, named_recipe(plan.layout, plan.stack), plan.stages,
                         stack=chosen)
    text, launch = result.text, result.launch
    if out_path and result.filename in launch.split():
        # the launch line names the file it was written to (torchtitan-py's launch names a module, not the file)
        named = " ".join(out_path if token == result.filename else token for token in launch.split())
        text, launch = text.replace(launch, named), named
    if out_path:
        write_atomic(out_path, text)
        console.info(f"wrote {out_path}")
    else:
        click.echo(text, nl=False)
    # Each difference once: the exporter's note says what the framework runs instead of a field; the stack's rule on
    # the same field (Rule.field) would say it again, so its re-plan hint goes on the note and the rule is dropped.
    replan = f"(re-plan with `clusterplan plan --stack {stack.name}` to search only what it runs)"
    problems = stack_problems(plan.layout, stack)
    stack_fields = {p.field for p in problems}
    for note in result.noted:
        console.warn(f"{note.text} {replan}" if note.field in stack_fields else note.text)
    for problem in problems:
        if problem.field not in result.noted_fields:
            console.warn(f"{problem} {replan}")
    if plan.layout.moe_imbalance != 1.0:  # a property of the router, not a setting any framework config carries
        console.warn(f"moe_imbalance {plan.layout.moe_imbalance:g}: the plan priced its router's imbalance, which no "
                     f"{target} setting carries; `check` of the exported file prices it force-balanced (faster)")
    if not plan.stages:
        said = set(result.noted_fields) | stack_fields | {"moe_imbalance"}
        _warn_on_read_back(plan, target, text, replan, said)
    console.info(f"launch: {launch}")


def _warn_on_read_back(plan: PlanFile, target: str, text: str, replan: str, said: set[str]) -> None:
    """Renders frameworks.readback.price_back: the exported config, as `check` reads it and the stack that runs it
    prices it: every layout key it runs differently from the plan that no note above named, and its memory."""
    back = price_back(plan.model, plan.cluster, target, text)
    if back.unread:
        console.warn(f"the exported config was not priced back: {back.unread}")
        return
    # one spelling each (a per-rank list first/last can say is written as first/last: frameworks.common.canonical)
    planned, runs = (canonical(plan.model, named_recipe(x, stack)).to_dict()
                     for x, stack in ((plan.layout, plan.stack), (back.estimate.layout, back.stack)))
    for key in sorted(set(planned) | set(runs)):
        if key == "cp_a2a" and "cp_kind" in said:  # the all-to-all group goes with the exchange a note named
            continue
        if key not in said and planned.get(key) != runs.get(key):
            console.warn(f"the exported config runs {key}={_value(runs.get(key))} where the plan has "
                         f"{key}={_value(planned.get(key))} ({target} has no setting for the plan's; `check` prices "
                         "what runs)" + (f" {replan}" if plan.stack != back.stack else ""))
    for rule in back.estimate.reasons:  # what the config runs that the stack or these GPUs cannot
        if rule.code in (RuleCode.PRECISION, RuleCode.FP8_PARAMS, RuleCode.CP_WINDOW):
            console.warn(f"the exported config as {back.stack} runs it: {rule}")
    oom = [r for r in back.estimate.reasons if r.code == RuleCode.OUT_OF_MEMORY]
    if oom:
        made_for = f" (planned for {plan.stack})" if plan.stack and plan.stack != back.stack else ""
        console.warn(f"the exported config as {back.stack} runs it{made_for}: {oom[0]} {replan}")
