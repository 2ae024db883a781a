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
        .file("cpp/context.cpp")
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-fno-strict-aliasing")
        // The fiber switch returns into another stack, which a CET shadow
        // stack would refuse: leave the objects unmarked for it.
        .flag_if_supported("-fcf-protection=none")
        // A GPU faults on a misaligned vector access (float2, float4, uint4)
        // where x86 does not: UBSan's alignment check stands in for it.
        .flag("-fsanitize=alignment,null,bounds")
        .flag("-fno-sanitize-recover=all")
        .compile("mmoe_gpu_emu");
    println!("cargo:rustc-link-lib=dylib=ubsan");
    for path in [
        "../kernels/mmoe.cu",
        "../kernels/common.cuh",
        "cpp/cuda_emu.hpp",
        "cpp/scheduler.hpp",
        "cpp/scheduler.cpp",
        "cpp/context.hpp",
        "cpp/context.cpp",
        "cpp/launch.cpp",
        "cpp/selftest.cu",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
