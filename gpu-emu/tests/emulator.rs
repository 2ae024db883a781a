//! The emulator's own guarantees, on small kernels (cpp/selftest.cu): what
//! it must catch for its parity tests to mean anything.

use mmoe_gpu_emu::launch;
use mmoe_gpu_emu::memory::DeviceMemory;

fn run(name: &str, block: u32, out: &mut [f32], extra: &[u64]) -> Result<(), String> {
    run_with_shared(name, block, 0, out, extra)
}

/// `run` with `shared` bytes of dynamic shared memory.
fn run_with_shared(
    name: &str,
    block: u32,
    shared: u32,
    out: &mut [f32],
    extra: &[u64],
) -> Result<(), String> {
    let mut args = vec![out.as_mut_ptr() as u64];
    args.extend_from_slice(extra);
    // SAFETY: the self-test kernels write out[threadIdx.x] for threadIdx.x < block ≤ out.len().
    unsafe { launch(name, (1, 1, 1), (block, 1, 1), shared, false, &args) }
}

#[test]
fn a_missing_barrier_reads_data_not_yet_written() {
    let expected =
        |salt: usize| -> Vec<f32> { (0..64).map(|t| ((t + 32) % 64 + salt) as f32).collect() };
    let mut out = vec![0.0f32; 64];
    run("selftest_exchange", 64, &mut out, &[1, 1]).unwrap();
    assert_eq!(
        out,
        expected(1),
        "with the barrier every thread reads the other warp's value"
    );
    // Without it, the first warp runs to its end before the second writes.
    let mut out = vec![0.0f32; 64];
    run("selftest_exchange", 64, &mut out, &[0, 2]).unwrap();
    let stale = out
        .iter()
        .zip(expected(2))
        .filter(|(a, b)| **a != *b)
        .count();
    assert_eq!(stale, 32, "one warp reads before the other writes: {out:?}");
}

#[test]
fn a_warp_operation_with_exited_lanes_is_an_error() {
    let mut out = vec![0.0f32; 64];
    let err = run("selftest_exited_lanes", 64, &mut out, &[]).unwrap_err();
    assert!(
        err.contains("selftest_exited_lanes") && err.contains("warp 0"),
        "{err}"
    );
}

#[test]
fn shuffles_exchange_lanes() {
    let mut out = vec![0.0f32; 64];
    run("selftest_shuffle_sum", 64, &mut out, &[]).unwrap();
    assert!(out.iter().all(|&v| v == 496.0), "{out:?}");
}

#[test]
fn unknown_kernels_and_wrong_arity_are_errors() {
    let mut out = vec![0.0f32; 1];
    let err = run("no_such_kernel", 1, &mut out, &[]).unwrap_err();
    assert!(err.contains("no kernel named no_such_kernel"), "{err}");
    let err = run("selftest_exchange", 1, &mut out, &[]).unwrap_err();
    assert!(err.contains("1 arguments, the kernel takes 3"), "{err}");
}

/// Shapes CUDA refuses are errors before any block runs (a kernel with
/// 65,536 rows on the grid's y axis passed here and failed on a GPU).
#[test]
fn launch_shapes_past_cuda_limits_are_errors() {
    let mut out = vec![0.0f32; 64];
    let args = [out.as_mut_ptr() as u64];
    for (grid, block, what) in [
        ((1, 65_536, 1), (64, 1, 1), "grid (1,65536,1)"),
        ((1, 1, 65_536), (64, 1, 1), "grid (1,1,65536)"),
        ((0, 1, 1), (64, 1, 1), "grid (0,1,1)"),
        ((1, 1, 1), (1025, 1, 1), "block (1025,1,1)"),
        ((1, 1, 1), (1, 1, 65), "block (1,1,65)"),
    ] {
        // SAFETY: refused before any thread runs, so nothing is written.
        let err = unsafe { launch("selftest_shuffle_sum", grid, block, 0, false, &args) };
        let err = err.unwrap_err();
        assert!(err.contains(what) && err.contains("CUDA"), "{err}");
    }
}

/// A cp.async lands at its issue in even blocks and only at its wait in odd
/// ones (the parity flips every launch): with the wait both blocks read what
/// they copied (zero past a short copy); without it, one of the two reads
/// what shared memory held before.
#[test]
fn cp_async_lands_by_its_wait_and_not_before() {
    let values: Vec<f32> = (0..256).map(|i| i as f32 + 0.5).collect();
    let mut input = DeviceMemory::from_slice(&values);
    let mut expected = values.clone();
    for block in 0..2 {
        expected[128 * block + 126] = 0.0;
        expected[128 * block + 127] = 0.0;
    }
    for wait in [1u64, 0, 1, 0] {
        let mut out = DeviceMemory::zeroed(256 * 4);
        let args = [out.address(), input.address(), wait];
        // SAFETY: the kernel reads in[0..256] and writes out[0..256], both allocated.
        unsafe { launch("selftest_cp_async", (2, 1, 1), (32, 1, 1), 0, false, &args) }.unwrap();
        let got: Vec<f32> = out.read(256);
        let right = (0..2)
            .filter(|&b| got[128 * b..128 * (b + 1)] == expected[128 * b..128 * (b + 1)])
            .count();
        assert_eq!(right, if wait == 1 { 2 } else { 1 }, "wait {wait}: {got:?}");
    }
}

/// Runs test `name` alone in a child process with `marker` set (the child
/// does what kills it); its output.
fn rerun_in_child(name: &str, marker: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env(marker, "1")
        .output()
        .unwrap()
}

