"""The dev ground as data: a table of components walked by one supervisor.

A component is a row: its name, what it depends on, the process it runs (or none, for a one-time
step such as registering objects or creating a network namespace), how to tell it is ready, what to do
once after its first start, and what `down` must undo besides stopping its process. The supervisor
starts rows in dependency order; on a ground where some processes died it starts only those again,
keeping the data of the others (etcd's above all). `down` walks the table in reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

Action = Callable[[], None]


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    depends: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    """The process to keep running; empty for a one-time step."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    ports: tuple[int, ...] = ()
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 60
    prepare: Action | None = None
    """Before each launch of the process, or as the step itself: idempotent (files, directories)."""
    once: Action | None = None
    """After the first start only: objects it keeps in the clusters' etcd, which a restart keeps too."""
    undo: Action | None = None
    """What `down` undoes beyond stopping the process (mounts, namespaces, addresses, cgroups)."""


class CycleError(ValueError):
    pass


def ordered(components: Iterable[Component]) -> list[Component]:
    """Each row after what it depends on; rows free to start keep the table's order."""
    waiting = list(components)
    known = {c.name for c in waiting}
    for c in waiting:
        missing = [d for d in c.depends if d not in known]
        if missing:
            raise ValueError(f"component {c.name} depends on unknown {', '.join(missing)}")
    done: list[Component] = []
    placed: set[str] = set()
    while waiting:
        free = next((c for c in waiting if placed.issuperset(c.depends)), None)
        if free is None:
            raise CycleError(f"components depend on each other in a cycle through {waiting[0].name}")
        waiting.remove(free)
        placed.add(free.name)
        done.append(free)
    return done
