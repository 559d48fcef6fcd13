//! Bytes a REST client sends as a request body, parsed and converted as every
//! controller endpoint does (`controller::wire::parse_all`): a request or an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = controller::wire::parse_all(data);
});
