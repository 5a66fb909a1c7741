//! The head's layer list, as the user writes it: `gap,dense256,relu,dropout0.5`.

use std::fmt;

use crate::error::{Error, Result};

/// One layer of a head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeadLayer {
    /// Global average pooling over H and W (Keras's `GlobalAveragePooling2D`).
    GlobalAvgPool,
    /// Global max pooling over H and W (Keras's `GlobalMaxPooling2D`).
    GlobalMaxPool,
    /// `(H, W, C) -> H*W*C` in Keras's order.
    Flatten,
    /// A fully connected layer with this many units (no activation; add `relu`).
    Dense(usize),
    Relu,
    /// Dropout with this rate, active only in training.
    Dropout(f64),
}

impl fmt::Display for HeadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadLayer::GlobalAvgPool => write!(f, "gap"),
            HeadLayer::GlobalMaxPool => write!(f, "gmp"),
            HeadLayer::Flatten => write!(f, "flatten"),
            HeadLayer::Dense(n) => write!(f, "dense{n}"),
            HeadLayer::Relu => write!(f, "relu"),
            HeadLayer::Dropout(r) => write!(f, "dropout{r}"),
        }
    }
}

/// A head: its layers, always ending in the classifier `dense<classes>` (softmax is part of
/// the loss and of prediction, not a layer).
#[derive(Clone, Debug, PartialEq)]
pub struct HeadSpec {
    pub layers: Vec<HeadLayer>,
}

/// keel's default head, the one the transfer-learning tutorials use.
pub const DEFAULT_HEAD: &str = "gap,dense256,relu,dropout0.5";

impl HeadSpec {
    /// Parse a comma-separated list for `classes` classes. The classifier `dense<classes>` is
    /// appended unless the list already ends with it, so `gap` alone is a linear classifier
    /// on pooled features.
    pub fn parse(text: &str, classes: usize) -> Result<HeadSpec> {
        let bad = |problem: String| {
            Error::Invalid(format!(
                "head '{text}': {problem} (layers: gap, gmp, flatten, dense<units>, relu, \
                 dropout<rate>; e.g. {DEFAULT_HEAD})"
            ))
        };
        let mut layers = Vec::new();
        for token in text.split(',').map(str::trim) {
            let t = token.to_ascii_lowercase();
            let layer = match t.as_str() {
                "" => return Err(bad("empty layer name".into())),
                "gap" | "globalaveragepooling2d" | "avg" => HeadLayer::GlobalAvgPool,
                "gmp" | "globalmaxpooling2d" | "max" => HeadLayer::GlobalMaxPool,
                "flatten" => HeadLayer::Flatten,
                "relu" => HeadLayer::Relu,
                "linear" => continue, // a no-op, so "gap,linear" reads as intended
                _ if t.starts_with("dense") => {
                    let n: usize = t["dense".len()..]
                        .parse()
                        .map_err(|_| bad(format!("'{token}' needs a unit count, e.g. dense256")))?;
                    if n == 0 {
                        return Err(bad(format!("'{token}' has no units")));
                    }
                    HeadLayer::Dense(n)
                }
                _ if t.starts_with("dropout") => {
                    let r: f64 = t["dropout".len()..]
                        .parse()
                        .map_err(|_| bad(format!("'{token}' needs a rate, e.g. dropout0.5")))?;
                    if !(0.0..1.0).contains(&r) {
                        return Err(bad(format!("'{token}': the rate must be in [0, 1)")));
                    }
                    HeadLayer::Dropout(r)
                }
                _ => return Err(bad(format!("unknown layer '{token}'"))),
            };
            layers.push(layer);
        }
        if layers.last() != Some(&HeadLayer::Dense(classes)) {
            layers.push(HeadLayer::Dense(classes));
        }
        Ok(HeadSpec { layers })
    }

    /// The per-sample output shape after each layer for an input of `input` (the base's
    /// `(H, W, C)` output), checking that dense layers see vectors.
    pub fn shapes(&self, input: &[usize]) -> Result<Vec<Vec<usize>>> {
        let mut cur = input.to_vec();
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            cur = match layer {
                HeadLayer::GlobalAvgPool | HeadLayer::GlobalMaxPool => {
                    if cur.len() != 3 {
                        return Err(Error::Invalid(format!(
                            "head {self}: layer {} ({layer}) needs a spatial (H, W, C) input, \
                             got {cur:?}",
                            i + 1
                        )));
                    }
                    vec![cur[2]]
                }
                HeadLayer::Flatten => vec![cur.iter().product()],
                HeadLayer::Dense(n) => {
                    if cur.len() != 1 {
                        return Err(Error::Invalid(format!(
                            "head {self}: layer {} ({layer}) needs a vector, but gets {cur:?}; \
                             start the head with gap, gmp or flatten",
                            i + 1
                        )));
                    }
                    vec![*n]
                }
                HeadLayer::Relu | HeadLayer::Dropout(_) => cur,
            };
            out.push(cur.clone());
        }
        Ok(out)
    }
}

impl fmt::Display for HeadSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.layers.iter().map(|l| l.to_string()).collect();
        write!(f, "{}", names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_appends_the_classifier() {
        let s = HeadSpec::parse(DEFAULT_HEAD, 2).unwrap();
        assert_eq!(s.to_string(), "gap,dense256,relu,dropout0.5,dense2");
        let s = HeadSpec::parse("gap, dense256, relu, dense2", 2).unwrap();
        assert_eq!(s.to_string(), "gap,dense256,relu,dense2");
        assert_eq!(
            HeadSpec::parse("flatten", 5).unwrap().to_string(),
            "flatten,dense5"
        );
        assert_eq!(
            HeadSpec::parse("gap,linear", 3).unwrap().to_string(),
            "gap,dense3"
        );
        let shapes = HeadSpec::parse("gap,dense8", 2)
            .unwrap()
            .shapes(&[7, 7, 512])
            .unwrap();
        assert_eq!(shapes, vec![vec![512], vec![8], vec![2]]);
        let shapes = HeadSpec::parse("flatten", 2)
            .unwrap()
            .shapes(&[7, 7, 512])
            .unwrap();
        assert_eq!(shapes, vec![vec![25088], vec![2]]);
    }

    #[test]
    fn refuses_what_cannot_be_built() {
        for bad in [
            "",
            "gap,,relu",
            "dense",
            "dense0",
            "densex",
            "dropout1",
            "dropout-0.1",
            "conv3",
        ] {
            assert!(HeadSpec::parse(bad, 2).is_err(), "{bad}");
        }
        let no_pool = HeadSpec::parse("dense256,relu", 2).unwrap();
        let e = no_pool.shapes(&[7, 7, 512]).unwrap_err().to_string();
        assert!(e.contains("start the head with gap"), "{e}");
        let twice = HeadSpec::parse("gap,gap", 2).unwrap();
        assert!(twice.shapes(&[7, 7, 512]).is_err());
    }
}
