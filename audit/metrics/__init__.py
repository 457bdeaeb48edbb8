"""Metrics of an audit: plain functions over NumPy arrays.

- ``robustness``: n_i, SAR_i, SAN (study 1), SAR_c and the CMR (study 2),
  exceedance curves, and ``robustness_summary``, the per-level block of report.json.
- ``intervals``: Wilson and Clopper-Pearson intervals for binomial rates;
  cluster-aware intervals (design-effect Wilson, design-effect Clopper-Pearson,
  bootstrap over samples) for rates pooled over samples; one-sided exact
  bounds of a pooled rate (``exact_lower_bound``, ``exact_upper_bound``).
- ``hypothesis``: the two-proportion Z-test for CMR entries (study 2's
  formula, draws as independent trials: not for decisions) and DeLong's test
  for two correlated AUCs.
- ``paired``: paired, cluster-aware comparison of two models' SARs on the same
  samples and keyed draws (``paired_sar_test``, ``paired_noninferiority``).
- ``classification``: clean performance (AUC, accuracy, sensitivity,
  specificity, confusion matrix, per-class and macro F1).
- ``segmentation``: Dice of binary masks.
- ``contours``: HD95, the contour error Error_reg, Dice of filled contours and segmentation flips (study 4).
- ``detection``: detection-head output conventions, LUNA16 lesion matching, FROC and CPM with scan-bootstrap
  intervals, lesion-level flips, confidence histograms per level (study 3).
- ``ood``: AUROC of an OOD detector with a cluster-bootstrap interval over source samples (study 4).

Bad input raises ``audit.errors.InputError`` naming the argument and the expectation.
"""

from __future__ import annotations

from audit.metrics.classification import (
    PerClassScores,
    accuracy,
    auc,
    binary_performance,
    confusion_matrix,
    macro_f1,
    precision_recall_f1,
    sensitivity_specificity,
)
from audit.metrics.contours import (
    SegmentationFlips,
    contour_error,
    fill_contours,
    filled_dice,
    hausdorff_percentile,
    hd95,
    landmark_error,
    segmentation_flips,
    surface_distances,
)
from audit.metrics.detection import (
    FP_RATES,
    Candidates,
    ConfidenceHistograms,
    Froc,
    FrocInterval,
    LesionFlips,
    Lesions,
    ScanMatch,
    candidates_from_boxes,
    candidates_from_points,
    confidence_histograms,
    froc,
    froc_bootstrap,
    heatmap_peaks,
    interpolate_sensitivity,
    lesion_flips,
    match_candidates,
    nms,
)
from audit.metrics.hypothesis import (
    AUCVariance,
    DeLongTest,
    ZTest,
    DELONG_MIN_PER_CLASS,
    cmr_z_test,
    delong_auc_variance,
    delong_not_computable,
    delong_test,
    two_proportion_z_test,
)
from audit.metrics.intervals import (
    BINOMIAL_METHODS,
    POOLED_METHODS,
    binomial_interval,
    bootstrap_interval,
    ClusterRate,
    clopper_pearson_interval,
    cluster_design_effect,
    cluster_exact_interval,
    cluster_rate_interval,
    cluster_wilson_interval,
    design_effect,
    effective_draws,
    exact_lower_bound,
    exact_upper_bound,
    pooled_rate_interval,
    wilson_interval,
)
from audit.metrics.ood import OodAuroc, ood_auroc, sample_ood_auroc
from audit.metrics.paired import (
    PAIRED_METHODS,
    NonInferiorityTest,
    PairedSARTest,
    paired_noninferiority,
    paired_sar_test,
)
from audit.metrics.robustness import (
    DEFAULT_THRESHOLDS,
    RobustnessSummary,
    class_attack_rate,
    class_attack_rate_intervals,
    cmr_counts,
    confusion_matrix_for_robustness,
    exceedance_curve,
    flip_counts,
    robustness_summary,
    sample_attack_rate,
    san_fraction,
    successful_attack_number,
)
from audit.metrics.segmentation import batch_dice, dice

__all__ = [
    "AUCVariance",
    "BINOMIAL_METHODS",
    "DEFAULT_THRESHOLDS",
    "DeLongTest",
    "NonInferiorityTest",
    "PAIRED_METHODS",
    "POOLED_METHODS",
    "PairedSARTest",
    "PerClassScores",
    "RobustnessSummary",
    "ZTest",
    "accuracy",
    "auc",
    "batch_dice",
    "binary_performance",
    "binomial_interval",
    "bootstrap_interval",
    "class_attack_rate",
    "class_attack_rate_intervals",
    "clopper_pearson_interval",
    "cluster_exact_interval",
    "cluster_wilson_interval",
    "cmr_counts",
    "cmr_z_test",
    "confusion_matrix",
    "confusion_matrix_for_robustness",
    "DELONG_MIN_PER_CLASS",
    "delong_auc_variance",
    "delong_not_computable",
    "delong_test",
    "design_effect",
    "ClusterRate",
    "cluster_design_effect",
    "cluster_rate_interval",
    "sample_ood_auroc",
    "dice",
    "effective_draws",
    "exact_lower_bound",
    "exact_upper_bound",
    "exceedance_curve",
    "flip_counts",
    "macro_f1",
    "paired_noninferiority",
    "paired_sar_test",
    "pooled_rate_interval",
    "precision_recall_f1",
    "robustness_summary",
    "sample_attack_rate",
    "san_fraction",
    "sensitivity_specificity",
    "successful_attack_number",
    "two_proportion_z_test",
    "wilson_interval",
    "Candidates",
    "candidates_from_boxes",
    "candidates_from_points",
    "confidence_histograms",
    "ConfidenceHistograms",
    "contour_error",
    "fill_contours",
    "filled_dice",
    "FP_RATES",
    "Froc",
    "froc",
    "froc_bootstrap",
    "FrocInterval",
    "hausdorff_percentile",
    "hd95",
    "heatmap_peaks",
    "interpolate_sensitivity",
    "landmark_error",
    "lesion_flips",
    "LesionFlips",
    "Lesions",
    "match_candidates",
    "nms",
    "ood_auroc",
    "OodAuroc",
    "ScanMatch",
    "segmentation_flips",
    "SegmentationFlips",
    "surface_distances",
]
