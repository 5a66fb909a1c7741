//! Writers of a trained model ([`crate::transfer::ExportGraph`]) in other tools' formats.

pub mod keras;
pub mod onnx;
