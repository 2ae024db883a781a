//! The compiled kernels embedded in the library, and which one a device
//! loads. `scripts/build_kernels.py` makes them from `kernels/*.cu` with
//! NVRTC 13.0: PTX for `compute_80`, which the driver JIT-compiles for any
//! GPU of compute capability 8.0 or newer, and cubins for `sm_80` (runs on
//! 8.x) and `sm_90a` (9.0: H100, H200; the architecture-specific target,
//! for the warpgroup MMA), which the driver loads as they are.
//! A cubin spares a process the JIT of 4.9 MB of PTX at its first model
//! load when the driver's JIT cache is empty (a fresh container).

/// The kernels as PTX for `compute_80`.
pub const PTX: &str = include_str!("../../kernels/ptx/mmoe.ptx");

const CUBIN_SM80: &[u8] = include_bytes!("../../kernels/cubin/mmoe.sm_80.cubin");
const CUBIN_SM90A: &[u8] = include_bytes!("../../kernels/cubin/mmoe.sm_90a.cubin");

/// Which form of the kernels the runtime asks the driver to load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelForm {
    /// The cubin made for the device when there is one, else the PTX.
    #[default]
    Auto,
    /// Always the PTX, compiled by the driver (`MMOE_GPU_KERNELS=ptx`).
    Ptx,
}

impl KernelForm {
    pub fn parse(text: &str) -> Option<KernelForm> {
        match text {
            "auto" => Some(KernelForm::Auto),
            "ptx" => Some(KernelForm::Ptx),
            _ => None,
        }
    }
}

/// One embedded form of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelImage {
    /// A cubin for the named architecture (`sm_80`, `sm_90a`).
    Cubin(&'static str, &'static [u8]),
    Ptx,
}

impl KernelImage {
    /// What it is, for the model's device note.
    pub fn describe(self) -> String {
        match self {
            KernelImage::Cubin(arch, _) => format!("{arch} cubin"),
            KernelImage::Ptx => "compute_80 PTX, compiled by the driver".into(),
        }
    }
}

/// The image a device of compute capability `major.minor` loads first: the
/// cubin of its architecture family when `form` allows it (a cubin runs on
/// its major version's later minors, and `sm_90a` code only on 9.0), else
/// the PTX. The runtime falls back to the PTX if a cubin does not load.
pub fn kernel_image(major: i32, minor: i32, form: KernelForm) -> KernelImage {
    match (form, major, minor) {
        (KernelForm::Ptx, ..) => KernelImage::Ptx,
        (KernelForm::Auto, 8, _) => KernelImage::Cubin("sm_80", CUBIN_SM80),
        (KernelForm::Auto, 9, 0) => KernelImage::Cubin("sm_90a", CUBIN_SM90A),
        _ => KernelImage::Ptx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_gets_the_cubin_made_for_it_or_the_ptx() {
        let arch = |major, minor, form| match kernel_image(major, minor, form) {
            KernelImage::Cubin(arch, _) => arch,
            KernelImage::Ptx => "ptx",
        };
        // A100 (8.0), A10/RTX 30 (8.6), L4/L40 (8.9): the sm_80 cubin.
        for minor in [0, 6, 7, 9] {
            assert_eq!(arch(8, minor, KernelForm::Auto), "sm_80");
        }
        // H100, H200.
        assert_eq!(arch(9, 0, KernelForm::Auto), "sm_90a");
        // Blackwell and later: the PTX, compiled by the driver.
        for (major, minor) in [(10, 0), (12, 0), (9, 1)] {
            assert_eq!(arch(major, minor, KernelForm::Auto), "ptx");
        }
        assert_eq!(arch(9, 0, KernelForm::Ptx), "ptx");
        assert_eq!(KernelForm::parse("ptx"), Some(KernelForm::Ptx));
        assert_eq!(KernelForm::parse("cubin"), None);
    }

    /// Programmatic dependent launch (`PlanOptions::pdl`) is only sound if
    /// no kernel touches memory before it waits for the kernels ahead of
    /// it: every kernel of the source calls `wait_for_inputs()` first, and
    /// the launch plans use no other kernel.
    #[test]
    fn every_kernel_waits_for_its_inputs_first() {
        let source = include_str!("../../kernels/mmoe.cu");
        let mut kernels = Vec::new();
        for (at, _) in source.match_indices("extern \"C\" __global__") {
            let rest = &source[at..];
            let open = rest.find('{').expect("kernel body");
            let mut signature = &rest[..open];
            // `__launch_bounds__(threads, blocks)` comes before the name.
            if let Some(bounds) = signature.find("__launch_bounds__(") {
                let after = &signature[bounds..];
                signature = &after[after.find(')').expect("launch bounds") + 1..];
            }
            let name = signature[..signature.find('(').expect("parameters")]
                .split_whitespace()
                .last()
                .expect("kernel name");
            let body = rest[open + 1..].trim_start();
            assert!(
                body.starts_with("wait_for_inputs();"),
                "kernel {name} does not start with wait_for_inputs()"
            );
            kernels.push(name);
        }
        for kernel in crate::gpu::launch_plan::Kernel::ALL {
            assert!(kernels.contains(&kernel.entry()), "{}", kernel.entry());
        }
        assert_eq!(kernels.len(), crate::gpu::launch_plan::Kernel::ALL.len());
    }

    /// The embedded files are what build_kernels.py writes: ELF cubins for
    /// the named architecture and PTX for compute_80, each with every
    /// kernel the launch plans use.
    #[test]
    fn the_embedded_kernels_are_cubins_and_ptx_with_every_entry() {
        // EM_CUDA = 190; e_flags hold the SM version (0x50 = 80, 0x5a = 90,
        // sm_90a too) in bits 8 to 15.
        for (bytes, sm) in [(CUBIN_SM80, 80u8), (CUBIN_SM90A, 90u8)] {
            assert_eq!(&bytes[..4], b"\x7fELF");
            assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 190, "e_machine");
            let flags = u32::from_le_bytes([bytes[48], bytes[49], bytes[50], bytes[51]]);
            assert_eq!(
                (flags >> 8) & 0xff,
                u32::from(sm),
                "sm_{sm}: e_flags {flags:#x}"
            );
            for kernel in crate::gpu::launch_plan::Kernel::ALL {
                let name = kernel.entry().as_bytes();
                assert!(
                    bytes.windows(name.len()).any(|w| w == name),
                    "sm_{sm} cubin lacks {}",
                    kernel.entry()
                );
            }
        }
        assert!(PTX.contains(".target sm_80"));
        for kernel in crate::gpu::launch_plan::Kernel::ALL {
            assert!(
                PTX.contains(&format!(".entry {}(", kernel.entry())),
                "PTX lacks {}",
                kernel.entry()
            );
        }
    }
}
