//! Build script:
//! - generates the C header `include/mmoe.h` from `src/ffi/` with cbindgen
//!   (pinned in Cargo.toml); the header is checked in, and the test command
//!   fails when the checked-in copy is stale;
//! - records the target and profile, which benchmarks report.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=MMOE_BUILD_TARGET={target}");
    println!("cargo:rustc-env=MMOE_BUILD_PROFILE={profile}");
    // The shared library's soname carries the ABI version (README.md:
    // "Versions and the soname").
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmmoe.so.{ABI_VERSION}");
    }
    generate_header();
}

/// Must equal `ffi::ABI_VERSION` (tests/integration/ffi.rs checks the header's macro
/// against the library).
const ABI_VERSION: u32 = 1;

fn generate_header() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let version = |part: &str| {
        std::env::var(format!("CARGO_PKG_VERSION_{part}")).unwrap_or_else(|_| "0".into())
    };
    let (major, minor, patch) = (version("MAJOR"), version("MINOR"), version("PATCH"));
    let number = major.parse::<u32>().unwrap_or(0) * 10000
        + minor.parse::<u32>().unwrap_or(0) * 100
        + patch.parse::<u32>().unwrap_or(0);
    let mut config = match cbindgen::Config::from_file(root.join("cbindgen.toml")) {
        Ok(config) => config,
        Err(e) => panic!("cbindgen.toml: {e}"),
    };
    config.after_includes = Some(format!(
        "\n/* Version of this header; compare with mmoe_version_number() at run time. */\n\
         #define MMOE_VERSION_MAJOR {major}\n#define MMOE_VERSION_MINOR {minor}\n#define MMOE_VERSION_PATCH {patch}\n\
         #define MMOE_VERSION_NUMBER {number} /* MAJOR * 10000 + MINOR * 100 + PATCH */\n\
         #define MMOE_ABI_VERSION {ABI_VERSION} /* compare with mmoe_abi_version() */\n"
    ));
    let header = match cbindgen::Builder::new()
        .with_crate(&root)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            let mut bytes = Vec::new();
            bindings.write(&mut bytes);
            bytes
        }
        Err(e) => panic!("cbindgen could not generate include/mmoe.h: {e}"),
    };
    let path = root.join("include").join("mmoe.h");
    // Write only on change, so the header's timestamp (and anything built
    // from it) moves only when its content does.
    if std::fs::read(&path).ok().as_deref() != Some(header.as_slice()) {
        if let Err(e) = std::fs::write(&path, &header) {
            println!("cargo:warning=cannot write {}: {e}", path.display());
        }
    }
}
