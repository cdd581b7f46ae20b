"""The KServe facade rejects malformed bytes as the caller's error (InvalidRequest, which the
server interceptor answers with INVALID_ARGUMENT), whatever the backend path."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from support import ROOT, digits_flag

from flags.store import FlagStore
from sidecar.backends.onnx_embedded import OnnxEmbeddedBackend
from sidecar.errors import InvalidRequest, status_for
from sidecar.kserve_facade import KServeFacade
from sidecar.routing import Router
from sidecar.subjects import SubjectRules


class Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-user-id", "u1"),)

    def time_remaining(self) -> float:
        return 5.0

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


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
    async def scenario() -> InvalidRequest:
        store = FlagStore()
        store.sync({"digits": json.dumps(digits_flag())}, complete=True)
        backend = OnnxEmbeddedBackend(ROOT / "triton_models", providers=["CPUExecutionProvider"])
        await backend.start()
        try:
            facade = KServeFacade(
                Router(store, backend), store, SubjectRules(), forward_raw=False, serving=bool
            )
            with pytest.raises(InvalidRequest) as caught:
                await facade.ModelInfer(raw, Context())
            return caught.value
        finally:
            await backend.close()

    error = asyncio.run(scenario())
    code, message = status_for(error)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in message
