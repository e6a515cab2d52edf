"""Evaluation the way the papers measure it, with scikit-learn's conventions (``f(y_true, y_prob, ...)``).

* calibration (seed 000 Table 3): :func:`expected_calibration_error`, :func:`calibration_bins`,
  :func:`fit_temperature`, :class:`TemperatureScaler`
* uncertainty (seed 000 Table 1): :func:`confidence_auroc`
* open-set retrieval (seed 000 Table 4): :func:`map_at_r`, :func:`r_precision`,
  :func:`precision_at_1`, :func:`retrieval_scores`, :func:`nearest_neighbors`
* verification (seed 001): :func:`verification_accuracy`, :func:`tar_at_far`,
  :func:`verification_roc`, :func:`sample_pairs`, :func:`pair_scores`
"""
from .calibration import (
    CalibrationBins,
    TemperatureScaler,
    calibration_bins,
    confidence_auroc,
    expected_calibration_error,
    fit_temperature,
)
from .retrieval import map_at_r, nearest_neighbors, precision_at_1, r_precision, retrieval_scores
from .verification import pair_scores, sample_pairs, tar_at_far, verification_accuracy, verification_roc

__all__ = [
    "CalibrationBins",
    "TemperatureScaler",
    "calibration_bins",
    "confidence_auroc",
    "expected_calibration_error",
    "fit_temperature",
    "map_at_r",
    "nearest_neighbors",
    "precision_at_1",
    "r_precision",
    "retrieval_scores",
    "pair_scores",
    "sample_pairs",
    "tar_at_far",
    "verification_accuracy",
    "verification_roc",
]
