//! blockd, tandem's node data plane: it owns the volumes of this node, serves them over
//! NBD and answers the admin socket. It runs as its own process so that restarting the
//! management side never touches I/O.

pub mod admin;
pub mod config;
pub mod daemon;
pub mod peer;
pub mod repl;
pub mod replmd;
pub mod volume;
