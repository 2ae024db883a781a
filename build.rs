//! Build script: records the target and profile the library was built for,
//! so that benchmarks and `mmoe --version`-style reports can state them.
//! (The C header generation joins here with the C ABI.)

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=MMOE_BUILD_TARGET={target}");
    println!("cargo:rustc-env=MMOE_BUILD_PROFILE={profile}");
}
