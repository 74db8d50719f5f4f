"""The base of :class:`~evcore.state.Worker` and :class:`~evcore.state.Task`: slots plus extras.

Known fields live in ``__slots__``; any other event field is kept in a small per-object dict
created on first use, and read back as an attribute, as Celery's objects (which copy every
event field into their ``__dict__``) allow.

Copying an event's fields onto an object is the hot path of the State. Events of one type
nearly always have the same keys in the same order (the sender builds them the same way
each time), so each key layout gets a small compiled setter, ``obj.a = fields['a']; ...``,
which runs about twice as fast as a generic loop of ``setattr`` calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

#: Distinct key layouts remembered per class; beyond that the generic loop is used.
MAX_LAYOUTS = 256

FieldSetter = Callable[[Any, Mapping[Any, Any]], None]


class Record:
    """Slots for known fields, a lazily created dict for the others."""

    __slots__ = ("_extra",)

    _extra: dict[Any, Any] | None

    #: Values of slots that were never set.
    _defaults: ClassVar[Mapping[str, Any]] = {"_extra": None}
    #: Field names an event may set directly.
    _settable: ClassVar[frozenset[str]] = frozenset()
    #: Compiled setters by key layout (each subclass gets its own dict).
    _setters: ClassVar[dict[tuple[Any, ...], FieldSetter]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._setters = {}

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: an unset slot or an extra field.
        defaults = type(self)._defaults
        if name in defaults:
            return defaults[name]
        extra = self._extra
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def extra_fields(self) -> dict[str, Any]:
        """Event fields that have no slot of their own (custom fields such as ``current``)."""
        extra = self._extra
        return {} if extra is None else dict(extra)

    def _set_extra(self, key: Any, value: Any) -> None:
        extra = self._extra
        if extra is None:
            self._extra = {key: value}
        else:
            extra[key] = value

    def _merge(self, fields: Mapping[Any, Any]) -> None:
        """Copy every field onto the object."""
        layout = tuple(fields)
        setter = self._setters.get(layout)
        if setter is None:
            setter = self._setter_for(layout)
        setter(self, fields)

    @classmethod
    def _setter_for(cls, layout: tuple[Any, ...]) -> FieldSetter:
        settable = cls._settable
        if not all(key.__class__ is str and key in settable for key in layout):
            return set_fields
        lines = [f"    obj.{key} = fields[{key!r}]" for key in layout]
        source = "def set_fields(obj, fields):\n" + ("\n".join(lines) or "    pass")
        namespace: dict[str, Any] = {}
        exec(source, namespace)  # only names from _settable, which are fixed identifiers
        setter: FieldSetter = namespace["set_fields"]
        if len(cls._setters) < MAX_LAYOUTS:
            cls._setters[layout] = setter
        return setter

    def _merge_except(self, fields: Mapping[Any, Any], skip: frozenset[str]) -> None:
        """Copy the fields not named in ``skip``."""
        set_fields(self, {key: value for key, value in fields.items() if key not in skip})

    def _merge_only(self, fields: Mapping[Any, Any], keep: tuple[str, ...]) -> None:
        """Copy only the fields named in ``keep``."""
        for key in keep:
            if key in fields:
                setattr(self, key, fields[key])


def set_fields(record: Record, fields: Mapping[Any, Any]) -> None:
    """Copy every field, sending those without a slot to the extras."""
    settable = record._settable
    for key, value in fields.items():
        if key in settable:
            setattr(record, key, value)
        else:
            record._set_extra(key, value)