/// Reruns test `name` in a child process with `marker` set and checks that
/// the child failed with `message` on stderr (`what` says what must not
/// have passed).
fn assert_child_aborts(name: &str, marker: &str, what: &str, message: &str) {
    let child = rerun_in_child(name, marker);
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(!child.status.success(), "{what} passed: {stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

/// Run in a child process (the check aborts it): a misaligned float4 load
/// must stop the emulator, as it would fault on a GPU.
#[test]
fn a_misaligned_vector_access_aborts() {
    if std::env::var_os("MMOE_EMU_MISALIGNED_CHILD").is_some() {
        #[repr(align(16))]
        struct Aligned([f32; 8]);
        let input = Aligned([1.0; 8]);
        let mut out = vec![0.0f32; 1];
        let _ = run(
            "selftest_misaligned",
            1,
            &mut out,
            &[input.0.as_ptr() as u64],
        );
        return;
    }
    assert_child_aborts(
        "a_misaligned_vector_access_aborts",
        "MMOE_EMU_MISALIGNED_CHILD",
        "the misaligned load",
        "misaligned address",
    );
}

/// Dynamic shared memory holds what the block's threads wrote; a kernel
/// that uses more of it than its launch gave stops the emulator (run in a
/// child process: the check aborts it), as the runtime's sizes
/// (`dynamic_shared_bytes`) must cover the kernels' own.
#[test]
fn dynamic_shared_memory_is_checked_against_the_launch() {
    let shared_launch = |shared: u32, out: &mut [f32]| {
        run_with_shared("selftest_dynamic_shared", 64, shared, out, &[])
    };
    let mut out = vec![0.0f32; 64];
    if std::env::var_os("MMOE_EMU_SHARED_CHILD").is_some() {
        let _ = shared_launch(4 * 63, &mut out);
        return;
    }
    shared_launch(4 * 64, &mut out).unwrap();
    let expected: Vec<f32> = (0..64).map(|t| ((t + 1) % 64) as f32).collect();
    assert_eq!(out, expected);
    assert_child_aborts(
        "dynamic_shared_memory_is_checked_against_the_launch",
        "MMOE_EMU_SHARED_CHILD",
        "252 bytes for 256",
        "uses 256 bytes of dynamic shared memory, its launch gave 252",
    );
}

/// Run in a child process (the fault kills it): a read one element past an
/// allocation hits its guard page, as compute-sanitizer would report.
#[test]
fn a_read_past_an_allocation_faults() {
    let mut input = DeviceMemory::from_slice(&[1.5f32; 64]);
    let at = input.address();
    let mut out = vec![0.0f32; 1];
    if std::env::var_os("MMOE_EMU_OVERRUN_CHILD").is_some() {
        let _ = run("selftest_read", 1, &mut out, &[at, 64]);
        return;
    }
    run("selftest_read", 1, &mut out, &[at, 63]).unwrap();
    assert_eq!(out[0], 1.5, "the last element reads");
    let child = rerun_in_child("a_read_past_an_allocation_faults", "MMOE_EMU_OVERRUN_CHILD");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.status.signal(), Some(libc::SIGSEGV), "{child:?}");
}

/// wgmma m64n128k16 on one warpgroup against the product computed here
/// (values whose sums are exact in f32); then, each in a child process (the
/// check aborts it), the same kernel without the fence.proxy.async after its
/// cp.async copies, and without the wgmma.fence before its MMA: each must
/// stop the emulator, as each is undefined on a GPU.
#[test]
fn wgmma_multiplies_and_needs_both_fences() {
    let x: Vec<f32> = (0..64 * 16)
        .map(|i| ((i / 16 * 3 + i % 16) % 7) as f32 - 3.0)
        .collect();
    let w: Vec<f32> = (0..128 * 16)
        .map(|i| (((i / 16) * 5 + (i % 16) * 3) % 5) as f32 * 0.5 - 1.0)
        .collect();
    let bits = |v: &[f32]| -> Vec<u16> {
        v.iter()
            .map(|&f| half::f16::from_f32(f).to_bits())
            .collect()
    };
    let mut x_dev = DeviceMemory::from_slice(&bits(&x));
    let mut w_dev = DeviceMemory::from_slice(&bits(&w));
    let mut wgmma = |proxy_fence: u64, mma_fence: u64| -> Vec<f32> {
        let mut out = vec![f32::NAN; 64 * 128];
        let extra = [x_dev.address(), w_dev.address(), proxy_fence, mma_fence];
        run_with_shared("selftest_wgmma", 128, 2 * (64 + 128) * 16, &mut out, &extra).unwrap();
        out
    };
    if std::env::var_os("MMOE_EMU_WGMMA_NO_PROXY_FENCE_CHILD").is_some() {
        wgmma(0, 1);
        return;
    }
    if std::env::var_os("MMOE_EMU_WGMMA_NO_MMA_FENCE_CHILD").is_some() {
        wgmma(1, 0);
        return;
    }
    let expected: Vec<f32> = (0..64 * 128)
        .map(|i| {
            (0..16)
                .map(|k| x[i / 128 * 16 + k] * w[i % 128 * 16 + k])
                .sum()
        })
        .collect();
    assert_eq!(wgmma(1, 1), expected);
    assert_child_aborts(
        "wgmma_multiplies_and_needs_both_fences",
        "MMOE_EMU_WGMMA_NO_PROXY_FENCE_CHILD",
        "a wgmma without its fence.proxy.async",
        "wrote with no fence.proxy.async by it since",
    );
    assert_child_aborts(
        "wgmma_multiplies_and_needs_both_fences",
        "MMOE_EMU_WGMMA_NO_MMA_FENCE_CHILD",
        "a wgmma without its wgmma.fence",
        "issues a wgmma.mma_async with no wgmma.fence",
    );
}
