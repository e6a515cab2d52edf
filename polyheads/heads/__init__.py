"""nn.Module heads, one file per geometry family; importing this package registers them all."""
from .base import Head, InverseTemperature, default_embedding_dim
from .cosine import CosineHead, NormFaceHead, SphericalHead
from .margin import ArcFaceHead, CosFaceHead, MarginHead, SphereFaceHead
from .center import CenterLossHead
from .triplet import TripletHead
from .poincare import PoincareHead
from .polytope import CubeHead, HadamardHead, OrthoplexHead, PolytopeHead, SimplexHead
from .standard import StandardHead
from .vmf import VMFHead
from .sharded import ShardedHead
