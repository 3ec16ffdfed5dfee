"""alchemy: the background job service of the AI content platform."""

__version__ = "0.1.0"
