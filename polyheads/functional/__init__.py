"""Pure tensor math: no state, no nn.Module, no timm. Every formula cites its seed and equation."""
from .margins import (
    additive_angular_margin,
    center_delta,
    center_loss,
    chebyshev_cos_multiple,
    cosine_margin,
    margin_cross_entropy,
    margin_cross_entropy_from_logits,
    margin_logits,
    mine_triplets,
    pairwise_squared_distances,
    sphereface_lambda,
    sphereface_psi,
    triplet_loss,
)
from .poincare import clip_feature_norm, poincare_distance, poincare_mlr_logits, stable_norm, transport_from_origin
from .poincare import expmap0
from .polytopes import (
    POLYTOPE_KINDS,
    cube_codes,
    polytope_angle,
    polytope_capacity,
    polytope_dim,
    polytope_min_angle,
    polytope_vertices,
)
from .spherical import cosine_distance, cosine_logits, l2_normalize
from .bessel import (
    bessel_ratio,
    bessel_ratio_bounds,
    bessel_ratio_over_kappa,
    log_vmf_normalizer,
    log_vmf_normalizer_difference,
)
from .vmf import sample_vmf, vmf_bound_logits, vmf_bound_logsumexp, vmf_loss, vmf_mean, vmf_predictive_log_probs
