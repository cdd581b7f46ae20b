"""Generate the native API's Python modules from proto/ into sidecar/_proto.

The one implementation of code generation. Two callers:

* the build (``setup.py``'s ``build_py``): ``pip install .``, ``pip wheel .`` write into the wheel's
  build directory, ``pip install -e .`` (``make deps``) writes into the checkout's sidecar/_proto;
* ``make proto`` / ``python tools/gen_proto.py``: regenerate the checkout's copy after editing a
  ``.proto`` without reinstalling.

Needs grpcio-tools and mypy-protobuf (``[build-system] requires`` and the dev extra); it never
imports the project.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "sidecar" / "_proto"
PACKAGE = "sidecar._proto"


class GenerationError(RuntimeError):
    """protoc or one of its plugins failed, or a generator is missing; the message says which."""


def generate(out: Path = OUT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2_grpc.py`` and ``*_pb2.pyi`` for every proto under ``proto_root``.

    ``out`` is replaced whole (it holds generated code only), so a deleted ``.proto`` leaves no stale
    module behind. Returns the files written.
    """
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    if not protos:
        raise GenerationError(f"no .proto files under {proto_root}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "__init__.py").write_text('"""Generated from proto/ by tools/gen_proto.py."""\n')
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={_mypy_plugin()}",
        f"--mypy_out={out}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise GenerationError(f"protoc failed ({rc}) on {protos}")
    for module in out.rglob("*_pb2.py"):  # regular packages all the way down, not namespaces
        package = module.parent
        while package != out:
            (package / "__init__.py").touch(exist_ok=True)
            package = package.parent
    # protoc emits imports rooted at proto/ ("from trafficsplit.v1 import x_pb2"); generated code
    # lives under sidecar._proto, so root them there.
    for module in out.rglob("*_pb2*.py*"):
        text = module.read_text()
        fixed = re.sub(r"^from (trafficsplit\.[\w.]+) import", _rooted, text, flags=re.M)
        if fixed != text:
            module.write_text(fixed)
    return sorted(p for p in out.rglob("*") if p.is_file())


def _mypy_plugin() -> str:
    """mypy-protobuf's ``protoc-gen-mypy``: beside this interpreter (a virtualenv), else on PATH.

    PATH covers pip's isolated build environments, whose scripts directory pip puts first on PATH
    while the build runs.
    """
    beside = Path(sys.executable).parent / "protoc-gen-mypy"
    if beside.is_file():
        return str(beside)
    found = shutil.which("protoc-gen-mypy")
    if found is None:
        raise GenerationError(
            "protoc-gen-mypy not found: install mypy-protobuf (it is in the dev extra and in "
            "[build-system] requires)"
        )
    return found


def _rooted(match: re.Match[str]) -> str:
    return f"from {PACKAGE}.{match.group(1)} import"


def main() -> int:
    try:
        written = generate()
    except GenerationError as exc:
        print(f"gen_proto: {exc}", file=sys.stderr)
        return 1
    print(f"gen_proto: {len(written)} files in {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
