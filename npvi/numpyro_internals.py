"""The private NumPyro names npvi uses, in one place, each with the reason it is needed.

Nothing else in npvi imports a private name of NumPyro or reads a private attribute of a
NumPyro object. If a NumPyro release renames one of these, this module is the one to mend.
"""

from __future__ import annotations

from typing import Any

from numpyro import handlers

# The stack of active effect handlers. NumPyro has no public way to ask which handlers are
# active, and npvi's layers must know two things about the run they are in: whether an
# enclosing ``trace`` has already recorded a layer of the same name (a duplicate name, which
# NumPyro would report as a bare AssertionError about the kernel site), and whether the model
# is being replayed against a guide (SVI), where a missing posterior deserves a warning.
from numpyro.primitives import _PYRO_STACK


def traced_site(name: str) -> dict[str, Any] | None:
    """The site called ``name`` already recorded in this run by an enclosing ``trace``, if any."""
    for handler in _PYRO_STACK:
        if isinstance(handler, handlers.trace) and name in handler.trace:
            return handler.trace[name]
    return None


def replaying() -> bool:
    """Whether the model runs under a ``replay`` handler (as SVI replays it against the guide)."""
    return any(isinstance(handler, handlers.replay) for handler in _PYRO_STACK)


def any_handler_active() -> bool:
    """Whether any effect handler is active (``numpyro.prng_key()`` warns when none is)."""
    return bool(_PYRO_STACK)


def active_plates() -> dict[int, Any]:
    """The enclosing ``numpyro.plate`` handlers by their dim (a KL penalty is summed down to their shape)."""
    import numpyro

    return {handler.dim: handler for handler in _PYRO_STACK if isinstance(handler, numpyro.plate)}
