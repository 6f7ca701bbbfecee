"""peftlab's exception types. Every error a user can trigger is one of these, raised early with a fix."""

from __future__ import annotations

import os
import sys
import warnings


class PeftlabError(Exception):
    """Base class of every error peftlab raises on purpose."""


class ConfigError(PeftlabError, ValueError):
    """A method config was constructed with an invalid value (raised at construction time)."""


class TargetError(PeftlabError):
    """A target specification matched nothing, or matched a module the method cannot adapt."""


class AdapterLoadError(PeftlabError):
    """An adapter file does not fit the base model, or is not a format peftlab reads."""


class AdapterSaveError(PeftlabError):
    """An adapter cannot be written where asked (the path is a file, a folder without write permission, ...) or
    holds values that should not be saved (NaN or infinity)."""


class AdapterStateError(PeftlabError):
    """An operation does not fit the current adapter state (unknown name, merged adapter, ...)."""


class AdapterCombineError(PeftlabError, ValueError):
    """Adapters cannot be combined as asked (add_weighted_adapter: rule, weights, ranks or configs that misfit)."""


class ContractError(PeftlabError, TypeError):
    """A method does not meet the plug-in contract (raised when it is registered, naming what is missing)."""


class AdapterFileWarning(UserWarning):
    """An adapter file was read or written although something was unusual: a config edited after its save, or
    tensors cast or kept non-finite because the caller asked for it."""


def warn_caller(message: str, category: type[Warning] = AdapterFileWarning) -> None:
    """warnings.warn, pointing at the first caller outside the peftlab package."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2  # stacklevel 2: the frame that called warn_caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
