//! tandem's cluster model: LINSTOR's objects (nodes, storage pools, resource groups,
//! resource definitions, resources and their volumes), its name rules, properties with
//! inheritance and the `DrbdOptions/...` mapping onto tandem's resource options, and the
//! auto-placer. A pure library: no I/O, no clocks. The controller keeps one [`Cluster`],
//! changes it only through its methods (each checks everything before changing
//! anything) and stores it (serde) in its database.

pub mod cluster;
pub mod desired;
pub mod error;
mod load;
pub mod name;
pub mod objects;
pub mod options;
pub mod placer;
pub mod props;
pub mod satellite;

pub use cluster::{
    Cluster, DeleteOutcome, NetInterfaceModify, NodeCreate, NodeModify, ResourceCreate,
    ResourceDefinitionCreate, ResourceDefinitionModify, ResourceGroupCreate, ResourceGroupModify,
    Spawn, SpawnOutcome, StoragePoolCreate, VolumeDefinitionCreate, VolumeGroupCreate,
};
pub use error::{ModelError, ObjectKind};
pub use objects::*;
pub use options::ResourceOptions;
pub use placer::{DiskfulPick, DisklessPick, Placement};
pub use props::{EffectiveProp, PropSource, Props, PropsModify};
