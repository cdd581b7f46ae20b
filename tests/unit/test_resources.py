"""sidecar.resources: checkout files in a checkout, sidecar/_bundled in a wheel; a clear error when
a local input is missing. Pure path logic over temporary directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import ROOT

from sidecar.resources import (
    BUNDLED_PATHS,
    MissingLocalInput,
    check_local_inputs,
    default_flags_file,
    default_model_repository,
    local_input_problems,
    resource_root,
)


def test_in_this_checkout_the_defaults_are_the_checkout_files() -> None:
    assert default_flags_file() == ROOT / "deploy" / "flags" / "digits.json"
    assert default_model_repository() == ROOT / "triton_models"
    assert default_flags_file().is_file()
    assert (default_model_repository() / "digits" / "config.pbtxt").is_file()


def test_everything_the_build_bundles_exists_in_the_checkout() -> None:
    missing = [path for path in BUNDLED_PATHS if not (ROOT / path).exists()]
    assert not missing, f"setup.py would fail to bundle {missing}"


def test_an_installed_package_uses_its_bundle(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "sidecar"
    (package / "_bundled").mkdir(parents=True)
    assert resource_root(package) == package / "_bundled"
    assert default_flags_file(package) == package / "_bundled" / "deploy/flags/digits.json"
    assert default_model_repository(package) == package / "_bundled" / "triton_models"


def test_a_package_without_a_bundle_uses_its_parent_directory(tmp_path: Path) -> None:
    package = tmp_path / "checkout" / "sidecar"
    package.mkdir(parents=True)
    (package / "_bundled").write_text("a file, not the bundle directory")
    assert resource_root(package) == tmp_path / "checkout"


def existing_inputs(tmp_path: Path) -> tuple[Path, Path]:
    flags_file = tmp_path / "flags.json"
    flags_file.write_text("{}")
    models = tmp_path / "models"
    models.mkdir()
    return flags_file, models


def test_existing_inputs_are_no_problem(tmp_path: Path) -> None:
    flags_file, models = existing_inputs(tmp_path)
    check_local_inputs(
        flags_file=flags_file, model_repository=models, redis_url=None, triton_url=None
    )


def test_a_missing_flags_file_names_the_options_that_fix_it(tmp_path: Path) -> None:
    _, models = existing_inputs(tmp_path)
    missing = tmp_path / "nowhere" / "digits.json"
    with pytest.raises(MissingLocalInput) as caught:
        check_local_inputs(
            flags_file=missing, model_repository=models, redis_url=None, triton_url=None
        )
    message = str(caught.value)
    assert str(missing) in message
    assert "--flags-file" in message and "--redis-url" in message
    assert "--model-repository" not in message


def test_a_missing_model_repository_names_the_options_that_fix_it(tmp_path: Path) -> None:
    flags_file, _ = existing_inputs(tmp_path)
    not_a_directory = flags_file  # a file where a directory is needed counts as missing
    (problem,) = local_input_problems(
        flags_file=flags_file, model_repository=not_a_directory, redis_url=None, triton_url=None
    )
    assert str(not_a_directory) in problem
    assert "--model-repository" in problem and "--triton-url" in problem


def test_both_missing_are_reported_together(tmp_path: Path) -> None:
    problems = local_input_problems(
        flags_file=tmp_path / "a.json",
        model_repository=tmp_path / "models",
        redis_url=None,
        triton_url=None,
    )
    assert len(problems) == 2
    with pytest.raises(MissingLocalInput, match=r"--flags-file.*--model-repository"):
        check_local_inputs(
            flags_file=tmp_path / "a.json",
            model_repository=tmp_path / "models",
            redis_url=None,
            triton_url=None,
        )


def test_redis_and_triton_make_the_local_inputs_irrelevant(tmp_path: Path) -> None:
    assert (
        local_input_problems(
            flags_file=tmp_path / "absent.json",
            model_repository=tmp_path / "absent",
            redis_url="redis://127.0.0.1:6379/0",
            triton_url="127.0.0.1:8001",
        )
        == []
    )
