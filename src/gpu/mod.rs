//! The GPU path: the lowered program as CUDA kernels (`kernels/`), launched
//! through cudarc with dynamic loading, so building needs no CUDA toolkit and
//! a machine without a driver gets an error, never a panic.
//!
//! - [`staging`]: a request packed into one buffer for one upload.
//! - [`launch_plan`]: the program as kernel launches for a batch bucket.
//! - [`streams`]: the launches spread over streams while a graph is
//!   captured (graph branches).
//! - [`binding`]: a launch plan bound to addresses (tensor images, tables,
//!   argument values), shared by the runtime and the host emulator.
//! - [`kernel_image`]: the embedded PTX and cubins, and which one a device
//!   loads.
//! - `runtime` (feature `cuda`): weights on the device, sessions with a
//!   stream, pinned buffers and a CUDA graph per bucket.

pub mod binding;
pub mod kernel_image;
pub mod launch_plan;
pub mod staging;
pub mod streams;

#[cfg(feature = "cuda")]
mod runtime;

pub use launch_plan::Precision;
#[cfg(feature = "cuda")]
pub use runtime::{CallPhases, GpuModel, GpuSession};

use crate::error::{Error, ErrorKind, Result};

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA device by ordinal; opening fails with a clear error without one.
    Cuda(usize),
    /// CUDA device 0 when one is usable, else the CPU.
    Auto,
}

impl Device {
    pub fn parse(text: &str) -> Option<Device> {
        match text {
            "cpu" => Some(Device::Cpu),
            "auto" => Some(Device::Auto),
            "cuda" => Some(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda),
        }
    }
}

/// Checks, without panicking, that a CUDA driver can be loaded and has at
/// least `ordinal + 1` devices.
pub fn check_device(ordinal: usize) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        let probe = std::panic::catch_unwind(|| {
            // SAFETY: dlopen of the system's CUDA driver library (its
            // initializers are the driver's own); nothing else is touched.
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                return Err("no CUDA driver: libcuda.so could not be loaded".to_string());
            }
            cudarc::driver::CudaContext::device_count()
                .map_err(|e| format!("the CUDA driver failed to start: {e:?}"))
        });
        let count = match probe {
            Ok(Ok(count)) => count,
            Ok(Err(message)) => return Err(Error::new(ErrorKind::Device, message)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Device,
                    "loading the CUDA driver panicked",
                ))
            }
        };
        if count <= ordinal as i32 {
            return Err(Error::new(
                ErrorKind::Device,
                format!("CUDA device {ordinal} requested, {count} device(s) present"),
            ));
        }
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(Error::new(
            ErrorKind::Device,
            "this build of mmoe has no GPU support (cargo feature `cuda`)",
        ))
    }
}
