//! Labeled photo folders, read as Keras's `image_dataset_from_directory` reads them: one
//! subfolder per class, classes in sorted name order, images found recursively inside each.
//!
//! A folder that holds `train/` and `val/` (or `validation/`) keeps that split; otherwise a
//! seeded, stratified split is drawn. Hidden entries and non-image files are skipped and
//! listed, so a user sees what keel ignored instead of wondering about a count.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// File extensions keel reads as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "jfif",
];

/// Whether `path` has an image extension.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// An image and its class index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// A file or folder that was not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// How the validation set was chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Split {
    /// `root/train` and `root/val` as given.
    Kept,
    /// A stratified random fraction of each class, drawn with this seed.
    Random { fraction: f64, seed: u64 },
    /// Everything is training data.
    None,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Split::Kept => write!(f, "split kept (train/ and val/)"),
            Split::Random { fraction, seed } => {
                write!(
                    f,
                    "stratified, {fraction} of each class held out, seed {seed}"
                )
            }
            Split::None => write!(f, "no validation"),
        }
    }
}

/// A labeled folder split into training and validation samples.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub skipped: Vec<Skipped>,
    pub split: Split,
}

/// The classes and images of a folder of class folders (`root/<class>/...`).
#[derive(Clone, Debug)]
pub struct LabeledFolder {
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    pub skipped: Vec<Skipped>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        out.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// Read `root/<class>/...`. Every class must hold at least one image, and there must be two
/// classes or more.
pub fn scan_class_folders(root: &Path) -> Result<LabeledFolder> {
    scan_folders(root, 2)
}

/// [`scan_class_folders`] for labeled photos a model is *evaluated* on: one class folder is
/// enough (a subset of the model's classes), since the classes come from the model.
pub fn scan_evaluation_folders(root: &Path) -> Result<LabeledFolder> {
    scan_folders(root, 1)
}

fn scan_folders(root: &Path, min_classes: usize) -> Result<LabeledFolder> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Err(Error::file(
            root,
            "is not a folder; expected a folder with one subfolder of images per class",
        ));
    }
    let mut classes = Vec::new();
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    for path in sorted_entries(root)? {
        if is_hidden(&path) {
            skipped.push(Skipped {
                path,
                reason: "hidden".into(),
            });
        } else if path.is_dir() {
            let label = classes.len();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let before = samples.len();
            walk_class(&path, label, &mut samples, &mut skipped)?;
            if samples.len() == before {
                return Err(Error::file(
                    &path,
                    format!(
                        "class '{name}' has no images (looked for {})",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
            classes.push(name);
        } else {
            skipped.push(Skipped {
                path,
                reason: "not inside a class folder".into(),
            });
        }
    }
    match classes.len() {
        0 => Err(Error::file(
            root,
            "has no class folders; expected one subfolder of images per class \
             (e.g. photos/ants/*.jpg, photos/bees/*.jpg)",
        )),
        1 if min_classes > 1 => Err(Error::file(
            root,
            format!(
                "has a single class folder ('{}'); a classifier needs two classes or more",
                classes[0]
            ),
        )),
        _ => Ok(LabeledFolder {
            classes,
            samples,
            skipped,
        }),
    }
}

fn walk_class(
    dir: &Path,
    label: usize,
    samples: &mut Vec<Sample>,
    skipped: &mut Vec<Skipped>,
) -> Result<()> {
    for path in sorted_entries(dir)? {
        if is_hidden(&path) {
            skipped.push(Skipped {
                path,
                reason: "hidden".into(),
            });
        } else if path.is_dir() {
            walk_class(&path, label, samples, skipped)?;
        } else if is_image_path(&path) {
            samples.push(Sample { path, label });
        } else {
            skipped.push(Skipped {
                path,
                reason: "not an image file (by extension)".into(),
            });
        }
    }
    Ok(())
}

/// The folder that holds the training split, if `root` has `train/` and `val/` (or
/// `validation/`).
fn kept_split(root: &Path) -> Option<(PathBuf, PathBuf)> {
    let train = root.join("train");
    let val = ["val", "validation"]
        .into_iter()
        .map(|v| root.join(v))
        .find(|p| p.is_dir())?;
    train.is_dir().then_some((train, val))
}

/// Read a training folder: `root/{train,val}/<class>/...` keeps its split; `root/<class>/...`
/// is split with `validation_split` (a fraction in `[0, 1)`, stratified, seeded).
/// `validation_split` of `None` means 0.2 for class folders; it is an error with a kept split.
pub fn scan_training_folder(
    root: &Path,
    validation_split: Option<f64>,
    seed: u64,
) -> Result<Dataset> {
    if let Some((train_dir, val_dir)) = kept_split(root) {
        if let Some(f) = validation_split {
            return Err(Error::file(
                root,
                format!(
                    "has train/ and {}/ folders, so the split is kept; --validation-split {f} \
                     applies only to a folder of class folders",
                    val_dir.file_name().unwrap_or_default().to_string_lossy()
                ),
            ));
        }
        let train = scan_class_folders(&train_dir)?;
        let val = scan_class_folders(&val_dir)?;
        if train.classes != val.classes {
            return Err(Error::file(
                root,
                format!(
                    "train/ has classes [{}] but {} has [{}]; both must have the same class folders",
                    train.classes.join(", "),
                    val_dir.display(),
                    val.classes.join(", ")
                ),
            ));
        }
        let mut skipped = train.skipped;
        skipped.extend(val.skipped);
        for path in sorted_entries(root)? {
            if path != train_dir && path != val_dir {
                skipped.push(Skipped {
                    path,
                    reason: "not train/ or the validation folder".into(),
                });
            }
        }
        return Ok(Dataset {
            root: root.to_path_buf(),
            classes: train.classes,
            train: train.samples,
            val: val.samples,
            skipped,
            split: Split::Kept,
        });
    }
    let fraction = validation_split.unwrap_or(0.2);
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::Invalid(format!(
            "--validation-split must be in [0, 1), got {fraction}"
        )));
    }
    let folder = scan_class_folders(root)?;
    let (train, val) = stratified_split(&folder.samples, folder.classes.len(), fraction, seed);
    Ok(Dataset {
        root: root.to_path_buf(),
        classes: folder.classes,
        train,
        val,
        skipped: folder.skipped,
        split: if fraction > 0.0 {
            Split::Random { fraction, seed }
        } else {
            Split::None
        },
    })
}

/// Per class, a seeded shuffle, then `round(n * fraction)` samples to validation, keeping at
/// least one on each side when the class has two or more and the fraction is not zero. Both
/// sides come back in path order.
fn stratified_split(
    samples: &[Sample],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut rng = Rng::new(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in 0..classes {
        let mut members: Vec<&Sample> = samples.iter().filter(|s| s.label == class).collect();
        for i in (1..members.len()).rev() {
            members.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let n = members.len();
        let mut n_val = (n as f64 * fraction).round() as usize;
        if fraction > 0.0 && n >= 2 {
            n_val = n_val.clamp(1, n - 1);
        } else {
            n_val = n_val.min(n.saturating_sub(1));
        }
        val.extend(members[..n_val].iter().map(|&s| s.clone()));
        train.extend(members[n_val..].iter().map(|&s| s.clone()));
    }
    train.sort_by(|a, b| a.path.cmp(&b.path));
    val.sort_by(|a, b| a.path.cmp(&b.path));
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str, files: &[&str]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("keel-dataset-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for f in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if !f.ends_with('/') {
                std::fs::write(&p, b"x").unwrap();
            }
        }
        root
    }

    #[test]
    fn class_folders_sorted_with_skips_listed() {
        let root = tree(
            "classes",
            &[
                "bees/b1.jpg",
                "bees/sub/b2.PNG",
                "bees/.DS_Store",
                "ants/a1.jpeg",
                "ants/notes.txt",
                "README.md",
                ".hidden/x.jpg",
            ],
        );
        let f = scan_class_folders(&root).unwrap();
        assert_eq!(f.classes, ["ants", "bees"]);
        let got: Vec<(String, usize)> = f
            .samples
            .iter()
            .map(|s| {
                (
                    s.path.strip_prefix(&root).unwrap().display().to_string(),
                    s.label,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("ants/a1.jpeg".into(), 0),
                ("bees/b1.jpg".into(), 1),
                ("bees/sub/b2.PNG".into(), 1)
            ]
        );
        let skipped: Vec<String> = f
            .skipped
            .iter()
            .map(|s| s.path.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            skipped,
            [".hidden", "README.md", "ants/notes.txt", "bees/.DS_Store"]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn empty_and_single_classes_are_errors() {
        let root = tree("empty", &["ants/a.jpg", "bees/readme.txt"]);
        let e = scan_class_folders(&root).unwrap_err().to_string();
        assert!(e.contains("class 'bees' has no images"), "{e}");
        let root = tree("single", &["ants/a.jpg"]);
        let e = scan_class_folders(&root).unwrap_err().to_string();
        assert!(e.contains("single class"), "{e}");
        let root = tree("none", &["a.jpg"]);
        let e = scan_class_folders(&root).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");
        let e = scan_class_folders(&root.join("a.jpg"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a folder"), "{e}");
    }

    #[test]
    fn kept_split_and_stratified_split() {
        let root = tree(
            "kept",
            &[
                "train/a/1.jpg",
                "train/b/2.jpg",
                "val/a/3.jpg",
                "val/b/4.jpg",
                "test/a/5.jpg",
            ],
        );
        let d = scan_training_folder(&root, None, 0).unwrap();
        assert_eq!(d.split, Split::Kept);
        assert_eq!((d.train.len(), d.val.len()), (2, 2));
        assert_eq!(d.skipped.len(), 1);
        assert!(scan_training_folder(&root, Some(0.3), 0).is_err());

        let mut files = Vec::new();
        for i in 0..10 {
            files.push(format!("a/{i}.jpg"));
        }
        for i in 0..5 {
            files.push(format!("b/{i}.jpg"));
        }
        let refs: Vec<&str> = files.iter().map(String::as_str).collect();
        let root = tree("split", &refs);
        let d = scan_training_folder(&root, Some(0.2), 7).unwrap();
        let count = |v: &[Sample], l| v.iter().filter(|s| s.label == l).count();
        assert_eq!((count(&d.train, 0), count(&d.val, 0)), (8, 2));
        assert_eq!((count(&d.train, 1), count(&d.val, 1)), (4, 1));
        let again = scan_training_folder(&root, Some(0.2), 7).unwrap();
        assert_eq!(d.val, again.val, "seeded");
        let other = scan_training_folder(&root, Some(0.2), 8).unwrap();
        assert_ne!(d.val, other.val, "the seed matters");
        let none = scan_training_folder(&root, Some(0.0), 7).unwrap();
        assert_eq!(
            (none.train.len(), none.val.len(), none.split),
            (15, 0, Split::None)
        );
        assert!(scan_training_folder(&root, Some(1.0), 7).is_err());
    }

    #[test]
    fn mismatched_kept_classes_are_an_error() {
        let root = tree(
            "mismatch",
            &[
                "train/a/1.jpg",
                "train/b/2.jpg",
                "val/a/3.jpg",
                "val/c/4.jpg",
            ],
        );
        let e = scan_training_folder(&root, None, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("same class folders"), "{e}");
    }
}
