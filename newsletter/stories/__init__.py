"""Where stories come from: the StorySource protocol, its kinds, and gather()."""

from __future__ import annotations

from newsletter.stories.base import SourceResult, StorySource, gather

__all__ = ["SourceResult", "StorySource", "gather"]
