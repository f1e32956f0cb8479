"""Values of configuration dataclasses checked against each field's type annotation and bounds.

Why one module: a training value reaches :class:`~pointparse.train_config.TrainConfig` from a
Click option, from ``--set key=value`` (parsed as a YAML scalar) and from a pipeline's YAML
``params``. Each path used to hand the dataclass whatever it got, so ``epochs=abc`` crashed at
start, ``epochs=1.5`` or ``seed=abc`` crashed mid-run and ``pdml=banana`` was silently truthy.
Each config now calls :func:`check_fields` in ``__post_init__`` (and the pipeline loader calls
:func:`coerce_params` for every stage's params), so all three paths meet the same check:

* the annotation decides the type: ``int`` refuses ``1.5``, ``"abc"`` and booleans (an integral
  float or a numeric string becomes the int); ``float`` takes ints and floats unchanged (an int
  stays an int so cache keys of valid values do not move) and numeric strings (YAML 1.1 reads
  ``1e-3`` as a string); ``bool`` takes only booleans and true/false/yes/no/on/off; ``str`` refuses
  numbers; ``X | None`` takes None; ``tuple[T, ...]`` checks each element; ``Literal`` lists its
  choices; any other annotation is left to the class's own checks;
* the bounds are declared once per field with :func:`bounded` (field metadata): ``ge``, ``gt``,
  ``le``, ``lt``, ``odd`` and ``choices`` (a registry: the error lists the valid names).

A valid value is returned exactly as it came, so artefacts and cache keys stay as they were.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Literal, Union

from .errors import ConfigError, unknown_choice

_TRUE = ("true", "yes", "on")
_FALSE = ("false", "no", "off")
_META = "pointparse.bounds"


def bounded(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, odd: bool = False,
            choices=None, **field_kwargs) -> Any:
    """``dataclasses.field`` with the bounds :func:`check_fields` enforces (declared once, here)."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, odd=odd, choices=choices).items()
            if v is not None and v is not False}
    return dataclasses.field(default=default, metadata={_META: meta}, **field_kwargs)


def _hints(cls: type) -> dict[str, Any]:
    hints = cls.__dict__.get("_pointparse_hints")
    if hints is None:
        hints = typing.get_type_hints(cls)
        setattr(cls, "_pointparse_hints", hints)
    return hints


def coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` as a field annotated ``tp`` holds it, or a :class:`ConfigError` naming ``name``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return coerce(name, rest[0], value) if len(rest) == 1 else value
    if origin is Literal:
        if value not in args:
            raise unknown_choice(name, str(value), [str(a) for a in args])
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and isinstance(value, (list, tuple)):
        return type(value)(coerce(f"{name}[{i}]", args[0], v) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy ints too, unchanged
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be a name or text, got {value!r}")
    return value


def _describe(meta: dict, is_float: bool) -> str:
    kind = "a finite number" if is_float else ("an odd integer" if meta.get("odd") else "an integer")
    lo = (">=", meta["ge"]) if "ge" in meta else (">", meta["gt"]) if "gt" in meta else None
    hi = ("<=", meta["le"]) if "le" in meta else ("<", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"{kind} in {'[' if lo[0] == '>=' else '('}{lo[1]:g}, {hi[1]:g}{']' if hi[0] == '<=' else ')'}"
    return " ".join([kind, *(f"{b[0]} {b[1]:g}" for b in (lo, hi) if b)])


def check_bounds(name: str, value: Any, meta: dict, is_float: bool = False) -> None:
    """The declared bounds of one field (``None`` passes: optional fields mean "default")."""
    if value is None or not meta:
        return
    if "choices" in meta:
        if not isinstance(value, str) or value not in meta["choices"]:
            raise unknown_choice(name, str(value), meta["choices"])
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return
    ok = math.isfinite(value) \
        and ("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"]) \
        and ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"]) \
        and (not meta.get("odd") or value % 2 == 1)
    if not ok:
        raise ConfigError(f"{name} must be {_describe(meta, is_float or isinstance(value, float))}, got {value!r}")


def _checked(name: str, tp: Any, meta: dict, value: Any) -> Any:
    new = coerce(name, tp, value)
    check_bounds(name, new, meta, is_float=tp in (float, float | None))
    return new


def check_fields(obj: Any) -> None:
    """Coerce and bound-check every field of a dataclass instance in place (its ``__post_init__``)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        new = _checked(f.name, hints.get(f.name, Any), f.metadata.get(_META) or {}, value)
        if new is not value:
            object.__setattr__(obj, f.name, new)


def coerce_params(cls: type, params: dict) -> dict:
    """``params`` (a pipeline stage's, by field name) coerced to ``cls``'s annotations and bounds;
    names that are not fields are left for the caller's "unknown parameter" message."""
    hints = _hints(cls)
    meta = {f.name: dict(f.metadata.get(_META) or {}) for f in dataclasses.fields(cls)}
    out = {}
    for k, v in params.items():
        if k in hints and k in meta:
            v = _checked(k, hints[k], meta[k], v)
        out[k] = v
    return out
