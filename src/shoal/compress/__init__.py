"""Gradient compression applied on the data-parallel all-reduce."""

from shoal.compress.hooks import register_hook

__all__ = ["register_hook"]
