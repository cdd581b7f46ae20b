"""Where the sidecar's built-in defaults live: the demo flag and the ``digits`` model repository.

From a checkout (``make deps``, ``pip install -e .``) they are the checkout's own files,
``deploy/flags/digits.json`` and ``triton_models/``. An installed wheel has no checkout around it,
so the build (``setup.py``) copies the same files, at the same relative paths, into the package as
``sidecar/_bundled/``; that directory exists only in builds, never in a checkout, which is how the
two cases are told apart.

:func:`check_local_inputs` is the start-up check for the two paths: a sidecar without Redis needs
the flags file, one without Triton needs the model repository, and the message says what to pass
instead. Pure path logic: nothing here reads settings or the environment.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLE_DIRNAME = "_bundled"

# Relative to the checkout root, and identically to sidecar/_bundled/ in a wheel. setup.py reads
# this tuple (it is what the build copies), so the two lists can never disagree.
FLAGS_FILE = "deploy/flags/digits.json"
MODEL_REPOSITORY = "triton_models"
BUNDLED_PATHS: tuple[str, ...] = (FLAGS_FILE, MODEL_REPOSITORY)


class MissingLocalInput(ValueError):
    """A flags file or model repository the sidecar needs is not there; the message says what to pass."""


def resource_root(package_dir: Path = PACKAGE_DIR) -> Path:
    """``sidecar/_bundled`` in an installed wheel, else the checkout root (the package's parent)."""
    bundled = package_dir / BUNDLE_DIRNAME
    return bundled if bundled.is_dir() else package_dir.parent


def default_flags_file(package_dir: Path = PACKAGE_DIR) -> Path:
    """The bundled demo flag (``digits``: control = v1, candidate = v2 for 20 % of users)."""
    return resource_root(package_dir) / FLAGS_FILE


def default_model_repository(package_dir: Path = PACKAGE_DIR) -> Path:
    """The bundled model repository (Triton layout) that the embedded onnxruntime engine serves."""
    return resource_root(package_dir) / MODEL_REPOSITORY


def local_input_problems(
    *,
    flags_file: Path,
    model_repository: Path,
    redis_url: str | None,
    triton_url: str | None,
) -> list[str]:
    """What is missing among the local inputs this configuration uses, one sentence each.

    The flags file matters only without Redis, the model repository only without Triton.
    """
    problems: list[str] = []
    if not redis_url and not flags_file.is_file():
        problems.append(
            f"flags file {flags_file} does not exist: pass --flags-file PATH "
            "(env TRAFFICSPLIT_FLAGS_FILE) with a flag document, or --redis-url URL "
            "(env TRAFFICSPLIT_REDIS_URL) to read flags from Redis"
        )
    if not triton_url and not model_repository.is_dir():
        problems.append(
            f"model repository {model_repository} is not a directory: pass --model-repository DIR "
            "(env TRAFFICSPLIT_MODEL_REPOSITORY) with a Triton-layout model repository, or "
            "--triton-url HOST:PORT (env TRAFFICSPLIT_TRITON_URL) to use Triton"
        )
    return problems


def check_local_inputs(
    *,
    flags_file: Path,
    model_repository: Path,
    redis_url: str | None,
    triton_url: str | None,
) -> None:
    """Raise :class:`MissingLocalInput` naming every missing input and the option that replaces it.

    Call it at start-up, before building sources and backends: a missing flags file would otherwise
    only be logged as an unreachable source while the sidecar serves nothing.
    """
    problems = local_input_problems(
        flags_file=flags_file,
        model_repository=model_repository,
        redis_url=redis_url,
        triton_url=triton_url,
    )
    if problems:
        raise MissingLocalInput("; ".join(problems))
