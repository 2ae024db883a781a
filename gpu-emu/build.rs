//! Compiles kernels/mmoe.cu for the host with the emulated CUDA builtins.
fn main() {
    let kernels = std::path::Path::new("../kernels");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(kernels)
        .include("cpp")
        .file("cpp/launch.cpp")
        .file("cpp/scheduler.cpp")
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-fno-strict-aliasing")
        .compile("mmoe_gpu_emu");
    for path in [
        "../kernels/mmoe.cu",
        "../kernels/common.cuh",
        "cpp/cuda_emu.hpp",
        "cpp/scheduler.hpp",
        "cpp/scheduler.cpp",
        "cpp/launch.cpp",
        "cpp/selftest.cu",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
