"""The method registry: ``method.name`` -> the class that builds it, the only place a method's
name is looked up.

A method registers itself where it is defined, with a class decorator::

    @register("mocov3")
    class MoCoV3(MoCoBase): ...

and owns everything its name implies: its augmentation preset, its paper defaults, its
config rules and its construction (``from_config``; see :class:`sslkit.methods.MoCoBase`).
``method.name`` accepts every registered name.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from sslkit.errors import ConfigError

METHODS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``method.name: <name>`` builds the decorated class."""
    def add(cls: T) -> T:
        if METHODS.get(name, cls) is not cls:
            raise ValueError(f"method name '{name}' is registered already, by "
                             f"{METHODS[name].__qualname__}")
        METHODS[name] = cls
        return cls
    return add


def method_class(name: str) -> type:
    """The class registered as ``name``; an unknown name is a one-line ConfigError."""
    if name not in METHODS:
        raise ConfigError(f"method.name={name} is invalid: expected one of "
                          f"{', '.join(repr(n) for n in METHODS)}")
    return METHODS[name]
