//! Classification metrics: the confusion matrix and what it gives per class.

use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one class, and how many samples truly belong to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// A confusion matrix (`matrix[true][predicted]`) and the metrics derived from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub classes: Vec<String>,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: Vec<Vec<u64>>,
}

impl Classification {
    /// Metrics of `predicted` against `truth`. A class never predicted has precision 0, one
    /// with no samples has recall 0 (scikit-learn's `zero_division=0`).
    pub fn new(classes: &[String], truth: &[usize], predicted: &[usize]) -> Self {
        let k = classes.len();
        let mut confusion = vec![vec![0u64; k]; k];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let tp = confusion[c][c];
                let support: u64 = confusion[c].iter().sum();
                let predicted_c: u64 = confusion.iter().map(|row| row[c]).sum();
                let precision = ratio(tp, predicted_c);
                let recall = ratio(tp, support);
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    class: classes[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
        Classification {
            classes: classes.to_vec(),
            accuracy: ratio(correct, truth.len() as u64),
            macro_f1: per_class.iter().map(|m| m.f1).sum::<f64>() / k.max(1) as f64,
            per_class,
            confusion,
        }
    }

    /// A plain-text report: accuracy, a per-class table and the confusion matrix.
    pub fn to_text(&self) -> String {
        let total: u64 = self.per_class.iter().map(|m| m.support).sum();
        let correct: u64 = (0..self.classes.len()).map(|c| self.confusion[c][c]).sum();
        let width = self
            .classes
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(5)
            .clamp(5, 30);
        let mut s = format!(
            "accuracy {:.4} ({correct}/{total})   macro F1 {:.4}\n\n",
            self.accuracy, self.macro_f1
        );
        s += &format!("{:<width$}  precision  recall      f1  support\n", "class");
        for m in &self.per_class {
            s += &format!(
                "{:<width$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n",
                m.class, m.precision, m.recall, m.f1, m.support
            );
        }
        s += "\nconfusion matrix (rows: true class, columns: predicted)\n";
        let cell = self
            .confusion
            .iter()
            .flatten()
            .map(|v| v.to_string().len())
            .max()
            .unwrap_or(1)
            .max(4);
        s += &format!("{:<width$}", "");
        for c in 0..self.classes.len() {
            s += &format!(" {:>cell$}", format!("[{c}]"));
        }
        s += "\n";
        for (c, row) in self.confusion.iter().enumerate() {
            s += &format!("{:<width$}", format!("[{c}] {}", self.classes[c]));
            for v in row {
                s += &format!(" {v:>cell$}");
            }
            s += "\n";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        let classes = vec!["ants".to_string(), "bees".to_string(), "wasps".to_string()];
        // truth:     0 0 0 1 1 2
        // predicted: 0 0 1 1 0 0
        let m = Classification::new(&classes, &[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 0, 0]);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![1, 0, 0]]
        );
        assert!((m.accuracy - 0.5).abs() < 1e-12);
        assert!((m.per_class[0].precision - 0.5).abs() < 1e-12);
        assert!((m.per_class[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[0].f1 - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(m.per_class[2].precision, 0.0);
        assert_eq!(m.per_class[2].f1, 0.0);
        assert_eq!(m.per_class[1].support, 2);
        let text = m.to_text();
        assert!(text.contains("accuracy 0.5000 (3/6)"), "{text}");
        assert!(text.contains("[2] wasps"), "{text}");
    }
}
