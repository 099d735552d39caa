"""Crontab fields: Celery's ``crontab_parser`` syntax, and a field's spec as a set of numbers.

A string field is a comma-separated list of parts, each one of::

    *          every value            */15       every 15th, from the lowest
    5          one value              1-5        a range (22-2 wraps: 22, 23, 0, 1, 2)
    mon, jan   a name (days of week,  1-10/2     every 2nd value of a range
               months)                fri-mon    a range of names (wraps too)

Names are English, in any case, at least three letters of the full name (``mon``,
``tues``, ``sept``, ``september``); days of week count from Sunday = 0 to Saturday = 6.
Spaces around a part are ignored. Anything else raises :class:`ParseException`,
a ``ValueError`` whose message names the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["DAY_NAMES", "FIELDS", "MONTH_NAMES", "Cronspec", "ParseException", "crontab_parser"]

Cronspec = int | str | Iterable[int]
"""One crontab field as a user writes it: a number, a pattern, or the numbers themselves."""

_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
DAY_NAMES: Mapping[str, int] = {name: number for number, name in enumerate(_DAYS)}
MONTH_NAMES: Mapping[str, int] = {name: number for number, name in enumerate(_MONTHS, 1)}


class ParseException(ValueError):
    """A crontab field that does not parse (Celery's name; a ``ValueError`` here)."""


class crontab_parser:  # noqa: N801 - Celery's name
    """Expand one crontab field's pattern to its numbers: ``max_`` values from ``min_``.

    ``crontab_parser(60).parse('*/15')`` is ``{0, 15, 30, 45}``;
    ``crontab_parser(12, 1).parse('2-12/2')`` is ``{2, 4, 6, 8, 10, 12}``.
    ``names`` are the words the field accepts (by default, as in Celery, both
    day and month names); ``field`` names the field in error messages.
    """

    ParseException = ParseException

    def __init__(
        self,
        max_: int = 60,
        min_: int = 0,
        *,
        names: Mapping[str, int] | None = None,
        field: str = "crontab field",
    ) -> None:
        self.max_ = max_
        self.min_ = min_
        self.names = {**DAY_NAMES, **MONTH_NAMES} if names is None else names
        self.field = field

    def parse(self, spec: str) -> set[int]:
        values: set[int] = set()
        for part in spec.split(","):
            values.update(self._part(part.strip(), spec))
        return values

    def _part(self, part: str, spec: str) -> list[int]:
        if not part:
            raise self._error(spec, "empty part")
        body, slash, step = part.partition("/")
        if body == "*":
            values = list(range(self.min_, self.min_ + self.max_))
        elif "-" in body:
            first, _, last = body.partition("-")
            values = self._range(self._number(first, spec), self._number(last, spec))
        elif slash:
            raise self._error(spec, f"a step needs '*' or a range before it, not {body!r}")
        else:
            values = [self._number(body, spec)]
        if not slash:
            return values
        if not (step.isascii() and step.isdigit() and int(step) > 0):
            raise self._error(spec, f"the step must be a positive number, not {step!r}")
        return values[:: int(step)]

    def _range(self, first: int, last: int) -> list[int]:
        if last < first:  # wraps past the highest value
            return [*range(first, self.min_ + self.max_), *range(self.min_, last + 1)]
        return list(range(first, last + 1))

    def _number(self, token: str, spec: str) -> int:
        number = int(token) if token.isascii() and token.isdigit() else self._name(token, spec)
        if not self.min_ <= number < self.min_ + self.max_:
            raise self._error(spec, f"{number} is out of range {self.range_text()}")
        return number

    def _name(self, token: str, spec: str) -> int:
        word = token.lower()
        if len(word) >= 3:
            for name, number in self.names.items():
                if name.startswith(word):
                    return number
        known = f" (or a name like {next(iter(self.names))[:3]!r})" if self.names else ""
        raise self._error(spec, f"{token!r} is not a number{known}")

    def range_text(self) -> str:
        return f"{self.min_}-{self.min_ + self.max_ - 1}"

    def _error(self, spec: str, problem: str) -> ValueError:  # a ParseException
        return ParseException(f"invalid {self.field} {spec!r}: {problem}")


@dataclass(frozen=True, slots=True)
class Field:
    """One of crontab's five fields: its name, values and the names it accepts."""

    name: str
    count: int
    first: int = 0
    names: Mapping[str, int] | None = None

    def expand(self, spec: Cronspec | None) -> frozenset[int]:
        """``spec``'s numbers (None is ``'*'``), checked against the field's range."""
        label = f"crontab {self.name}"
        parser = crontab_parser(self.count, self.first, names=self.names or {}, field=label)
        if spec is None:
            spec = "*"
        if isinstance(spec, str):
            given: Iterable[object] = parser.parse(spec)
        elif isinstance(spec, Iterable):
            given = list(spec)
        else:
            given = [spec]
        values: set[int] = set()
        for value in given:
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(
                    f"{label} takes a number, a pattern string or numbers, "
                    f"not {type(value).__name__} ({value!r})"
                )
            if not self.first <= value < self.first + self.count:
                raise ParseException(
                    f"invalid {label} {spec!r}: {value} is out of range {parser.range_text()}"
                )
            values.add(value)
        if not values:
            raise ParseException(f"invalid {label} {spec!r}: no values")
        return frozenset(values)


FIELDS = {
    "minute": Field("minute", 60),
    "hour": Field("hour", 24),
    "day_of_week": Field("day_of_week", 7, names=DAY_NAMES),
    "day_of_month": Field("day_of_month", 31, first=1),
    "month_of_year": Field("month_of_year", 12, first=1, names=MONTH_NAMES),
}
"""crontab's fields by name, in the order of its arguments."""
