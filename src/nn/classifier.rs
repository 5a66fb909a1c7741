//! What training trains: a head, alone on stored features, or on top of VGG's last conv
//! layers (fine-tuning), run forward and backward as one model.

use super::head::{Head, HeadTape, Mode, concat_rows};
use super::param::{Param, ParamMut};
use super::tail::{ConvTail, TailTape};
use crate::error::{Error, Result};
use crate::tensor::{Backend, DType, Tensor};

/// A classifier: optional trainable conv layers, then a head.
#[derive(Clone, Debug)]
pub struct Classifier {
    pub tail: Option<ConvTail>,
    pub head: Head,
}

/// The forward pass's record for [`Classifier::backward`].
pub struct Tape {
    tail: Option<TailTape>,
    head: HeadTape,
}

impl Classifier {
    /// A head on stored features.
    pub fn head_only(head: Head) -> Classifier {
        Classifier { tail: None, head }
    }

    /// `head` on top of `tail`, whose output it must take.
    pub fn with_tail(tail: ConvTail, head: Head) -> Result<Classifier> {
        if tail.output_shape() != head.input_shape() {
            return Err(Error::Shape(format!(
                "the head takes features of shape {:?}, the layers below give {:?}",
                head.input_shape(),
                tail.output_shape()
            )));
        }
        Ok(Classifier {
            tail: Some(tail),
            head,
        })
    }

    /// Per-sample input shape: the tail's input, or the head's.
    pub fn input_shape(&self) -> &[usize] {
        match &self.tail {
            Some(t) => t.input_shape(),
            None => self.head.input_shape(),
        }
    }

    pub fn classes(&self) -> usize {
        self.head.classes()
    }

    /// Rows per forward pass outside training: activations of conv layers are large.
    fn chunk(&self) -> usize {
        if self.tail.is_some() { 16 } else { 256 }
    }

    /// Logits and the tape, in training mode (dropout on). Takes the batch by value: a
    /// trainable tail keeps it on its tape.
    pub fn forward_train(&self, be: &dyn Backend, x: Tensor, mode: Mode) -> Result<(Tensor, Tape)> {
        let (features, tail) = match &self.tail {
            Some(t) => {
                let (y, tape) = t.forward_train(be, x)?;
                (y, Some(tape))
            }
            None => (be.upload(x)?, None),
        };
        let (logits, head) = self.head.forward(be, &features, mode)?;
        Ok((logits, Tape { tail, head }))
    }

    /// Gradients of every parameter, in [`Classifier::params`] order (the tail's, then the
    /// head's), given the gradient of the loss with respect to the logits.
    pub fn backward(&self, be: &dyn Backend, tape: &Tape, dlogits: &Tensor) -> Result<Vec<Tensor>> {
        let (mut head_grads, dfeatures) =
            self.head
                .backward(be, &tape.head, dlogits, self.tail.is_some())?;
        let mut grads = match (&self.tail, &tape.tail, dfeatures) {
            (Some(t), Some(tt), Some(d)) => t.backward(be, tt, &d, false)?.0,
            (None, None, _) => Vec::new(),
            _ => {
                return Err(Error::Invalid(
                    "the tape was recorded by another model".into(),
                ));
            }
        };
        grads.append(&mut head_grads);
        Ok(grads)
    }

    /// Every trainable parameter: the tail's, then the head's.
    pub fn params(&self) -> Vec<Param<'_>> {
        let mut p = self.tail.as_ref().map(ConvTail::params).unwrap_or_default();
        p.extend(self.head.params());
        p
    }

    /// [`Classifier::params`], to update.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut p = self
            .tail
            .as_mut()
            .map(ConvTail::params_mut)
            .unwrap_or_default();
        p.extend(self.head.params_mut());
        p
    }

    /// Copies of the parameters (to restore the best epoch's).
    pub fn snapshot(&self) -> Vec<Tensor> {
        self.params()
            .into_iter()
            .map(|p| p.tensor.clone())
            .collect()
    }

    /// Put back parameters taken by [`Classifier::snapshot`].
    pub fn restore(&mut self, saved: Vec<Tensor>) {
        for (p, s) in self.params_mut().into_iter().zip(saved) {
            *p.tensor = s;
        }
    }

    /// The same model in `dtype` (the gradient checks run in f64).
    pub fn cast(&self, dtype: DType) -> Result<Classifier> {
        Ok(Classifier {
            tail: self.tail.as_ref().map(|t| t.cast(dtype)).transpose()?,
            head: self.head.cast(dtype)?,
        })
    }

    /// Logits (dropout off) of a batch of host inputs, in host memory, a few rows at a time.
    pub fn logits(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let n = x.dims().first().copied().unwrap_or(0);
        let mut parts = Vec::new();
        for start in (0..n).step_by(self.chunk()) {
            let rows = x.rows(start, self.chunk().min(n - start))?;
            let features = match &self.tail {
                Some(t) => t.forward(be, &rows)?,
                None => be.upload(rows)?,
            };
            let (logits, _) = self.head.forward(be, &features, Mode::Eval)?;
            parts.push(be.to_host(logits)?);
        }
        concat_rows(&parts, self.classes(), x.dtype())
    }
}
