"""The base of :class:`~evcore.state.Worker` and :class:`~evcore.state.Task`: slots plus extras.

Known fields live in ``__slots__``; any other event field is kept in a small per-object dict
created on first use, and read back as an attribute, as Celery's objects (which copy every
event field into their ``__dict__``) allow.

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class Record:
    """Slots for known fields, a lazily created dict for the others."""

    __slots__ = ("_extra",)

    _extra: dict[Any, Any] | None

    #: Values of slots that were never set.
    _defaults: ClassVar[Mapping[str, Any]] = {"_extra": None}
    #: Field names an event may set directly.
    _settable: ClassVar[frozenset[str]] = frozenset()

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
        set_fields(self, fields)

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
