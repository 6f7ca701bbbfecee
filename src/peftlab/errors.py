"""peftlab's exception types. Every error a user can trigger is one of these, raised early with a fix."""

from __future__ import annotations


class PeftlabError(Exception):
    """Base class of every error peftlab raises on purpose."""


class ConfigError(PeftlabError, ValueError):
    """A method config was constructed with an invalid value (raised at construction time)."""


class TargetError(PeftlabError):
    """A target specification matched nothing, or matched a module the method cannot adapt."""


class AdapterLoadError(PeftlabError):
    """An adapter file does not fit the base model, or is not a format peftlab reads."""


class AdapterSaveError(PeftlabError):
    """An adapter cannot be written where asked (the path is a file, not a folder)."""


class AdapterStateError(PeftlabError):
    """An operation does not fit the current adapter state (unknown name, merged adapter, ...)."""


class AdapterCombineError(PeftlabError, ValueError):
    """Adapters cannot be combined as asked (add_weighted_adapter: rule, weights, ranks or configs that misfit)."""


class ContractError(PeftlabError, TypeError):
    """A method does not meet the plug-in contract (raised when it is registered, naming what is missing)."""
