"""Request and response models derived from others, so that a field is declared once:

- `NotNull`: a partial update whose fields in `not_null` may be left out but not sent as null;
- `partial`: the update model of a create model (every field optional, no defaults);
- `public`: the response model of a domain row (a dataclass), with the row's own types;
- `page`: the response model of a page of those.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, ValidationInfo, create_model, field_validator
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from knowledge.api.fields import no_null

__all__ = ["NotNull", "page", "partial", "public"]


class NotNull(BaseModel):
    """A partial update: the fields named in `not_null` may be left out, but null is refused
    (with a validation error on the field), so their schemas do not offer null."""

    not_null: ClassVar[tuple[str, ...]] = ()

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name in cls.not_null:
            raise ValueError("cannot be null (leave the field out to keep it)")
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        no_null(*cls.not_null)(handler.resolve_ref_schema(schema))
        return schema


def _admits_null(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def partial(
    create: type[BaseModel],
    name: str,
    doc: str,
    *,
    config: ConfigDict,
    descriptions: Mapping[str, str | None] | None = None,
    leave_out: tuple[str, ...] = (),
    **added: Any,
) -> type[NotNull]:
    """The update model of `create`, called `name` with the docstring `doc` and the `config`:
    its fields but `leave_out`, each optional with no default, with its rules and its
    description unless `descriptions` gives another (None: none); then the fields `added` (as
    create_model takes them). A field that `create` does not let be null may be left out of an
    update, but not sent as null."""
    changed = descriptions or {}
    fields: dict[str, Any] = {}
    for field, info in create.model_fields.items():
        if field in leave_out:
            continue
        annotation: Any = info.annotation
        description = changed.get(field, info.description)
        optional = FieldInfo.from_field(None, description=description, json_schema_extra=info.json_schema_extra)
        optional.metadata = list(info.metadata)  # constraints such as ge and le
        fields[field] = (annotation | None, optional)

    class Update(NotNull):
        model_config = config
        not_null = tuple(f for f, info in create.model_fields.items() if not _admits_null(info.annotation))

    return create_model(name, __base__=Update, __doc__=doc, **fields, **added)


def public(
    row: type,
    name: str,
    fields: Sequence[str],
    *,
    types: Mapping[str, Any] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> type[BaseModel]:
    """The response model `name` of the dataclass `row`, read from a row's attributes: its
    `fields` in that order, with the row's types but those `types` gives, described by
    `descriptions`."""
    hints = typing.get_type_hints(row)
    types, descriptions = types or {}, descriptions or {}
    models: dict[str, Any] = {
        field: (types.get(field, hints[field]), Field(description=descriptions.get(field))) for field in fields
    }
    return create_model(name, __config__=ConfigDict(from_attributes=True), **models)


def page(item: type[BaseModel], name: str, *, count: str) -> type[BaseModel]:
    """The response model `name` of a page of `item`s: `data`, and the `count` (so described)
    of all that match."""
    items: Any = list.__class_getitem__(item)
    return create_model(name, data=(items, ...), count=(int, Field(description=count)))
