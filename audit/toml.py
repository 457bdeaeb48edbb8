"""Reading TOML files and checking their tables: one set of validators for every parser.

``read_toml`` turns an unreadable, non-UTF-8 or invalid file into one error
naming the file. ``Table`` wraps one table: each getter checks presence, type
and range and names the key (``section.key``) in its error; ``done()`` refuses
any key no getter asked for, so a typo never passes silently.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from audit.errors import ConfigError
from audit.io import read_user_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_MISSING = object()
#: Integers beyond 64 bits are refused everywhere (TOML allows them; nothing downstream can hold them).
INT_LOW, INT_HIGH = -(2**63), 2**63 - 1


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A TOML file as a dict; unreadable or invalid files raise errors naming the file."""
    path = Path(path)
    text = read_user_text(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (arrays or tables nested too deeply)") from None


def check_sections(raw: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown section; allowed: {', '.join(allowed)}")


class Table:
    """One TOML table under validation; ``name`` prefixes every key in errors."""

    def __init__(self, raw: Any, name: str, base: Path | None = None) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"[{name}]: expected a table, got {type(raw).__name__}")
        self.raw, self.name, self.base = dict(raw), name, base
        self._seen: set[str] = set()

    @classmethod
    def of(cls, raw: Mapping[str, Any], section: str, base: Path | None = None) -> "Table":
        return cls(raw.get(section), section, base)

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        if key in self.raw:
            return self.raw[key]
        if default is _MISSING:
            raise ConfigError(f"{self.key(key)}: missing")
        return default

    def raw_value(self, key: str, default: Any = _MISSING) -> Any:
        """The value as written (no check): for parameters another module validates."""
        return self._get(key, default)

    def int(self, key: str, default: Any = _MISSING, *, low: int | None = None, high: int | None = None) -> Any:
        v = self._get(key, default)
        if v is default and key not in self.raw:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.key(key)}: expected an integer, got {_short(v)}")
        low = INT_LOW if low is None else low
        high = INT_HIGH if high is None else high
        if v < low or v > high:
            rng = f">= {low}" if high == INT_HIGH else (f"<= {high}" if low == INT_LOW else f"in [{low}, {high}]")
            raise ConfigError(f"{self.key(key)}: expected an integer {rng}, got {_short(v)}")
        return v

    def float(self, key: str, default: Any = _MISSING, *, low: float | None = None, high: float | None = None,
              low_open: bool = False, high_open: bool = False) -> Any:
        v = self._get(key, default)
        if v is default and key not in self.raw:
            return v
        return check_number(self.key(key), v, low=low, high=high, low_open=low_open, high_open=high_open)

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        v = self._get(key, default)
        if v is default and key not in self.raw:
            return v
        if not isinstance(v, bool):
            raise ConfigError(f"{self.key(key)}: expected true or false, got {_short(v)}")
        return v

    def str(self, key: str, default: Any = _MISSING, *, choices: Sequence[str] | None = None) -> Any:
        v = self._get(key, default)
        if v is default and key not in self.raw:
            return v
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{self.key(key)}: expected a non-empty string, got {_short(v)}")
        if choices is not None and v not in choices:
            raise ConfigError(f"{self.key(key)}: expected one of {', '.join(map(repr, choices))}, got {_short(v)}")
        return v

    def path(self, key: str, default: Any = _MISSING) -> Any:
        """A path string; relative paths are relative to ``base`` (the config file's folder)."""
        v = self._get(key, default)
        if v is default and key not in self.raw:
            return v
        if not isinstance(v, str) or not v or "\0" in v:
            raise ConfigError(f"{self.key(key)}: expected a path string, got {_short(v)}")
        p = Path(v)
        return p if p.is_absolute() or self.base is None else self.base / p

    def numbers(self, key: str, default: Any = _MISSING, *, length: int | None = None, low: float | None = None,
                low_open: bool = False, nonempty: bool = True) -> Any:
        v = self._get(key, default)
        if v is default and key not in self.raw:
            return v
        if not isinstance(v, list) or (nonempty and not v) or (length is not None and len(v) != length):
            what = f"a list of {length} numbers" if length is not None else "a non-empty list of numbers"
            raise ConfigError(f"{self.key(key)}: expected {what}, got {_short(v)}")
        return tuple(check_number(self.key(key), x, low=low, low_open=low_open) for x in v)

    def strings(self, key: str, default: Any = _MISSING) -> Any:
        v = self._get(key, default)
        if v is default and key not in self.raw:
            return v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self.key(key)}: expected a list of strings, got {_short(v)}")
        return tuple(v)

    def table(self, key: str) -> "Table":
        return Table(self._get(key, {}), self.key(key), self.base)

    def rest(self) -> dict[str, Any]:
        """The keys no getter asked for (a module that validates them itself takes them)."""
        out = {k: v for k, v in self.raw.items() if k not in self._seen}
        self._seen |= set(out)
        return out

    def done(self, allowed: Iterable[str] | None = None) -> None:
        """Refuse keys no getter read; ``allowed`` lists every valid key for the message."""
        unknown = [k for k in self.raw if k not in self._seen]
        if unknown:
            names = sorted(allowed) if allowed is not None else sorted(self._seen)
            raise ConfigError(f"{self.key(unknown[0])}: unknown key; allowed: {', '.join(names)}")


def check_number(key: str, v: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> float:
    """A finite int or float within the bounds, as float; ``ConfigError`` naming ``key`` otherwise."""
    if isinstance(v, int) and not isinstance(v, bool) and not INT_LOW <= v <= INT_HIGH:
        raise ConfigError(f"{key}: expected a finite number, got {_short(v)} (beyond 64-bit integers)")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{key}: expected a finite number, got {_short(v)}")
    v = float(v)
    if low is not None and (v < low or (low_open and v == low)):
        raise ConfigError(f"{key}: expected a number {'>' if low_open else '>='} {low:g}, got {v:g}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ConfigError(f"{key}: expected a number {'<' if high_open else '<='} {high:g}, got {v:g}")
    return v


def _short(v: Any, limit: int = 80) -> str:
    """``repr`` of a value for an error message, cut to ``limit`` characters (a message stays one short line)."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."
