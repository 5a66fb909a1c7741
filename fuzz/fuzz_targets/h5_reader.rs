//! Fuzz keel's HDF5 reader and the Keras loader on top of it.
//!
//! Arbitrary bytes are opened as HDF5; everything reachable is touched (every group, bounded in
//! depth and count since hard links can form cycles; every attribute as strings; every dataset
//! as f32 and raw bytes), then the same bytes go through the Keras weights loader and VGG
//! identification. Errors are fine; panics, hangs and huge allocations are not.
//!
//! ```text
//! cargo fuzz run --sanitizer none h5_reader -- -max_total_time=600 -rss_limit_mb=2048 -timeout=10
//! ```
//! Seed the corpus with `tests/data/h5/*.h5` and `../shared/fixtures/keras/models/*.h5`.
#![no_main]

use std::path::Path;

use keel::io::hdf5::{File, Group, ObjectKind};
use libfuzzer_sys::fuzz_target;

fn walk(group: &Group, depth: usize, budget: &mut usize) {
    for name in group.attr_names().unwrap_or_default() {
        if let Ok(Some(attr)) = group.attr(&name) {
            let _ = (attr.shape(), attr.dtype().to_string());
            let _ = attr.read_strings();
            let _ = attr.read_string();
        }
    }
    for name in group.member_names().unwrap_or_default() {
        if *budget == 0 || depth > 8 {
            return;
        }
        *budget -= 1;
        match group.member_kind(&name) {
            Ok(Some(ObjectKind::Group)) => {
                if let Ok(Some(sub)) = group.group(&name) {
                    walk(&sub, depth + 1, budget);
                }
            }
            Ok(Some(ObjectKind::Dataset)) => {
                if let Ok(Some(d)) = group.dataset(&name) {
                    let _ = (d.shape(), d.dtype().to_string(), d.data_offset());
                    let _ = d.read_f32();
                    let _ = d.read_raw();
                }
            }
            _ => {
                let _ = group.dataset(&name);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = File::from_bytes(data.to_vec()) else {
        return;
    };
    if let Ok(root) = file.root() {
        let mut budget = 200;
        walk(&root, 0, &mut budget);
    }
    if let Ok(weights) = keel::io::keras::from_h5(&file, Path::new("fuzz.h5")) {
        let _ = weights.identify();
    }
});
