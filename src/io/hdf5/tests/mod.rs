//! Tests against real Keras files (`../shared`), the generated fixtures in `tests/data/h5`
//! (made by `tests/data/h5/make_fixtures.py`), and damaged copies of both.

mod fixtures;
mod keras_files;
mod malformed;

use std::path::PathBuf;

use super::{Attribute, Dataset, Dtype, File, Group, ObjectKind, StrPad, touch_everything};

/// `<crate>/../shared/<rel>`, or `None` (with the reason printed) when it is absent, so the
/// tests still pass on a checkout without the shared data.
fn shared(rel: &str) -> Option<PathBuf> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")).join(rel);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: {} is absent", path.display());
        None
    }
}

/// A generated fixture from `tests/data/h5`.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/h5")).join(name)
}

fn open_fixture(name: &str) -> File {
    File::open(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every dataset under `group` (recursively), as (path, dataset).
fn all_datasets(group: &Group) -> Vec<Dataset> {
    let mut out = Vec::new();
    for name in group.member_names().unwrap() {
        match group.member_kind(&name).unwrap() {
            Some(ObjectKind::Group) => {
                out.extend(all_datasets(&group.group(&name).unwrap().unwrap()))
            }
            Some(ObjectKind::Dataset) => out.push(group.dataset(&name).unwrap().unwrap()),
            _ => {}
        }
    }
    out
}

/// numpy's `dtype.str` ("<f4", ">f2", "|u1", ...).
fn numpy_str(dtype: &Dtype) -> String {
    let order = |size: usize, le: bool| {
        if size == 1 {
            '|'
        } else if le {
            '<'
        } else {
            '>'
        }
    };
    match dtype {
        Dtype::Float {
            size,
            little_endian,
        } => format!("{}f{size}", order(*size, *little_endian)),
        Dtype::Int {
            size,
            signed,
            little_endian,
        } => {
            format!(
                "{}{}{size}",
                order(*size, *little_endian),
                if *signed { 'i' } else { 'u' }
            )
        }
        Dtype::FixedString { len, .. } => format!("|S{len}"),
        other => format!("{other}"),
    }
}

/// The type names of `gen_mini.py::str_type`: "fixed12-nullpad-ascii", "vlen-utf8", "float64".
fn str_type(dtype: &Dtype) -> String {
    let cset = |utf8: bool| if utf8 { "utf8" } else { "ascii" };
    match dtype {
        Dtype::FixedString { len, padding, utf8 } => {
            let pad = match padding {
                StrPad::NullTerm => "nullterm",
                StrPad::NullPad => "nullpad",
                StrPad::SpacePad => "spacepad",
            };
            format!("fixed{len}-{pad}-{}", cset(*utf8))
        }
        Dtype::VarString { utf8 } => format!("vlen-{}", cset(*utf8)),
        Dtype::Float { size, .. } => format!("float{}", size * 8),
        other => format!("{other}"),
    }
}

/// A Python tuple, as `repr(shape)` prints it.
fn py_shape(shape: &[u64]) -> String {
    match shape {
        [] => "()".into(),
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python's `repr` of a str (or, with `bytes`, of a bytes object), for ASCII-ish content.
fn py_repr(s: &str, bytes: bool) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(if bytes { "b" } else { "" });
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f || (bytes && !c.is_ascii()) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}
