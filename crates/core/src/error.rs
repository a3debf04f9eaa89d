//! The one error type of the library crates: every variant names the file, field or flag
//! that was wrong and what was expected.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    /// (The cause is part of the message, not a `source`, so error chains print it once.)
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// A file was read but its contents are not what the format requires.
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    /// A data set is absent where it was looked for.
    #[error("data set `{name}` not found at {path}: {hint}")]
    MissingDataset { name: String, path: PathBuf, hint: String },
    /// A flag or configuration field has a value outside what is allowed.
    #[error("invalid value for {field}: {what}")]
    Invalid { field: String, what: String },
    /// A checkpoint does not fit the model it is loaded into.
    #[error("checkpoint {path}: {what}")]
    Checkpoint { path: PathBuf, what: String },
    /// A device (GPU) is missing, its libraries could not be loaded, or a call on it failed.
    #[error("{device}: {what}")]
    Device { device: String, what: String },
    /// Training produced a NaN or an infinity.
    #[error("non-finite values at step {step}: {what}")]
    NonFinite { step: u64, what: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause: source }
    }
    pub fn format(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Format { path: path.into(), what: what.into() }
    }
    pub fn device(device: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Device { device: device.into(), what: what.into() }
    }
    pub fn invalid(field: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), what: what.into() }
    }
}
