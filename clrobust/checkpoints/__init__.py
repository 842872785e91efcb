"""Loading and saving checkpoints."""

from clrobust.checkpoints.native import is_native, load_network, read_metadata, save_network

__all__ = ["is_native", "load_network", "read_metadata", "save_network"]
