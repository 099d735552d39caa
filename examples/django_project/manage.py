#!/usr/bin/env python
# mypy: ignore-errors
# (Django ships no type hints: mypy --strict has nothing to check here)
"""Django's command line for the example project (``python manage.py test``)."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
