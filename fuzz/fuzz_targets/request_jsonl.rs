//! Feeds one JSONL request line to `mmoe::jsonl::parse_request` for a fixed
//! small config (tests/common/small_config.json); when it parses, validates
//! the borrowed request against the config. An error is fine; any panic is a
//! finding.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mmoe::Config;

static CONFIG: OnceLock<Config> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let config = CONFIG.get_or_init(|| {
        Config::parse(include_str!("../../tests/common/small_config.json"))
            .expect("small config parses")
    });
    let Ok(line) = std::str::from_utf8(data) else { return };
    let Ok(owned) = mmoe::jsonl::parse_request(line, config) else { return };
    let _ = owned.as_request().validate(config);
});
