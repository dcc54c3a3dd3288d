"""chatforge: build a ChatGPT-style assistant from zero, and watch every step."""
from chatforge.common import __version__

__all__ = ["__version__"]
