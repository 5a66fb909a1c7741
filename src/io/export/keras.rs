//! Keras 3 `.weights.h5` of a whole model (placeholder until the writer lands).

use std::path::Path;

use crate::error::{Error, Result};
use crate::transfer::ExportGraph;

/// Write `graph` as a Keras 3 `.weights.h5` at `path` (atomically), and the `.py` that builds
/// the model in Keras and loads it beside it.
pub fn write(graph: &ExportGraph, path: &Path) -> Result<()> {
    let _ = graph;
    Err(Error::file(path, "Keras export is not implemented yet"))
}
