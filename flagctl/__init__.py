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
    from experiments import cli as experiments_cli  # flagctl track, flagctl experiments ...
    from experiments import report_cli  # flagctl report FLAG
    from rollout import golden_cli  # the golden-set gate: flagctl golden FLAG
    from rollout.cli import register as rollout_register  # rollout: flagctl rollout ...

    registrations: list[Register] = [
        rollout_register,
        golden_cli.register,
        experiments_cli.register,
        report_cli.register,
    ]
    return registrations


def main() -> None:
    for register in _registrations():
        register(flags_cli.cli)
    flags_cli.main()


if __name__ == "__main__":
    main()
