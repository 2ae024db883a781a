//! One error type for the trainer: a message that names the thing at fault.

use std::fmt;

#[derive(Debug)]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Error {
        Error(format!("tensor computation: {e}"))
    }
}

impl From<mmoe::Error> for Error {
    fn from(e: mmoe::Error) -> Error {
        Error(e.to_string())
    }
}
