"""The study's error type."""

from __future__ import annotations

from peftlab.errors import PeftlabError


class StudyError(PeftlabError):
    """A study could not be set up or read: unknown task or method, bad option, unreadable results."""
