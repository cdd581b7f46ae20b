"""Generate the native API's Python modules from proto/ into sidecar/_proto (run by `make`)."""

from __future__ import annotations

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
        f"--mypy_out={OUT}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"protoc failed ({rc}) on {protos}", file=sys.stderr)
        return int(rc)
    # protoc emits absolute imports ("from trafficsplit.v1 import ..."); make the package importable.
    for pkg in {p.parent for p in OUT.rglob("*_pb2.py")}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text("")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
