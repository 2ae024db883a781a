//! Like `packed_file`, but first rewrites the header's meta checksum to match
//! the (mutated) header, config, tensor table and names, so that mutations
//! get past the checksum and into the config parser, the tensor table checks
//! and the plan/shape checks. The parser is unchanged: this only repairs the
//! one field a mutation cannot realistically hit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmoe::format::{meta_checksum, FileHeader, HEADER_LEN};

mod common;

fn region(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    if let Some(head) = data.get(..HEADER_LEN) {
        let mut header: FileHeader = bytemuck::pod_read_unaligned(head);
        let regions = (
            region(data, header.config_offset, header.config_len),
            region(data, header.table_offset, header.table_len),
            region(data, header.names_offset, header.names_len),
        );
        if let (Some(config), Some(table), Some(names)) = regions {
            header.meta_checksum = meta_checksum(&header, config, table, names);
            buf[..HEADER_LEN].copy_from_slice(bytemuck::bytes_of(&header));
        }
    }
    common::check(&buf);
});
