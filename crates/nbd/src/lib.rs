//! An NBD server written for tandem: fixed-newstyle handshake (GO, INFO, LIST, ABORT,
//! EXPORT_NAME; structured replies and meta contexts are refused), and a transmission
//! phase with READ, WRITE (+FUA), FLUSH, TRIM, WRITE_ZEROES and DISC, many requests in
//! flight per connection. Protocol reference: NetworkBlockDevice/nbd `doc/proto.md`.

pub mod mem;
pub mod proto;
pub mod server;

pub use server::{
    BlockDevice, Completion, DeviceError, ExportInfo, Exports, Limits, OpenError, Outcome, Stream,
    Submit, serve,
};

#[cfg(test)]
mod session_tests;
