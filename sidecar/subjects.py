"""Who is asking: the subject from gRPC metadata or the native request, within limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flags import Subject
from sidecar.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class SubjectRules:
    user_id_header: str = "x-user-id"
    attribute_prefix: str = "x-attr-"
    allow_anonymous: bool = False
    max_user_id_length: int = 256
    max_attributes: int = 64
    max_attribute_length: int = 1024


def subject_from_metadata(
    metadata: Mapping[str, str], rules: SubjectRules, *, parameter_user_id: str = ""
) -> Subject:
    """``x-user-id`` metadata (or a request parameter of that name) and ``x-attr-*`` attributes."""
    prefix = rules.attribute_prefix
    attributes = {k[len(prefix) :]: v for k, v in metadata.items() if k.startswith(prefix)}
    user_id = metadata.get(rules.user_id_header) or parameter_user_id
    return checked_subject(
        user_id, attributes, rules, where=f"the `{rules.user_id_header}` metadata"
    )


def checked_subject(
    user_id: str, attributes: Mapping[str, str], rules: SubjectRules, *, where: str
) -> Subject:
    if not user_id and not rules.allow_anonymous:
        raise InvalidRequest(
            f"no user id: send it in {where} (or start the sidecar with --allow-anonymous to "
            "serve anonymous requests the default variant)"
        )
    if len(user_id) > rules.max_user_id_length:
        raise InvalidRequest(
            f"user id is {len(user_id)} characters; the limit is {rules.max_user_id_length}"
        )
    if len(attributes) > rules.max_attributes:
        raise InvalidRequest(f"{len(attributes)} attributes; the limit is {rules.max_attributes}")
    for name, value in attributes.items():
        if len(value) > rules.max_attribute_length:
            raise InvalidRequest(
                f"attribute {name!r} is {len(value)} characters; the limit is {rules.max_attribute_length}"
            )
    return Subject(user_id, dict(attributes))
