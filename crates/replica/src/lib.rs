//! tandem's replication core. This first part is the on-disk metadata format that
//! blockd writes and the replication state machine will read: superblock with
//! generation UUIDs, per-peer bitmaps and the activity-log ring.

pub mod md;
