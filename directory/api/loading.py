"""A faster way through a marshmallow schema, for what every request loads (query
strings, JSON bodies) and for the batch endpoints' hot path.

Loading 1,000 ads through `Schema.load` spends half its time in marshmallow's per-field
bookkeeping (error stores, getters, hook look-ups), which is most of a batch's cost. This
loader runs the schema's own fields, validators and hooks in a plain loop, and hands
anything it does not accept outright (a missing or unknown field, a failed validator) to
`Schema.load`, so every error, message and edge case still comes from marshmallow itself.
It accepts only schemas whose hooks it knows how to run, and a test compares it with
`Schema.load` on good and bad input."""

from __future__ import annotations

from functools import cached_property

from marshmallow import Schema, ValidationError, fields, missing

from directory.api.fields import validate_length_first

SUPPORTED_HOOKS = {"validates_schema", "post_load"}


class _Fallback(Exception):
    pass


class FastLoader:
    def __init__(self, schema: Schema):
        hooks = {tag: entries for tag, entries in schema._hooks.items() if entries}
        unsupported = set(hooks) - SUPPORTED_HOOKS
        if unsupported or any(
            many or options.get("pass_original")
            for entries in hooks.values()
            for _, many, options in entries
        ):
            raise TypeError(f"{type(schema).__name__} has hooks FastLoader cannot run")
        if any(field.data_key for field in schema.load_fields.values()):
            raise TypeError(f"{type(schema).__name__} uses data_key, which FastLoader skips")
        if schema.partial:  # missing fields would get their load_default, not be left out
            raise TypeError(f"{type(schema).__name__} is partial, which FastLoader ignores")
        self.schema = schema
        self.plan = [
            (
                name,
                _list_loader(field) or field._deserialize,
                field.required,
                field.allow_none,
                field.load_default,
                field.validators,
            )
            for name, field in schema.load_fields.items()
        ]
        self.known = set(schema.load_fields)
        self.validators = [
            getattr(schema, name) for name, _, _ in hooks.get("validates_schema", [])
        ]
        self.post_loads = [getattr(schema, name) for name, _, _ in hooks.get("post_load", [])]

    def load(self, data):
        """What `schema.load(data)` returns, or raises."""
        if type(data) is not dict or not data.keys() <= self.known:
            return self.schema.load(data)
        loaded = {}
        try:
            for name, deserialize, required, allow_none, default, validators in self.plan:
                raw = data.get(name, missing)
                if raw is missing:
                    if required:
                        raise _Fallback
                    value = default() if callable(default) else default
                    if value is missing:
                        continue
                elif raw is None:
                    if not allow_none:
                        raise _Fallback
                    value = None
                else:
                    value = deserialize(raw, name, data)
                    for validator in validators:
                        if validator(value) is False:
                            raise _Fallback
                loaded[name] = value
            for validator in self.validators:
                validator(loaded, many=False, partial=None)
        except (ValidationError, _Fallback):
            return self.schema.load(data)  # raises marshmallow's own errors
        for post_load in self.post_loads:
            loaded = post_load(loaded, many=False, partial=None)
        return loaded


def _list_loader(field):
    """For a List of plain fields: its items through the inner field's own code, without
    marshmallow's per-item wrapper (two lists per ad were a fifth of the loading time)."""
    if not isinstance(field, fields.List) or isinstance(field.inner, fields.Nested):
        return None
    inner = field.inner
    deserialize, allow_none, validators = inner._deserialize, inner.allow_none, inner.validators

    def load(raw, name, data):
        if type(raw) is not list:
            raise _Fallback
        validate_length_first(field, raw)
        items = []
        for item in raw:
            if item is None:
                if not allow_none:
                    raise _Fallback
                items.append(None)
                continue
            value = deserialize(item, name, data)
            for validator in validators:
                if validator(value) is False:
                    raise _Fallback
            items.append(value)
        return items

    return load


class FastNested(fields.Nested):
    """A Nested field whose objects FastLoader loads: a batch's items (a nested schema's
    load per message took a tenth of a batch of ten messages' time)."""

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        return self._loader.load(value)

    @cached_property
    def _loader(self) -> FastLoader:
        return FastLoader(self.schema)
