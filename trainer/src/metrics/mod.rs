//! Scoring models and features: a classifier's outputs over an image set, multi-class and
//! multi-label metrics, kNN accuracy and embedding spread of features, calibration (reliability
//! diagram, ECE) and group-bootstrap intervals.
//!
//! What every stage measures with — pretraining's health signal, fine-tuning's validation, the
//! int8 export's comparison with fp32, the evaluation and its plots — so that they all measure
//! alike. It never trains, never writes files, and knows no stage.

mod classification;
mod knn;
mod multi_label;
mod ood;
mod outputs;
mod reliability;

pub use classification::{
    argmax, balanced_accuracy, confusion_matrix, predictions, top_k_accuracy, ClassificationMetrics,
};
// One implementation of AUC, ROC and group-bootstrap intervals, shared with the runtime's
// site acceptance check (`scanside validate`).
pub use knn::{embedding_spread, knn_accuracy, knn_predict, knn_scores};
pub use multi_label::{Labels, MultiLabelMetrics, MIN_POSITIVES_FOR_MEAN_AUC};
pub use ood::{fit_ood_guard, OodFeatures, OodMethod};
pub use outputs::{embed, predict, predict_logits, sigmoid_rows};
pub use reliability::{reliability, ReliabilityBin};
pub use scanside_runtime::metrics::{
    group_bootstrap, group_bootstrap_shift, group_members, roc_auc, roc_curve, Interval,
};
