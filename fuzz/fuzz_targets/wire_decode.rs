//! Whatever a peer sends: decoding never panics, never allocates beyond the frame, and
//! anything that decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // A stream of frames, as a connection delivers them.
    for _ in 0..64 {
        match wire::Msg::decode(rest) {
            Ok((msg, used)) => {
                assert_eq!(msg.encode(), rest[..used].to_vec());
                rest = &rest[used..];
            }
            Err(_) => break,
        }
    }
});
