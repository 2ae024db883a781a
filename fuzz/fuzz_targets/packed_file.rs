//! Feeds arbitrary bytes to the packed model file parser
//! (`mmoe::format::reader::parse`), then checks what a loader relies on.
//! Every meta byte of a real file is guarded by the meta checksum, so most
//! mutations of a valid seed stop there; `packed_file_fixup` reaches deeper.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check(data);
});
