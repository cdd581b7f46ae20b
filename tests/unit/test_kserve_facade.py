"""The KServe facade turns malformed bytes into INVALID_ARGUMENT, whatever the backend path."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from support import ROOT, digits_flag

from flags.store import FlagStore
from sidecar.backends.onnx_embedded import OnnxEmbeddedBackend
from sidecar.kserve_facade import KServeFacade
from sidecar.routing import Router
from sidecar.subjects import SubjectRules


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-user-id", "u1"),)

    def time_remaining(self) -> float:
        return 5.0

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\x0a\x02\xff\xfe", "malformed ModelInferRequest"),  # model_name is not UTF-8
        (
            b"\x0a\x06digits\x32\x03\x0a\x09x",
            "malformed ModelInferRequest",
        ),  # outputs entry runs past its end
        (b"\x0a\x06digits", "no input tensors"),
    ],
)
def test_malformed_requests_are_invalid_argument(raw: bytes, fragment: str) -> None:
    async def scenario() -> Context:
        store = FlagStore()
        store.sync({"digits": json.dumps(digits_flag())}, complete=True)
        backend = OnnxEmbeddedBackend(ROOT / "triton_models", providers=["CPUExecutionProvider"])
        await backend.start()
        try:
            router = Router(store, backend, TracerProvider().get_tracer("t"), tracing=False)
            context = Context()
            with pytest.raises(Aborted):
                await KServeFacade(router, store, SubjectRules()).ModelInfer(raw, context)
            return context
        finally:
            await backend.close()

    context = asyncio.run(scenario())
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in context.details
