"""Declaring options: a field's type, domain, help and applicability in one place.

:func:`option` makes a dataclass field whose metadata is an :class:`Opt`;
:mod:`fedjax_lite.experiment.options` declares every option of a run with it,
and the configuration, the command line and its ``--help`` read them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any

# A value that is "a positive integer or this word".
INT_OR_AUTO, INT_OR_ALL = "int_or_auto", "int_or_all"


class ConfigError(ValueError):
  """An invalid configuration (unknown name or key, bad value, bad output dir)."""


@dataclasses.dataclass(frozen=True)
class Opt:
  """What an option accepts and when it applies.

  Attributes:
    help: one line for ``--help``.
    kind: ``bool``, ``int``, ``float``, ``str``, :data:`INT_OR_AUTO`,
      :data:`INT_OR_ALL` or ``"sweep"``.
    optional: ``None`` is a valid value.
    choices: the valid strings.
    low, high: the closed range of a number (``None``: unbounded).
    low_open, high_open: exclude that end.
    applies: ``applies(config) -> None`` when the option is used with this
      configuration, else the reason it is not (an error if it was given).
    metavar: the value's name in ``--help``.
  """

  help: str
  kind: Any
  optional: bool = False
  choices: tuple[str, ...] | None = None
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  applies: Callable[[Any], str | None] | None = None
  metavar: str | None = None

  def check(self, key: str, value: Any, where: str | None = None) -> Any:
    """``value`` if it is in the option's domain, else raises :class:`ConfigError`.

    Args:
      key: the option's name.
      value: a value from a flag or a TOML file.
      where: how it was given (``--flag``, or the key and its file), for the
        message; default ``key``.

    Returns:
      The value (an int given for a float option stays an int).
    """
    name = key if where is None else where
    if value is None:
      if self.optional:
        return None
      raise ConfigError(f"{name} needs a value ({self._expected()}); got none.")
    kind = self.kind
    word = {INT_OR_AUTO: "auto", INT_OR_ALL: "all"}.get(kind)
    if word is not None and value == word:
      return value
    if kind is bool:
      ok = isinstance(value, bool)
    elif kind in (int, INT_OR_AUTO, INT_OR_ALL):
      ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
      ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
    else:
      ok = isinstance(value, str)
    if not ok:
      raise ConfigError(f"{name} must be {self._expected()}; got {_describe(value)}.")
    if self.choices is not None and value not in self.choices:
      at = "" if where is None or where.startswith("--") else f" ({where})"
      raise ConfigError(f"unknown {key} {value!r}{at}; choose one of: "
                        f"{', '.join(self.choices)}.")
    below = self.low is not None and not (value > self.low if self.low_open
                                          else value >= self.low)
    above = self.high is not None and not (value < self.high if self.high_open
                                           else value <= self.high)
    if below or above:
      domain = self._expected() if word is not None else self.domain()
      raise ConfigError(f"{name} must be {domain}; got {value!r}.")
    return value

  def domain(self) -> str:
    """The allowed range in words, e.g. ``in [0, 1)`` or ``>= 1``.

    Returns:
      The text (empty for an unbounded option).
    """
    if self.low is not None and self.high is not None:
      return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
              f"{')' if self.high_open else ']'}")
    if self.low is not None:
      return f"{'>' if self.low_open else '>='} {self.low:g}"
    if self.high is not None:
      return f"{'<' if self.high_open else '<='} {self.high:g}"
    return ""

  def _expected(self) -> str:
    text = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            INT_OR_AUTO: "a positive integer or 'auto'", INT_OR_ALL: "a positive integer or "
            "'all'"}.get(self.kind, "a value")
    if self.choices is not None:
      text = "one of " + ", ".join(self.choices)
    return text


def _describe(value: Any) -> str:
  kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
  return f"{kind} {value!r}"


def option(default: Any, help: str, kind: Any = None, **meta: Any) -> Any:  # noqa: A002
  """A dataclass field declaring one option (see :class:`Opt`).

  Args:
    default: the default value.
    help: one line for ``--help``.
    kind: the value's type; default: ``type(default)``.
    **meta: the other :class:`Opt` attributes.

  Returns:
    A ``dataclasses.field``.
  """
  kind = type(default) if kind is None else kind
  return dataclasses.field(default=default, metadata={"opt": Opt(help, kind, **meta)})


def when(test: Callable[[Any], bool], reason: str) -> Callable[[Any], str | None]:
  """An :attr:`Opt.applies` rule: the option is used when ``test(config)`` holds.

  Args:
    test: ``test(config) -> bool``.
    reason: why the option does not apply otherwise.

  Returns:
    ``applies(config) -> None | reason``.
  """
  return lambda c: None if test(c) else reason


def int_or_word_arg(word: str, flag: str) -> Callable[[str], int | str]:
  """An ``argparse`` type: ``word`` itself, or an integer.

  Args:
    word: the accepted keyword (``"auto"``, ``"all"``).
    flag: the flag, for the message.

  Returns:
    ``parse(text) -> int | str``, raising ``argparse.ArgumentTypeError``.
  """

  def parse(text: str) -> int | str:
    if text == word:
      return text
    try:
      return int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"{flag} must be a positive integer or '{word}'; got {text!r}.") from None

  return parse
