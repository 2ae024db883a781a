//! What both targets do with a byte string: parse it as a packed file and,
//! when it parses, do what a loader does next. A returned error is fine; a
//! panic (including a failed assertion below) is a finding.

use mmoe::format::reader::{parse, verify_checksums};
use mmoe::format::{DType, TENSOR_ALIGN};

pub fn check(data: &[u8]) {
    let Ok(layout) = parse(data) else { return };

    // The invariants `parse` promises for every entry (see `TensorEntry`):
    // in bounds, aligned, in order and not overlapping, one per plan tensor,
    // a whole number of elements.
    assert_eq!(layout.tensors.len(), layout.plan.tensors.len());
    let elem = layout.dtype.size();
    let mut previous_end = layout.header.data_offset as usize;
    for entry in &layout.tensors {
        // What `Model::open` / `Model::values` index: must be in bounds.
        let bytes = &data[entry.bytes.clone()];
        assert!(entry.bytes.start >= previous_end, "tensors overlap or are out of order");
        assert_eq!(entry.bytes.start % TENSOR_ALIGN, 0, "tensor `{}` misaligned", entry.name);
        assert_eq!(bytes.len() % elem, 0, "tensor `{}` is not whole elements", entry.name);
        assert_eq!(entry.dtype, layout.dtype);
        previous_end = entry.bytes.end;
    }
    assert!(previous_end <= data.len());

    // The typed views a model hands out: copy into an 8-aligned buffer (as a
    // page-aligned map would be) so the casts `Model::open` proves valid must
    // succeed, then read a few elements like the kernels do.
    let mut aligned = vec![0u64; data.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..data.len()].copy_from_slice(data);
    let base = &bytemuck::cast_slice::<u64, u8>(&aligned)[..data.len()];
    let mut sink = 0f32;
    for entry in &layout.tensors {
        let bytes = &base[entry.bytes.clone()];
        match layout.dtype {
            DType::F16 => {
                let v: &[half::f16] = bytemuck::try_cast_slice(bytes).expect("f16 cast");
                if let (Some(a), Some(b)) = (v.first(), v.last()) {
                    sink += a.to_f32() + b.to_f32();
                }
            }
            DType::F32 => {
                let v: &[f32] = bytemuck::try_cast_slice(bytes).expect("f32 cast");
                if let (Some(a), Some(b)) = (v.first(), v.last()) {
                    sink += a + b;
                }
            }
        }
    }
    std::hint::black_box(sink);

    // Checksums: an error is fine, a panic is not.
    let _ = verify_checksums(data, &layout);
}
