"""Importing the user's modules by name: a configuration object, and the task modules
``autodiscover_tasks`` finds beside installed packages (Celery's rules for both).

Only names the user's own code or settings give are imported here, never a name
read from a message.
"""

from __future__ import annotations

import importlib
import sys

from .errors import ConfigurationError

__all__ = ["django_apps", "import_object", "import_related"]


def import_related(package: str, related_name: str) -> None:
    """Import ``package.related_name`` if it exists (Celery's ``find_related_module``:
    an `INSTALLED_APPS` entry may name an app config class inside the package)."""
    try:
        importlib.import_module(package)
    except ModuleNotFoundError:
        package = package.rpartition(".")[0]
        if not package:
            raise
    name = f"{package}.{related_name}"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # something the module imports is missing: say so
            raise


def django_apps() -> list[str]:
    """The names of Django's installed apps, when Django is configured; else none."""
    if "django" not in sys.modules:
        return []
    from django.apps import apps  # type: ignore[import-not-found, import-untyped, unused-ignore]

    return [config.name for config in apps.get_app_configs()]


def import_object(ref: str) -> object:
    """``module`` or ``module:attr`` (``config_from_object``'s string form)."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import config module {module_name!r}: {exc}") from exc
    return getattr(module, attr) if attr else module
