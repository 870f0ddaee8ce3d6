"""Sketch studio: a local web page where you draw and see, stroke by stroke, the model's guesses and
the nearest drawings of its index (`sketchembed serve`). ``create_app`` builds the FastAPI app around
a :class:`Studio`."""

from sketchembed.studio.app import create_app
from sketchembed.studio.service import Studio

__all__ = ["Studio", "create_app"]
