//! Rows of stored activations, in memory while they fit a budget and in a temporary file on
//! disk beyond it, so that a large photo set trains in bounded memory.
//!
//! Fine-tuning keeps the input of the first trainable layer for every image (and every
//! mirrored image with `--augment flip`): 800 KB per photo for block5 at 320x320, so 10,000
//! photos would need 8 GB. Each store asks the run's [`MemoryBudget`] for its size up front;
//! a store that does not fit writes its rows to a file in the system's temporary folder
//! (deleted when the store is dropped) and reads each batch back from it.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::nn::fit::Samples;
use crate::tensor::Tensor;

/// Bytes of stored rows a run may keep in memory.
#[derive(Debug)]
pub struct MemoryBudget {
    left: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(bytes: usize) -> MemoryBudget {
        MemoryBudget {
            left: AtomicUsize::new(bytes),
        }
    }

    /// Reserve `bytes` if they fit in what is left.
    fn take(&self, bytes: usize) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }
}

enum Rows {
    Memory(Vec<f32>),
    Disk {
        path: PathBuf,
        writer: Option<BufWriter<File>>,
        reader: Mutex<Option<File>>,
    },
}

/// Labeled rows of one shape, appended in order, then read in any order by [`Samples`].
pub struct RowStore {
    shape: Vec<usize>,
    row_len: usize,
    labels: Vec<usize>,
    rows: Rows,
}

static NEXT_SPILL: AtomicUsize = AtomicUsize::new(0);

impl RowStore {
    /// A store for up to `expected` rows of `shape`: in memory if they fit in `budget`.
    pub fn new(shape: &[usize], expected: usize, budget: &MemoryBudget) -> Result<RowStore> {
        let row_len: usize = shape.iter().product();
        let bytes = expected * row_len * 4;
        let rows = if budget.take(bytes) {
            Rows::Memory(Vec::with_capacity(expected * row_len))
        } else {
            let path = std::env::temp_dir().join(format!(
                "keel-rows-{}-{}.f32",
                std::process::id(),
                NEXT_SPILL.fetch_add(1, Ordering::SeqCst)
            ));
            let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
            Rows::Disk {
                path,
                writer: Some(BufWriter::with_capacity(1 << 20, file)),
                reader: Mutex::new(None),
            }
        };
        Ok(RowStore {
            shape: shape.to_vec(),
            row_len,
            labels: Vec::with_capacity(expected),
            rows,
        })
    }

    /// Whether the rows live in a file rather than in memory.
    pub fn on_disk(&self) -> bool {
        matches!(self.rows, Rows::Disk { .. })
    }

    /// Append one row with its label.
    pub fn push(&mut self, row: &[f32], label: usize) -> Result<()> {
        if row.len() != self.row_len {
            return Err(Error::Shape(format!(
                "a row of {} values for rows of shape {:?}",
                row.len(),
                self.shape
            )));
        }
        match &mut self.rows {
            Rows::Memory(v) => v.extend_from_slice(row),
            Rows::Disk { path, writer, .. } => {
                let w = writer
                    .as_mut()
                    .ok_or_else(|| Error::Invalid("rows were appended after reading".into()))?;
                w.write_all(bytemuck::cast_slice(row))
                    .map_err(|e| Error::io(&*path, e))?;
            }
        }
        self.labels.push(label);
        Ok(())
    }

    /// Append every row of a host batch `(n, ...shape)` with its label.
    pub fn push_batch(&mut self, batch: &Tensor, labels: &[usize]) -> Result<()> {
        for (row, &label) in batch.data().chunks_exact(self.row_len.max(1)).zip(labels) {
            self.push(row, label)?;
        }
        Ok(())
    }

    /// Done appending: flush a file-backed store and open it for reading.
    pub fn finish(mut self) -> Result<RowStore> {
        if let Rows::Disk {
            path,
            writer,
            reader,
        } = &mut self.rows
            && let Some(w) = writer.take()
        {
            w.into_inner()
                .map_err(|e| Error::io(&*path, e.into_error()))?
                .sync_all()
                .map_err(|e| Error::io(&*path, e))?;
            let f = File::open(&*path).map_err(|e| Error::io(&*path, e))?;
            *reader.get_mut().expect("not shared yet") = Some(f);
        }
        Ok(self)
    }
}

impl Drop for RowStore {
    fn drop(&mut self) {
        if let Rows::Disk { path, .. } = &self.rows {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Samples for RowStore {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn labels(&self) -> &[usize] {
        &self.labels
    }

    fn gather(&self, idx: &[usize]) -> Result<Tensor> {
        let mut shape = vec![idx.len()];
        shape.extend(&self.shape);
        let mut out = Tensor::zeros(shape)?;
        let n = self.row_len;
        for (dst, &i) in out.data_mut().chunks_exact_mut(n.max(1)).zip(idx) {
            if i >= self.len() {
                return Err(Error::Invalid(format!("row {i} of {}", self.len())));
            }
            match &self.rows {
                Rows::Memory(v) => dst.copy_from_slice(&v[i * n..(i + 1) * n]),
                Rows::Disk { path, reader, .. } => {
                    let mut guard = reader.lock().map_err(|_| {
                        Error::Invalid(format!("{}: a reader panicked", path.display()))
                    })?;
                    let f = guard.as_mut().ok_or_else(|| {
                        Error::Invalid("rows were read before the store was finished".into())
                    })?;
                    f.seek(SeekFrom::Start((i * n * 4) as u64))
                        .and_then(|_| f.read_exact(bytemuck::cast_slice_mut(dst)))
                        .map_err(|e| Error::io(&*path, e))?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(budget: &MemoryBudget) -> RowStore {
        let mut s = RowStore::new(&[2, 3], 5, budget).unwrap();
        for i in 0..5 {
            let row: Vec<f32> = (0..6).map(|j| (i * 10 + j) as f32).collect();
            s.push(&row, i % 2).unwrap();
        }
        s.finish().unwrap()
    }

    #[test]
    fn memory_and_disk_stores_read_the_same() {
        let big = MemoryBudget::new(1 << 20);
        let none = MemoryBudget::new(100);
        let (m, d) = (fill(&big), fill(&none));
        assert!(!m.on_disk() && d.on_disk());
        for idx in [vec![4, 0, 2], vec![1], vec![]] {
            let (a, b) = (m.gather(&idx).unwrap(), d.gather(&idx).unwrap());
            assert_eq!(a.data(), b.data());
            assert_eq!(a.dims(), &[idx.len(), 2, 3]);
        }
        assert_eq!(m.gather(&[3]).unwrap().data()[5], 35.0);
        assert_eq!(d.labels(), &[0, 1, 0, 1, 0]);
        assert!(d.gather(&[5]).is_err());
    }

    #[test]
    fn the_budget_is_shared_and_spill_files_are_removed() {
        let budget = MemoryBudget::new(5 * 6 * 4);
        let a = fill(&budget);
        let b = fill(&budget);
        assert!(
            !a.on_disk() && b.on_disk(),
            "the second store no longer fits"
        );
        let Rows::Disk { path, .. } = &b.rows else {
            unreachable!()
        };
        let path = path.clone();
        assert!(path.exists());
        drop(b);
        assert!(!path.exists());
        let mut c = RowStore::new(&[2], 1, &budget).unwrap();
        assert!(c.push(&[1.0, 2.0, 3.0], 0).is_err(), "wrong row length");
    }
}
