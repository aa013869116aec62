"""dassl_ext: a method-agnostic engine for CLIP prompt learning (Dassl-compatible surface)."""

from dassl_ext.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
