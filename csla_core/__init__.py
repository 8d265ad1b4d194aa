"""CSLA: text-driven portrait editing with StyleGAN2 + e4e and CLIP-StyleGAN latent alignment.

Entry point: ``csla_core.load_pipeline(...)``. Importing this package loads no model and
downloads nothing.
"""

from .errors import CSLAError, InputImageError, NoFaceError, PromptError, WeightsError
from .loading import load_pipeline
from .pipeline import CSLAPipeline

__all__ = [
    "CSLAError",
    "CSLAPipeline",
    "InputImageError",
    "NoFaceError",
    "PromptError",
    "WeightsError",
    "load_pipeline",
]
__version__ = "0.1.0"
