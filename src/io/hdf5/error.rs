//! The one error type of the reader: a message that says what is wrong and where.

use std::fmt;

/// An HDF5 reading error. The message names the object (`dataset /a/b`, `attribute 'x'`) and
/// the byte offset where it helps, because a bare "invalid file" gives a user nothing to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

/// Result of every fallible operation in this module.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(super) fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    /// Feature we deliberately do not read; the prefix lets callers tell it from corruption.
    pub(super) fn unsupported(what: impl fmt::Display) -> Error {
        Error(format!("unsupported HDF5 feature: {what}"))
    }

    /// Prefixes the message with where it happened: `"{place}: {message}"`.
    pub(super) fn context(self, place: impl fmt::Display) -> Error {
        Error(format!("{place}: {}", self.0))
    }

    /// The message, as shown by `Display`.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// `bail!("...", args)` returns `Err(Error::new(format!(...)))`; the caller must have `Error` in scope.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(Error::new(format!($($arg)*)))
    };
}
pub(super) use bail;
