"""``Celeriac``: settings, the task registry, and the broker/result store by URL.

Connections are per event loop: each loop that sends or reads results gets
its own broker and result-store instances (``connections``), connected on
first use (sync calls use their thread's private loop; see ``_sync``).

The top of the core: the layers below (``task``, ``canvas``, ``result``,
``sending``) are handed the app and never import this module; what they need
of "the current app" lives in ``request``, which this module sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from functools import cached_property
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
)

from ._sync import at_exit, run_on_every_loop, run_sync
from .backends import backend_class, backend_from_url
from .backends.base import BackendOptions, ResultBackend
from .beat.entries import periodic_entry
from .brokers import broker_from_url
from .brokers.base import Broker, BrokerOptions
from .canvas import Signature, register_builtins, signature
from .connections import LoopConnections
from .control import Control
from .discovery import django_apps, import_object, import_related
from .errors import NotRegistered
from .protocol import Outgoing
from .request import current_app, current_app_if_any, set_current_app, set_default_app
from .result import AsyncResult
from .routing import bindings
from .sending import SendOptions, build_outgoing, publish
from .serialization import Codec
from .settings import Settings
from .signals import Signal
from .signals import import_modules as import_modules_signal
from .sqlite.url import DEFAULT_URL
from .task import AsyncTask, Task, task_class
from .transactions.callers import pin
from .transactions.current import enlisting
from .transactions.enlist import enlistment_for

P = ParamSpec("P")
R = TypeVar("R")
if TYPE_CHECKING:
    from .worker.middleware import Middleware

_DATABASE_BROKERS = ("sqlite", "memory", "postgresql", "postgres")
"""Brokers whose database holds the results too when ``result_backend`` is not set."""

logger = logging.getLogger("celeriac")
Packages = Callable[[], Iterable[str]] | Iterable[str] | None
"""What ``autodiscover_tasks`` takes: package names, a callable giving them, or None."""

__all__ = ["Celeriac", "Celery", "current_app", "shared_task"]


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class _BoundTaskDecorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


class Celeriac:
    """A task queue application (Celery's ``Celery`` class; ``Celery`` is an alias)."""

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] | None = None,
        config_source: object | str | None = None,
        set_as_current: bool = True,
        **settings: Any,
    ):
        self.main = main or "__main__"
        self.conf = Settings()
        self.conf.load_environment()
        if config_source is not None:
            self.config_from_object(config_source)
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["result_backend"] = backend
        if include is not None:
            settings["include"] = list(include)
        self.conf.update(settings)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopConnections] = (
            weakref.WeakKeyDictionary()
        )
        self._codec: Codec | None = None
        self._reply_queue: tuple[tuple[str | None, str | None, int], str | None] | None = None
        """((broker URL, result_backend, pid), reply queue): see ``reply_queue``."""
        self._autodiscover: list[tuple[Packages, str]] = []
        """``autodiscover_tasks`` calls waiting for ``import_modules``."""
        self.on_configure = Signal(name="app.on_configure")
        self.on_after_configure = Signal(name="app.on_after_configure", providing_args={"source"})
        self.on_after_finalize = Signal(name="app.on_after_finalize")
        self.on_after_fork = Signal(name="app.on_after_fork")
        self.finalized = False
        self.task_cls: type[Task[Any, Any]] | None = None
        """The class of sync tasks declared without ``base=`` (Celery's ``task_cls``; the
        Django fixup sets ``celeriac.contrib.django.DjangoTask``); None: ``Task``."""
        if os.environ.get("DJANGO_SETTINGS_MODULE"):  # Django's own modules load only then
            from .contrib.django import fixup as django_fixup

            if django_fixup.wanted():
                django_fixup.install(self)
        register_builtins(self)
        self._builtins = frozenset(self.tasks)
        for fn, options in _shared_tasks:
            self._register(fn, options)
        if set_as_current:
            self.set_current()
        at_exit(self.close)

    def __repr__(self) -> str:
        return f"<Celeriac {self.main}>"

    def set_current(self) -> None:
        set_current_app(self)

    # -- configuration -------------------------------------------------------
    def config_from_object(self, obj: object | str, namespace: str | None = None) -> None:
        if isinstance(obj, str):
            obj = import_object(obj)
        self.conf.config_from_object(obj, namespace)
        self._codec = None

    def add_middleware(
        self,
        middleware: Middleware | type[Middleware],
        *,
        before: type[Middleware] | None = None,
        after: type[Middleware] | None = None,
    ) -> None:
        """Run ``middleware`` in this app's workers (Dramatiq's ``add_middleware``):
        right before or after the first default of a class (e.g. ``before=Retries``),
        else after the defaults. Adds to the ``worker_middleware`` setting."""
        from .worker.middleware import Placement  # the worker's modules load only when asked

        entry = Placement(middleware, before=before, after=after)
        self.conf.worker_middleware = [*self.conf.worker_middleware, entry]

    @property
    def broker_url(self) -> str:
        return self.conf.broker_url or DEFAULT_URL

    @property
    def result_backend_url(self) -> str:
        """The result store's URL. None: beside the messages of a broker that is a
        database (SQLite, PostgreSQL, memory), else SQLite. A bare ``rpc://`` means the
        RabbitMQ broker's own server and vhost, as in Celery."""
        backend = self.conf.result_backend
        scheme = self.broker_url.partition("://")[0].lower()
        if backend and backend.rstrip("/") == "rpc:" and scheme in ("amqp", "amqps"):
            return self.broker_url
        if backend:
            return backend
        return self.broker_url if scheme in _DATABASE_BROKERS else DEFAULT_URL

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            accept = list(self.conf.accept_content)
            self._codec = Codec(accept)
        return self._codec

    @cached_property
    def control(self) -> Control:
        """Remote control of the workers: ``app.control.inspect().ping()``, ``revoke``, ..."""
        return Control(self)

    @property
    def reply_queue(self) -> str | None:
        """What this process's tasks carry as ``reply_to``: the queue results come
        back on, with an ``rpc://`` result store; None with stores that are read.
        Worked out once per process and pair of URLs (every send reads it)."""
        key = (self.conf.broker_url, self.conf.result_backend, os.getpid())
        known = self._reply_queue
        if known is None or known[0] != key:
            url = self.result_backend_url
            known = (key, backend_class(url).reply_queue_for(url))
            self._reply_queue = known
        return known[1]

    def broker_options(self) -> BrokerOptions:
        return BrokerOptions(
            lease_timeout=self.conf.broker_lease_timeout,
            max_deliveries=self.conf.broker_max_deliveries,
            connect_timeout=self.conf.broker_connection_timeout,
            # RabbitMQ binds the queues of task_queues as they say (celeriac.routing).
            transport_options={
                **self.conf.broker_transport_options,
                "bindings": bindings(self.conf),
            },
        )

    def backend_options(self) -> BackendOptions:
        accept = self.conf.result_accept_content or self.conf.accept_content
        return BackendOptions(
            expires=self.conf.result_expires,
            serializer=self.conf.result_serializer,
            accept_content=tuple({*accept, self.conf.result_serializer}),
        )

    # -- the registry ----------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self, fn: None = None, /, *, bind: Literal[True], **options: Any
    ) -> _BoundTaskDecorator: ...
    @overload
    def task(
        self, fn: None = None, /, *, bind: Literal[False] = False, **options: Any
    ) -> _TaskDecorator: ...
    def task(
        self, fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(**options)``."""
        options["bind"] = bind
        if fn is not None:
            return self._register(fn, options)
        return lambda f: self._register(f, options)

    def _register(self, fn: Callable[..., Any], options: Mapping[str, Any]) -> Task[Any, Any]:
        opts = dict(options)
        name = opts.pop("name", None) or self.gen_task_name(fn)
        annotations = (
            self.conf.task_annotations.get(name) or self.conf.task_annotations.get("*") or {}
        )
        opts = {**annotations, **opts}
        opts.pop("shared", None)
        cls = task_class(opts.pop("base", None), fn, self.task_cls)
        try:
            task = cls(self, fn, name=name, **opts)
        except TypeError as exc:
            raise TypeError(f"@task({name}): {exc}") from None
        self.tasks[name] = task
        return task

    def gen_task_name(self, fn: Callable[..., Any]) -> str:
        """``module.function``; a script run with ``python -m pkg.mod`` still says ``pkg.mod``."""
        module = getattr(fn, "__module__", None) or self.main
        if module == "__main__":
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            module = spec.name if spec is not None and spec.name != "__main__" else self.main
        return f"{module}.{fn.__qualname__}"

    @property
    def user_tasks(self) -> dict[str, Task[Any, Any]]:
        """The registered tasks, without the built-in ones (``celery.map``, ...)."""
        return {name: t for name, t in self.tasks.items() if name not in self._builtins}

    def register_task(self, task: Task[Any, Any]) -> Task[Any, Any]:
        self.tasks[task.name] = task
        return task

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(f"task {name!r} is not registered with app {self.main!r}") from None

    def finalize(self) -> None:
        """Send the app's own signals once, as Celery's ``finalize`` does when a worker or
        beat starts: ``on_configure``, ``on_after_configure`` (``source``: the settings),
        ``on_after_finalize``. A receiver sees the whole configuration and may add to it
        (``add_periodic_task``). celeriac reads its settings eagerly, so all three come
        at this point rather than when the settings are first read."""
        if self.finalized:
            return
        self.finalized = True
        self.on_configure.send(sender=self)
        self.on_after_configure.send(sender=self, source=self.conf)
        self.on_after_finalize.send(sender=self)

    def import_modules(self) -> None:
        """Import ``imports`` and ``include``, and the modules ``autodiscover_tasks`` asked
        for, so their tasks register (the worker does this when it starts). First the
        ``import_modules`` signal, whose receivers' errors are raised, as in Celery."""
        for _, response in import_modules_signal.send(sender=self):
            if isinstance(response, Exception):
                raise response
        for module in (*self.conf.imports, *self.conf.include):
            importlib.import_module(module)
        waiting, self._autodiscover = self._autodiscover, []
        for packages, related_name in waiting:
            self.autodiscover_tasks(packages, related_name, force=True)

    def autodiscover_tasks(
        self,
        packages: Packages = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.<related_name>`` for each package that has it (Celery's
        ``autodiscover_tasks``). ``packages`` may be a callable, called then (for
        ``lambda: settings.INSTALLED_APPS``); None: Django's installed apps. Lazily, when
        the worker starts (``import_modules``), unless ``force``."""
        if not force:
            self._autodiscover.append((packages, related_name))
            return
        if callable(packages):
            packages = packages()
        for package in django_apps() if packages is None else packages:
            import_related(package, related_name)

    # -- connections -------------------------------------------------------------
    def connections(self) -> LoopConnections:
        """The running loop's broker and result store (made on first use, each
        connected when first asked for)."""
        loop = asyncio.get_running_loop()
        conns = self._connections.get(loop)
        if conns is None:
            conns = LoopConnections(
                broker_from_url(self.broker_url, self.broker_options()),
                backend_from_url(self.result_backend_url, self.backend_options()),
                self.reply_queue,
            )
            self._connections[loop] = conns
            self.conf.warn_unused(logger)
        return conns

    async def abroker(self) -> Broker:
        """This loop's broker, connected (``connections().abroker()``)."""
        return await self.connections().abroker()

    async def abackend(self) -> ResultBackend:
        """This loop's result store, connected (``connections().abackend()``)."""
        return await self.connections().abackend()

    async def aclose(self) -> None:
        """Close this loop's connections."""
        conns = self._connections.pop(asyncio.get_running_loop(), None)
        if conns is not None:
            await conns.close()

    def close(self) -> None:
        """Close the connections that sync calls opened, on every loop."""
        if self._connections:
            run_on_every_loop(lambda _loop: self.aclose())

    # -- sending -----------------------------------------------------------------
    def transaction(self, conn: Any) -> contextlib.AbstractContextManager[object]:
        """Send into the application's open database transaction on ``conn``, until the block
        ends: every ``delay``, ``apply_async``, ``send_task`` and group made in it runs if and
        only if that transaction commits (docs/transactions.md).

        ``conn`` is the application's psycopg, sqlite3, SQLAlchemy or Django connection.
        With the PostgreSQL broker the messages are rows of its table; with any other
        broker, rows of the outbox in ``outbox_url``, which ``celeriac outbox-relay``
        publishes after the commit. The block neither commits nor rolls back.
        """
        return enlisting(enlistment_for(self, pin(conn)))

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (it need not be registered here; eager mode does not apply)."""
        outgoing = self._by_name(name, args, kwargs, options)
        run_sync(lambda: publish(self, [outgoing]))
        return AsyncResult(outgoing.message.id, self, name)

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        outgoing = self._by_name(name, args, kwargs, options)
        await publish(self, [outgoing])
        return AsyncResult(outgoing.message.id, self, name)

    def _by_name(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> Outgoing:
        opts = SendOptions.from_kwargs(options)
        return build_outgoing(self, name, args or (), kwargs or {}, opts, self.tasks.get(name))

    def build_outgoing(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        opts: SendOptions,
        task: Task[Any, Any] | None = None,
    ) -> Outgoing:
        """The message for one call, as :func:`celeriac.sending.build_outgoing` makes it."""
        return build_outgoing(self, name, args, kwargs, opts, task)

    def send_many(self, signatures: Iterable[Signature[Any]]) -> list[AsyncResult[Any]]:
        """Send many task calls in one broker round trip."""
        sigs = list(signatures)
        return run_sync(lambda: self.asend_many(sigs))

    async def asend_many(self, signatures: Iterable[Signature[Any]]) -> list[AsyncResult[Any]]:
        batch = [sig.outgoing(self) for sig in signatures]
        await publish(self, batch)
        return [AsyncResult(o.message.id, self, o.message.task) for o in batch]

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, self)

    def signature(self, *args: Any, **kwargs: Any) -> Signature[Any]:
        """Celery's ``app.signature``: :func:`celeriac.signature` in this app."""
        kwargs["app"] = self
        return signature(*args, **kwargs)

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Signature[Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **opts: Any,
    ) -> str:
        """Add an entry to ``beat_schedule`` (Celery's method): ``sig`` with ``args``
        prepended and ``kwargs`` merged, every ``schedule`` (seconds, a timedelta, a
        ``crontab`` or ``solar``). The key is ``name``, else the signature's repr, so
        adding the same call twice keeps one entry (unnamed: with a warning). Returns it."""
        key, entry = periodic_entry(schedule, sig, args, kwargs, name, opts)
        if name is None and key in self.conf.beat_schedule:
            logger.warning(
                "Periodic task key=%r shadowed a previous unnamed periodic task. "
                "Pass a name kwarg to add_periodic_task to silence this warning.",
                key,
            )
        self.conf.beat_schedule[key] = entry
        return key


Celery = Celeriac

_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []

set_default_app(lambda: Celeriac("default", set_as_current=False))


class _SharedTask:
    """Stands for the task of the same name in whichever app is current."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(current_app().tasks[self._name], attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return current_app().tasks[self._name](*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@shared_task: {self._name}>"


@overload
def shared_task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...
@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task(*, bind: Literal[True], **options: Any) -> _BoundTaskDecorator: ...
@overload
def shared_task(*, bind: Literal[False] = False, **options: Any) -> _TaskDecorator: ...
def shared_task(
    fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
) -> Any:
    """A task for every app, present and future (Celery's ``shared_task``)."""
    options["bind"] = bind

    def register(f: Callable[..., Any]) -> Any:
        _shared_tasks.append((f, options))
        name = options.get("name") or f"{f.__module__}.{f.__qualname__}"
        app = current_app_if_any()
        if app is not None:
            app._register(f, options)
        return _SharedTask(name)

    return register(fn) if fn is not None else register
