"""Model families of the zoo. Importing this package registers every model with timm's registry."""
from . import rim_seq  # noqa: F401
from .rim_seq import SequenceModel

__all__ = ["SequenceModel"]
