//! The one error type of the engine: a kind (stable, later mapped to C status
//! codes) and a message that names the thing at fault.

use std::fmt;

/// What went wrong, coarsely. The values are stable: the C ABI maps them to
/// status codes, so a kind is never renumbered or reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorKind {
    /// Reading or writing a file failed.
    Io = 1,
    /// The model config breaks a rule of the model contract.
    Config = 2,
    /// A tensor is missing, extra, misshaped or holds a value that does not fit.
    Tensor = 3,
    /// A packed file is malformed, truncated, of another version, or corrupt.
    Format = 4,
    /// A checksum does not match.
    Checksum = 5,
    /// A request is invalid (wrong length, NaN where not allowed, bad CSR, …).
    Request = 6,
    /// An argument of an API call is invalid (wrong output length, …).
    Argument = 7,
    /// The GPU path is unavailable or failed (no driver, no device, a CUDA
    /// error).
    Device = 8,
}

/// An error with a message naming the input, expert, task, tensor, file or
/// candidate at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn tensor(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Tensor, message)
    }
    pub fn format(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Format, message)
    }
    pub fn request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Request, message)
    }
    pub fn argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Argument, message)
    }
    /// An I/O error on `path`, saying what was being done.
    pub fn io(action: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{action} {}: {err}", path.display()))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context: ` put before its message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error for an opened `file` that is a directory (Linux opens one
/// for reading; mapping it then fails with "No such device").
pub(crate) fn refuse_directory(file: &std::fs::File, path: &std::path::Path) -> Result<()> {
    match file.metadata() {
        Ok(meta) if meta.is_dir() => Err(Error::new(
            ErrorKind::Io,
            format!(
                "cannot open {}: it is a directory, not a file",
                path.display()
            ),
        )),
        _ => Ok(()),
    }
}
