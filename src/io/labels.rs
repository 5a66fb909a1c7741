//! ImageNet class labels and Keras's `decode_predictions`.
//!
//! The index is Keras's own `imagenet_class_index.json` (md5 c2c37ea5...), compiled into the
//! binary so classification works offline.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Classes in the ImageNet top.
pub const IMAGENET_CLASS_COUNT: usize = 1000;

const CLASS_INDEX_JSON: &str = include_str!("../../weights/imagenet_class_index.json");

/// One ImageNet class: its WordNet id and Keras's label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNetClass {
    pub wnid: String,
    pub name: String,
}

/// A decoded prediction: class index, WordNet id, label, score.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub index: usize,
    pub wnid: String,
    pub name: String,
    pub score: f32,
}

/// The 1000 classes in index order.
pub fn imagenet_classes() -> &'static [ImageNetClass] {
    static CLASSES: OnceLock<Vec<ImageNetClass>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        parse_class_index(CLASS_INDEX_JSON).expect("the bundled class index is valid")
    })
}

/// Parse Keras's `{"0": ["n01440764", "tench"], ...}` into a list ordered by index.
fn parse_class_index(json: &str) -> std::result::Result<Vec<ImageNetClass>, String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut classes = vec![None; map.len()];
    for (key, value) in map {
        let i: usize = key
            .parse()
            .map_err(|_| format!("bad class index '{key}'"))?;
        let pair = value
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or(format!("class {i}: expected [wnid, name]"))?;
        let s = |v: &serde_json::Value| {
            v.as_str()
                .map(str::to_string)
                .ok_or(format!("class {i}: not a string"))
        };
        let slot = classes
            .get_mut(i)
            .ok_or(format!("class index {i} out of range"))?;
        *slot = Some(ImageNetClass {
            wnid: s(&pair[0])?,
            name: s(&pair[1])?,
        });
    }
    classes
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or(format!("class {i} missing")))
        .collect()
}

/// Keras's `decode_predictions(preds, top)`: for each row of `(N, 1000)` scores, the `top`
/// classes by decreasing score.
pub fn decode_predictions(preds: &Tensor, top: usize) -> Result<Vec<Vec<Prediction>>> {
    let classes = imagenet_classes();
    let [n, c] = preds.shape().dims_n::<2>("decode_predictions input")?;
    if c != classes.len() {
        return Err(Error::Shape(format!(
            "decode_predictions expects (samples, 1000) ImageNet scores, got {}",
            preds.shape()
        )));
    }
    Ok((0..n)
        .map(|i| {
            let row = &preds.data()[i * c..(i + 1) * c];
            top_k(row, top)
                .into_iter()
                .map(|index| Prediction {
                    index,
                    wnid: classes[index].wnid.clone(),
                    name: classes[index].name.clone(),
                    score: row[index],
                })
                .collect()
        })
        .collect())
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_index_is_keras_s() {
        let c = imagenet_classes();
        assert_eq!(c.len(), 1000);
        assert_eq!(
            c[0],
            ImageNetClass {
                wnid: "n01440764".into(),
                name: "tench".into()
            }
        );
        assert_eq!(c[999].name, "toilet_tissue");
        assert_eq!(c[134].name, "crane");
        assert_eq!(c[517].name, "crane");
    }

    #[test]
    fn decodes_top_classes_in_order() {
        let mut scores = vec![0.0f32; 1000];
        scores[3] = 0.5;
        scores[999] = 0.3;
        scores[1] = 0.2;
        let preds = Tensor::from_vec([1, 1000], &scores).unwrap();
        let d = decode_predictions(&preds, 3).unwrap();
        assert_eq!(
            d[0].iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![3, 999, 1]
        );
        assert_eq!(d[0][0].wnid, "n01491361");
        assert!(decode_predictions(&Tensor::zeros([1, 10]).unwrap(), 5).is_err());
        assert!(parse_class_index("{\"0\": [\"a\"]}").is_err());
    }
}
