//! tandem's replication core: the on-disk metadata format, and the sans-IO state
//! machine of one resource on one node (see `core`), with the pure pieces it is built
//! from (bitmaps, the connect-time decision, quorum).

pub mod bitmap;
pub mod core;
pub mod decide;
pub mod md;
pub mod quorum;
