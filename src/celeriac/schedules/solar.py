"""``solar``: ticks at a solar event (sunrise, dusk, ...) seen from a place, computed with ephem.

Each event is found as Celery finds it, so the two agree to the second: the
Sun's centre or upper limb crossing the horizon the table below gives, with
no atmospheric refraction (pressure 0) and the observer at sea level.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any, NamedTuple

from .base import AppLike, BaseSchedule, NowFun

__all__ = ["solar"]


class _Event(NamedTuple):
    horizon: str
    """Degrees (``'-0:34'`` is -34'), as ephem reads it."""
    method: str
    """The ephem ``Observer`` method that finds the next one."""
    use_center: bool
    """The Sun's centre (twilights), else its upper limb (sunrise, sunset)."""


_EVENTS = {
    "dawn_astronomical": _Event("-18", "next_rising", True),
    "dawn_nautical": _Event("-12", "next_rising", True),
    "dawn_civil": _Event("-6", "next_rising", True),
    "sunrise": _Event("-0:34", "next_rising", False),
    "solar_noon": _Event("0", "next_transit", False),
    "sunset": _Event("-0:34", "next_setting", False),
    "dusk_civil": _Event("-6", "next_setting", True),
    "dusk_nautical": _Event("-12", "next_setting", True),
    "dusk_astronomical": _Event("-18", "next_setting", True),
}


class solar(BaseSchedule):  # noqa: N801 - Celery's name
    """At each ``event`` (a key of ``solar.events``) seen from latitude ``lat`` and
    longitude ``lon`` in degrees. Needs ephem: ``pip install 'celeriac[solar]'``."""

    events = tuple(_EVENTS)
    max_search_days = 366
    """Days searched for the next event: at high latitudes some (a summer night's
    astronomical dawn, a polar night's sunrise) skip days or months."""

    def __init__(
        self,
        event: str,
        lat: float,
        lon: float,
        nowfun: NowFun | None = None,
        app: AppLike | None = None,
    ) -> None:
        try:
            import ephem
        except ImportError as exc:
            raise ImportError(
                "solar schedules need the ephem package: pip install 'celeriac[solar]'"
            ) from exc
        if event not in _EVENTS:
            raise ValueError(f"solar event {event!r} is not one of {', '.join(sorted(_EVENTS))}")
        if not -90 <= lat <= 90:
            raise ValueError(f"solar latitude {lat} is not between -90 and 90")
        if not -180 <= lon <= 180:
            raise ValueError(f"solar longitude {lon} is not between -180 and 180")
        self._ephem = ephem
        self.event = event
        self.lat = lat
        self.lon = lon
        super().__init__(nowfun=nowfun, app=app)

    def next_after(self, last: datetime, tz: tzinfo) -> datetime:
        """The next event after ``last`` (``tz`` plays no part: events are instants).

        ``ValueError`` if none comes within ``max_search_days`` (where Celery would
        return the end of its search as if it were one).
        """
        if last.tzinfo is None:
            raise ValueError(f"next_after needs an aware datetime, not {last!r}")
        found = self._event_after(self._ephem.Date(last.astimezone(UTC)))
        if found is None:
            raise ValueError(
                f"no {self.event} within {self.max_search_days} days after {last.isoformat()} "
                f"at latitude {self.lat}, longitude {self.lon}"
            )
        when: datetime = found.datetime()
        return when.replace(tzinfo=UTC)

    def _event_after(self, start: Any) -> Any:
        """The first event after ``start`` (an ephem ``Date``); None if none comes
        within ``max_search_days``. A day without one (ephem's ``CircumpolarError``)
        moves the search on to the next anti-transit (midnight), as Celery does."""
        event = _EVENTS[self.event]
        observer = self._ephem.Observer()
        observer.lat = str(self.lat)
        observer.lon = str(self.lon)
        observer.elev = 0
        observer.horizon = event.horizon
        observer.pressure = 0
        observer.date = start
        find = getattr(observer, event.method)
        sun = self._ephem.Sun()
        options = {"use_center": True} if event.use_center else {}
        for _ in range(self.max_search_days):
            try:
                return find(sun, start=start, **options)
            except self._ephem.CircumpolarError:
                start = observer.next_antitransit(sun, start=start)
        return None

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>"

    def __reduce__(self) -> tuple[type[solar], tuple[str, float, float]]:
        return self.__class__, (self.event, self.lat, self.lon)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, solar):
            return (other.event, other.lat, other.lon) == (self.event, self.lat, self.lon)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.event, self.lat, self.lon))
