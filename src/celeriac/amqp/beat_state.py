"""The state message of beat's RabbitMQ lease queue (``celeriac.amqp.beat``): its
JSON form, and how two states' runs merge."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

__all__ = ["State", "forward", "unix_time"]

logger = logging.getLogger("celeriac.broker.amqp")


@dataclass(frozen=True, slots=True)
class State:
    """One state message: the lease as its writer left it, and the runs."""

    token: int = 0
    holder: str | None = None
    until: float | None = None
    held: float | None = None
    runs: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: bytes) -> State:
        """The state in ``body``; an empty one (logged) for anything else."""
        try:
            data = orjson.loads(body)
            until, held, holder = (data.get(k) for k in ("until", "held", "holder"))
            runs = {str(k): float(v) for k, v in dict(data.get("runs") or {}).items()}
            return cls(
                int(data.get("token", 0)),
                None if holder is None else str(holder),
                None if until is None else float(until),
                None if held is None else float(held),
                runs,
            )
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            logger.warning("ignored a message in beat's lease queue: %s", exc)
            return cls()

    @property
    def left(self) -> float:
        """Seconds the lease had left when this was written."""
        return max(0.0, (self.until or 0.0) - (self.held or 0.0))

    def dumps(self) -> bytes:
        lease = {"token": self.token, "holder": self.holder, "until": self.until}
        return orjson.dumps({**lease, "held": self.held, "runs": dict(self.runs)})


def forward(runs: Mapping[str, float], more: Mapping[str, float]) -> dict[str, float]:
    """``runs`` with ``more`` merged in: each entry's latest tick."""
    merged = dict(runs)
    for entry, tick in more.items():
        merged[entry] = max(float(tick), merged.get(entry, float(tick)))
    return merged


def unix_time(monotonic: float) -> float:
    """The unix time of a ``time.monotonic()`` instant."""
    return time.time() + (monotonic - time.monotonic())
