"""In-process routing for Python apps: the sidecar's request path as an async library.

    async with InProcessClient.from_settings(redis_url=..., triton_url=...) as client:
        result = await client.infer("digits", {"pixels": x}, user_id="u1")
        result.outputs["label"], result.assignment.variant, result.assignment.served_version

See docs/inprocess.md.
"""

from inproc.client import InferenceResult, InProcessClient
from inproc.errors import (
    BackendFailure,
    ConfigurationError,
    InProcessError,
    InvalidInput,
    RoutingError,
)

__all__ = [
    "BackendFailure",
    "ConfigurationError",
    "InProcessClient",
    "InProcessError",
    "InferenceResult",
    "InvalidInput",
    "RoutingError",
]
