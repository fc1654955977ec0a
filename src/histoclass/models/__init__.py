"""Models: backbone factory over timm and torchvision, head presets, and the saved-model format."""

from histoclass.models import foundation  # noqa: F401  (registers the foundation models by short name)
from histoclass.models.factory import Classifier, create_model
from histoclass.models.heads import HEADS

__all__ = ["HEADS", "Classifier", "create_model"]
