"""Keyword arguments and attributes renamed in the public API: the old names keep working for a release, with a
DeprecationWarning that names the new one (as timm and Accelerate deprecate renamed arguments)."""
from __future__ import annotations

import functools
import warnings


def renamed_fields(**old_to_new: str):
    """Class decorator for a dataclass whose fields ``old`` were renamed ``new``: ``Cls(old=...)``,
    ``dataclasses.replace(obj, old=...)`` and ``obj.old`` still work and warn. The signature shows the new names."""
    def decorate(cls):
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    _warn(f'{cls.__name__}({old}=...)', f'{new}=')
                    kwargs[new] = kwargs.pop(old)  # over the current value that dataclasses.replace passes
            init(self, *args, **kwargs)
        cls.__init__ = __init__
        for old, new in old_to_new.items():
            name = f'{cls.__name__}.{old}'
            setattr(cls, old, property(functools.partial(_read, old=name, new=new),
                                       functools.partial(_write, old=name, new=new)))
        return cls
    return decorate


def _read(obj, old: str, new: str):
    _warn(old, f'{type(obj).__name__}.{new}')
    return getattr(obj, new)


def _write(obj, value, old: str, new: str) -> None:
    _warn(old, f'{type(obj).__name__}.{new}')
    setattr(obj, new, value)


def _warn(old: str, new: str) -> None:
    warnings.warn(f'{old} is deprecated and will be removed in the next release; use {new}.', DeprecationWarning,
                  stacklevel=3)  # the caller of the constructor or attribute
