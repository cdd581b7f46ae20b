"""``flagctl``: one command line assembled from each capability's own click group.

``flags.cli`` owns the flag verbs (apply, ramp, rollback, ...); each capability package beside it
(``rollout``, ``experiments``, ...) owns its verbs and adds them here with a ``register(cli)``
function, so no module grows into a 1,000-line CLI and ``flags`` never imports the packages
that build on it.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from flags import cli as flags_cli

Register = Callable[[click.Group], None]


def _registrations() -> list[Register]:
    """Each capability's ``register``; imported here, at start, not at import time."""
    from experiments import cli as experiments_cli

    registrations: list[Register] = [experiments_cli.register]
    return registrations


def main() -> None:
    for register in _registrations():
        register(flags_cli.cli)
    flags_cli.main()


if __name__ == "__main__":
    main()
