"""Ray glue for circuits over a run: long-lived actors, each holding the base model once.

Units go to the least-loaded actor with at most ``actors.in_flight`` queued
on each, so memory stays bounded however many checkpoints a run has. A dead
actor is restarted by Ray (``max_restarts``) and its queued units retried
(``max_task_retries``); finished circuits are on disk, so nothing is redone.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import ray

from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.cluster.connection import check_shared_outputs
from ftcircuits.config.discovery import CircuitRunSettings
from ftcircuits.console import say
from ftcircuits.study.over_run import (
    CircuitRunner,
    CircuitUnit,
    check_unit_data,
    circuits_dir,
    finished_circuit,
    run_inputs,
    run_units,
    write_summary,
)


class CircuitActor:
    """A ``CircuitRunner`` in a Ray actor: loads the base model in ``__init__``, then serves units."""

    def __init__(
        self, base_model: str, data: Path, settings: DiscoverySettings, out: Path, threads: int = 1
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.runner = CircuitRunner(base_model, data, settings, out)

    def run(self, unit: CircuitUnit) -> dict:
        return self.runner.run(unit)

    def pid(self) -> int:
        return os.getpid()


def start_actors(
    count: int, runner_args: tuple, cpus: float = 1, gpus: float = 0, retries: int = 2
) -> list[ray.actor.ActorHandle]:
    """Start ``count`` circuit actors (each loads the base model once)."""
    remote = ray.remote(CircuitActor).options(  # spread over the nodes: each holds a model
        num_cpus=cpus,
        num_gpus=gpus,
        max_restarts=retries,
        max_task_retries=retries,
        scheduling_strategy="SPREAD",
    )
    return [remote.remote(*runner_args) for _ in range(count)]


ACTOR_START_TIMEOUT_S = 600.0  # the first actor: the model loads, and CPUs may be freed by ending runs
MORE_ACTORS_GRACE_S = 30.0  # then the others, or the pool goes on without them


def started_actors(
    actors: Sequence[ray.actor.ActorHandle],
    timeout: float = ACTOR_START_TIMEOUT_S,
    grace: float = MORE_ACTORS_GRACE_S,
) -> list[ray.actor.ActorHandle]:
    """Return the actors that started (their model loaded), killing those the cluster could not place.

    A unit queued on an actor that never gets its CPUs would wait forever, so the pool runs on the actors
    that start: the first within ``timeout`` (else RuntimeError), the others within ``grace`` after it.
    """
    pings = {actor.pid.remote(): actor for actor in actors}
    first, pending = ray.wait(list(pings), num_returns=1, timeout=timeout)
    if not first:
        for actor in actors:
            ray.kill(actor)
        free = ray.available_resources().get("CPU", 0)
        raise RuntimeError(
            f"no circuit actor started within {timeout:.0f} s ({free} CPUs free on the cluster)"
        )
    more, pending = ray.wait(pending, num_returns=len(pending), timeout=grace) if pending else ([], [])
    for ref in pending:
        ray.kill(pings[ref])
    if pending:
        say(f"{len(actors) - len(pending)} of {len(actors)} circuit actors started (the cluster had no "
            "resources for the others); going on with them")  # fmt: skip
    return [pings[ref] for ref in (*first, *more)]


def run_on_actors(
    actors: Sequence[ray.actor.ActorHandle],
    units: Sequence[CircuitUnit],
    in_flight_per_actor: int = 2,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every unit on the actors, ``in_flight_per_actor`` queued at most; return rows in unit order.

    A unit that still fails after Ray's retries raises here, with the unit named.
    """
    waiting = deque(enumerate(units))
    load = dict.fromkeys(range(len(actors)), 0)
    in_flight: dict[ray.ObjectRef, tuple[int, int]] = {}  # ref -> (unit index, actor index)
    rows: dict[int, dict] = {}
    while waiting or in_flight:
        while waiting and min(load.values()) < in_flight_per_actor:
            actor = min(load, key=load.get)
            index, unit = waiting.popleft()
            in_flight[actors[actor].run.remote(unit)] = (index, actor)
            load[actor] += 1
        (ref,), _ = ray.wait(list(in_flight), num_returns=1)
        index, actor = in_flight.pop(ref)
        load[actor] -= 1
        try:
            rows[index] = ray.get(ref)
        except ray.exceptions.RayError as error:
            raise RuntimeError(f"circuit unit {units[index].key} failed after retries: {error}") from error
        if on_result is not None:
            on_result(rows[index])
    return [rows[i] for i in range(len(units))]


def circuits_over_run(
    run: Path,
    settings: CircuitRunSettings,
    on_result: Callable[[dict], None] | None = None,
    units: Sequence[CircuitUnit] | None = None,
    rebuild: bool = False,
) -> tuple[Path, list[dict], int]:
    """Discover every circuit of a run that is not on disk yet; return (output dir, all rows, computed).

    Validates the run, its dataset and the units (``units``: already made by ``run_units``) before any
    actor starts. A unit on disk is checked first: a damaged one raises DamagedFileError, or with
    ``rebuild`` is redone with the missing ones (``over_run.finished_circuit``).
    """
    inputs = run_inputs(run)
    out = circuits_dir(run, settings, inputs)
    units = run_units(run, settings, inputs) if units is None else units
    done = {unit.key: finished_circuit(out, unit, rebuild) for unit in units}
    todo = [unit for unit in units if done[unit.key] is None]
    for row in done.values():
        if row is not None and on_result is not None:
            on_result(row)
    if todo:
        check_unit_data(inputs.data, todo, settings.discovery.split)
        check_shared_outputs(out)
        out.mkdir(parents=True, exist_ok=True)
        pool = settings.actors
        runner = (inputs.base_model, inputs.data, settings.discovery, out, pool.threads)
        actors = started_actors(
            start_actors(min(pool.count, len(todo)), runner, pool.cpus, pool.gpus, pool.retries)
        )
        try:
            rows = run_on_actors(actors, todo, pool.in_flight, on_result)
            done |= {unit.key: row for unit, row in zip(todo, rows, strict=True)}
        finally:
            for actor in actors:
                ray.kill(actor)
    rows = [done[unit.key] for unit in units]
    write_summary(out, rows)
    return out, rows, len(todo)
