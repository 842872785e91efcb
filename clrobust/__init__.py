"""clrobust: how adversarial training changes what an image encoder learns, layer by layer."""

__version__ = "0.1.0"

from clrobust.errors import ClrobustError  # noqa: E402

__all__ = ["ClrobustError", "__version__"]
