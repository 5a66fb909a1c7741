//! Touch everything reachable in a file: the fuzz target and the damaged-file tests use it to
//! drive every code path of the reader on hostile input.

use super::{Group, ObjectKind};

/// Read every attribute (as strings) and every dataset (as f32 and as raw bytes) below `root`,
/// ignoring errors. Visits at most `budget` members and 8 levels: hard links can form cycles.
/// On any input it must return without panicking; that is what the fuzzer checks.
pub fn touch_everything(root: &Group, budget: usize) {
    let mut budget = budget;
    walk(root, 0, &mut budget);
}

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
