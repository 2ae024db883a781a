//! The one way into the library from C: every export runs its body through
//! [`call`], which turns errors and panics into a status code and keeps the
//! message for [`super::mmoe_last_error`]. No panic crosses the boundary.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::mmoe_status;
use crate::error::{Error, ErrorKind};

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Keeps `message` as this thread's last error. A call made while the
/// thread exits (a C++ `thread_local` destructor) may come after the slot is
/// gone: the message is then dropped, where `with` would panic outside any
/// `catch_unwind`.
pub(crate) fn set_last_error(message: &str) {
    let _ = LAST_ERROR.try_with(|m| {
        let mut m = m.borrow_mut();
        m.clear();
        m.push_str(message);
    });
}

/// `f` of this thread's last error message (empty once the slot is gone).
pub(crate) fn with_last_error<T>(f: impl FnOnce(&str) -> T) -> T {
    // A copy (an error path only): `f` must run whether or not the slot is.
    let message = LAST_ERROR
        .try_with(|m| m.borrow().clone())
        .unwrap_or_default();
    f(&message)
}

/// An error of the boundary itself (null pointer, bad length, …).
pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::argument(message)
}

pub(crate) fn status_of(kind: ErrorKind) -> mmoe_status {
    match kind {
        ErrorKind::Io => mmoe_status::MMOE_STATUS_IO,
        ErrorKind::Config => mmoe_status::MMOE_STATUS_CONFIG,
        ErrorKind::Tensor => mmoe_status::MMOE_STATUS_TENSOR,
        ErrorKind::Format => mmoe_status::MMOE_STATUS_FORMAT,
        ErrorKind::Checksum => mmoe_status::MMOE_STATUS_CHECKSUM,
        ErrorKind::Request => mmoe_status::MMOE_STATUS_REQUEST,
        ErrorKind::Argument => mmoe_status::MMOE_STATUS_ARGUMENT,
        ErrorKind::Device => mmoe_status::MMOE_STATUS_DEVICE,
    }
}

/// Runs an export's body: `Ok` is `MMOE_STATUS_OK`; an error or a panic is
/// its status, with the message kept for `mmoe_last_error`.
pub(crate) fn call(body: impl FnOnce() -> Result<(), Error>) -> mmoe_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => mmoe_status::MMOE_STATUS_OK,
        Ok(Err(e)) => {
            set_last_error(e.message());
            status_of(e.kind())
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error (a bug in mmoe, please report it): {what}"
            ));
            mmoe_status::MMOE_STATUS_INTERNAL
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// INTERNAL has no trigger from outside (it would be a bug): a panic in a
    /// body is caught, becomes the status, and leaves a message; the next
    /// call works.
    #[test]
    fn a_panic_becomes_internal_with_a_message() {
        let status = call(|| panic!("boom at {}", 42));
        assert_eq!(status, mmoe_status::MMOE_STATUS_INTERNAL);
        with_last_error(|m| {
            assert!(m.starts_with("internal error (a bug in mmoe"), "{m}");
            assert!(m.contains("boom at 42"), "{m}");
        });
        assert_eq!(call(|| Ok(())), mmoe_status::MMOE_STATUS_OK);
        let status = call(|| Err(Error::request("input `x` is not set")));
        assert_eq!(status, mmoe_status::MMOE_STATUS_REQUEST);
        with_last_error(|m| assert_eq!(m, "input `x` is not set"));
    }
}
