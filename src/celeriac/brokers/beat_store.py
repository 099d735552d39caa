"""Beat's storage contract: one leader lease and each entry's last run, in the broker's storage.

Any number of ``celeriac beat`` processes (or workers with ``-B``) run
against one broker; the one that holds the **lease** sends the periodic
tasks, the others wait to take over. What the lease guards is kept beside
it: the last tick sent of every entry (``last_runs``), so a new leader
knows what was sent and neither loses nor repeats a tick.

* ``claim(holder, ttl)`` takes the lease when nobody holds it or its holder
  let it lapse (did not renew within ``ttl`` seconds), and renews it when
  ``holder`` holds it already; it returns None while another holds it. Each
  new holder gets a larger **token** (fencing): a write with an older token
  is refused, so a holder that paused past its lease cannot overwrite what
  its successor stored.
* A holder acts only while ``time.monotonic() < lease.until``: ``until`` is
  taken from the clock *before* the claim's round trip, so the holder's
  belief always ends before the storage lets anyone else in.
* ``record(lease, runs)`` stores last runs (each entry's only moves forward)
  if the lease is still the current one; ``record_writes`` gives the same
  writes in the storage's own terms (``celeriac.shared_storage``) for a
  broker with a ``storage``, so the ticks' messages and their record are one
  transaction or one script: a leader killed between the two cannot exist.
* ``Lease.idle_since``: when the lease was last held by anyone before this
  claim (unix seconds; None: never). Beat tells a hand-over (held moments
  ago: every missed tick is sent) from a fleet that was down (the catch-up
  setting decides) by it.

``tests/conformance/test_beat_store.py`` checks every broker against this contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..shared_storage import StorageWrite

__all__ = ["BeatStore", "Lease"]


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease as one claim found it."""

    holder: str
    token: int
    """Grows with every new holder; a renewal keeps it."""
    until: float
    """``time.monotonic()`` before which the holder may act."""
    idle_since: float | None = None
    """Unix time the lease was last held before this holder took it (None: never, or
    this is a renewal)."""


class BeatStore(ABC):
    """One broker's beat lease and schedule state (one instance per broker object)."""

    @abstractmethod
    async def claim(self, holder: str, ttl: float) -> Lease | None:
        """Take or renew the lease for ``ttl`` seconds; None while another holds it."""

    @abstractmethod
    async def last_runs(self) -> dict[str, float]:
        """Each entry's last tick sent, unix seconds."""

    @abstractmethod
    async def record(self, lease: Lease, runs: Mapping[str, float]) -> bool:
        """Store ``runs`` (a tick earlier than the stored one is ignored) unless another
        holder has taken the lease since ``lease``; False: fenced out, nothing stored."""

    def record_writes(self, lease: Lease, runs: Mapping[str, float]) -> Sequence[StorageWrite]:
        """``record`` as writes the broker makes with a publish (same fencing); only
        for a store whose broker has a ``storage``."""
        raise NotImplementedError(f"{type(self).__name__} records with its own round trip")

    shares_publish: bool = False
    """Whether ``record_writes`` exists (the broker makes them with ``publish``)."""

    @abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give the lease up at once (a beat stopping), if ``lease`` is still current."""

    @abstractmethod
    async def holder(self) -> tuple[str, float] | None:
        """Who holds the lease and until when (unix seconds); None: nobody."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Give back what the store opened of its own (the broker's connection stays)."""
