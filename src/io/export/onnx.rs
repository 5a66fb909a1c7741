//! ONNX export of a whole model (placeholder until the writer lands).

use std::path::Path;

use crate::error::{Error, Result};
use crate::transfer::ExportGraph;

/// Write `graph` as an ONNX model at `path` (atomically).
pub fn write(graph: &ExportGraph, path: &Path) -> Result<()> {
    let _ = graph;
    Err(Error::file(path, "ONNX export is not implemented yet"))
}
