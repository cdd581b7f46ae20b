"""Generate the native API's Python modules from proto/ into sidecar/_proto (run by `make`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "sidecar" / "_proto"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "__init__.py").write_text('"""Generated from proto/ by tools/gen_proto.py."""\n')
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--mypy_out={OUT}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"protoc failed ({rc}) on {protos}", file=sys.stderr)
        return int(rc)
    for pkg in {p.parent for p in OUT.rglob("*_pb2.py")}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text("")
    # protoc emits imports rooted at proto/ ("from trafficsplit.v1 import x_pb2"); generated code
    # lives under sidecar._proto, so make them relative to the generated package.
    for module in OUT.rglob("*_pb2*.py*"):
        text = module.read_text()
        fixed = re.sub(r"^from (trafficsplit\.[\w.]+) import", _relative, text, flags=re.M)
        if fixed != text:
            module.write_text(fixed)
    return 0


def _relative(match: re.Match[str]) -> str:
    return f"from sidecar._proto.{match.group(1)} import"


if __name__ == "__main__":
    raise SystemExit(main())
