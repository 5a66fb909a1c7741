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

use keel::io::hdf5::{File, touch_everything};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = File::from_bytes(data.to_vec()) else {
        return;
    };
    if let Ok(root) = file.root() {
        touch_everything(&root, 200);
    }
    // Loading identifies the architecture and checks every tensor; then the base is cut off.
    if let Ok(weights) = keel::io::keras::from_h5(&file, Path::new("fuzz.h5")) {
        let _ = weights.identity().describe();
        let _ = weights.conv_base().checksum();
    }
});
