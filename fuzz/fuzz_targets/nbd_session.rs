//! Everything a client could send on one connection: the handshake options and then
//! transmission requests, replayed against an in-memory export. The server must never
//! panic, hang or answer outside the protocol.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (out, _) = nbd::mem::replay_session(data);
    // Whatever happens, the server greets first.
    assert!(out.starts_with(b"NBDMAGIC"));
});
