"""nn.Module heads, one file per geometry family; importing this package registers them all."""
from .base import Head, InverseTemperature, default_embedding_dim
from .cosine import CosineHead, NormFaceHead, SphericalHead
from .standard import StandardHead
