//! Feeds text to the model config parser (`mmoe::Config::parse`); when it
//! parses, builds the plan (specs only, no weights) and, for small configs,
//! lowers it to a program. An error is fine; any panic is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmoe::plan::Plan;
use mmoe::program::Program;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = mmoe::Config::parse(text) else { return };
    let Ok(plan) = Plan::build(&config, &|_| None) else { return };
    // Valid configs may declare widths up to 2^20; keep runs fast.
    if config.x0_dim() > 4096
        || config.inputs.len() > 16
        || config.experts.len() > 16
        || config.tasks.len() > 16
    {
        return;
    }
    let _ = Program::lower(&config, &plan);
});
