//! Damaged inputs: every one must give an `Err` (or partial data), never a panic or a hang.
//! The fuzz target (`fuzz/fuzz_targets/h5_reader.rs`) does the same walk on random inputs.

use super::*;
use crate::rng::Rng;

/// Opens `bytes` and touches everything reachable, ignoring errors.
fn walk_all(bytes: Vec<u8>) {
    let Ok(file) = File::from_bytes(bytes) else {
        return;
    };
    if let Ok(root) = file.root() {
        touch_everything(&root, 500);
    }
}

fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "h5"))
        .collect();
    files.sort();
    files
}

#[test]
fn nonsense_inputs_are_errors() {
    for bytes in [
        vec![],
        b"\x89HDF\r\n\x1a\n".to_vec(),
        vec![0u8; 4096],
        vec![0xff; 100],
    ] {
        assert!(File::from_bytes(bytes).is_err());
    }
    assert_eq!(
        File::from_bytes(vec![1, 2, 3]).err().unwrap().to_string(),
        "not an HDF5 file: no HDF5 signature found (3 bytes)"
    );
    let mut bad_sizes = std::fs::read(fixture("compact.h5")).unwrap();
    bad_sizes[13] = 3;
    assert_eq!(
        File::from_bytes(bad_sizes).err().unwrap().to_string(),
        "superblock at offset 0: unsupported HDF5 feature: size of offsets = 3 bytes (expected 2, 4 or 8)"
    );
    let missing = fixture("no_such_file.h5");
    assert!(
        File::open(&missing)
            .err()
            .unwrap()
            .to_string()
            .contains("no_such_file.h5")
    );
}

/// A file cut short, with its end-of-file address rewritten to match so it opens: data past
/// the new end is reported with its offset.
#[test]
fn data_beyond_the_end_of_the_file() {
    let mut bytes = std::fs::read(fixture("micro_vgg16_notop.h5")).unwrap();
    let file = File::from_bytes(bytes.clone()).unwrap();
    let last = all_datasets(&file.root().unwrap())
        .into_iter()
        .max_by_key(|d| d.data_offset())
        .unwrap();
    let offset = last.data_offset().unwrap();
    let len = offset as usize + 10;
    bytes.truncate(len);
    bytes[40..48].copy_from_slice(&(len as u64).to_le_bytes()); // superblock v0: end-of-file address
    let file = File::from_bytes(bytes).unwrap();
    let d = file.root().unwrap().dataset(last.path()).unwrap().unwrap();
    let size = last.read_raw().unwrap().len();
    assert_eq!(
        d.read_f32().err().unwrap().to_string(),
        format!(
            "dataset {}: data at offset {offset} + {size} bytes lies beyond the end of the file ({len} bytes)",
            last.path()
        )
    );
}

/// Cut-off copies. Where the superblock is v0 with 8-byte addresses, its end-of-file address
/// is rewritten to match, so the walk gets past the length check into partial structures.
#[test]
fn truncated_copies_never_panic() {
    for path in fixture_files() {
        let bytes = std::fs::read(&path).unwrap();
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20 {
            let mut cut = bytes.clone();
            let len = rng.below(bytes.len() as u64) as usize;
            cut.truncate(len);
            if len >= 48 && cut[8] == 0 && cut[13] == 8 {
                cut[40..48].copy_from_slice(&(len as u64).to_le_bytes());
            }
            walk_all(cut);
        }
    }
}

/// Random byte changes in the metadata-heavy start of every fixture.
#[test]
fn mutated_copies_never_panic() {
    for path in fixture_files() {
        let bytes = std::fs::read(&path).unwrap();
        let mut rng = Rng::new(0x2545_f491_4f6c_dd1d ^ bytes.len() as u64);
        for round in 0..40 {
            let mut bad = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bad.len().min(8192) as u64) as usize;
                bad[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => bad[at] ^ (1 << rng.below(8)),
                    _ => rng.next_u64() as u8,
                };
            }
            let result = std::panic::catch_unwind(|| walk_all(bad));
            assert!(
                result.is_ok(),
                "{} mutation round {round} panicked",
                path.display()
            );
        }
    }
}

/// Newer metadata carries checksums; a changed byte is named as such.
#[test]
fn checksum_mismatches_are_reported() {
    let bytes = std::fs::read(fixture("micro_vgg16_notop_latest.h5")).unwrap();
    let mut bad_superblock = bytes.clone();
    bad_superblock[11] ^= 1; // file consistency flags
    let err = File::from_bytes(bad_superblock).err().unwrap().to_string();
    assert_eq!(err, "superblock at offset 0: checksum mismatch");

    let root = bytes.windows(4).position(|w| w == b"OHDR").unwrap();
    // Flip a bit of the stored checksum after chunk 0 of the root's "OHDR" header.
    let flags = bytes[root + 5];
    let width = 1usize << (flags & 3);
    let prefix = 6 + if flags & 0x20 != 0 { 16 } else { 0 } + if flags & 0x10 != 0 { 4 } else { 0 };
    let mut size = [0u8; 8];
    size[..width].copy_from_slice(&bytes[root + prefix..root + prefix + width]);
    let checksum_at = root + prefix + width + u64::from_le_bytes(size) as usize;
    let mut bad_header = bytes.clone();
    bad_header[checksum_at] ^= 1;
    let err = File::from_bytes(bad_header)
        .unwrap()
        .root()
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!("group /: object header at address {root}: object header checksum mismatch")
    );
}
