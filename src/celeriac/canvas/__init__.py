"""Canvas: signatures and the flows built from them (Celery's canvas guide).

``Signature`` (``task.s()``, ``.si()``), ``chain`` (also ``a | b``), ``group``,
``chord``, ``xmap`` / ``xstarmap`` / ``chunks`` (``task.map``, ``task.starmap``,
``task.chunks``).
"""

from .flows import chain, chord, group
from .maps import chunks, register_builtins, xmap, xstarmap
from .signature import Signature, as_signature_list, maybe_signature, signature

__all__ = [
    "Signature",
    "as_signature_list",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "register_builtins",
    "signature",
    "xmap",
    "xstarmap",
]
