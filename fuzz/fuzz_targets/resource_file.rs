//! Resource files as an administrator (or a controller bug) could write them: the
//! parser must answer with a config or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = blockd::config::parse_resource(std::path::Path::new("/etc/tandem/r0.toml"), text) {
            assert!(!cfg.volumes.is_empty() && cfg.name == "r0");
        }
    }
});
