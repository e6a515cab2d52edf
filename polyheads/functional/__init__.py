"""Pure tensor math: no state, no nn.Module, no timm. Every formula cites its seed and equation."""
from .margins import additive_angular_margin
from .spherical import cosine_distance, cosine_logits, l2_normalize
