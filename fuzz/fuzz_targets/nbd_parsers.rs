//! The pure parsers of option and request headers and option payloads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd::proto;

fuzz_target!(|data: &[u8]| {
    let _ = proto::parse_option_header(data);
    let _ = proto::parse_info_request(data);
    let _ = proto::parse_export_name(data);
    if let Ok(req) = proto::parse_request(data) {
        if proto::check_request(&req, 1 << 30, 1 << 25, false) == proto::Verdict::Run {
            assert!(req.kind == proto::CMD_DISC || req.kind == proto::CMD_FLUSH
                || req.offset + u64::from(req.length) <= 1 << 30);
        }
    }
});
