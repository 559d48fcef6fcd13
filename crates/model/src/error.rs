//! The one error type of the model. Every variant carries what happened and lets
//! [`ModelError::correction`] say what to do: the REST layer turns them into LINSTOR
//! ApiCallRc entries (`message` = Display, `cause`, `correction`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of object an error is about; it also picks the ApiCallRc object mask later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    Controller,
    Node,
    NetInterface,
    StoragePool,
    ResourceGroup,
    VolumeGroup,
    ResourceDefinition,
    VolumeDefinition,
    Resource,
    Volume,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Controller => "controller",
            Self::Node => "node",
            Self::NetInterface => "net interface",
            Self::StoragePool => "storage pool",
            Self::ResourceGroup => "resource group",
            Self::VolumeGroup => "volume group",
            Self::ResourceDefinition => "resource definition",
            Self::VolumeDefinition => "volume definition",
            Self::Resource => "resource",
            Self::Volume => "volume",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A name breaks LINSTOR's rules for its kind.
    #[error("invalid {kind} name '{name}': {reason}")]
    InvalidName {
        kind: ObjectKind,
        name: String,
        reason: String,
    },
    /// The object to create exists already (names compare case-insensitively, as in LINSTOR).
    #[error("{kind} '{name}' already exists")]
    Exists { kind: ObjectKind, name: String },
    /// The object named in the request does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound { kind: ObjectKind, name: String },
    /// A property key or value is not acceptable.
    #[error("invalid property '{key}'='{value}': {reason}")]
    InvalidProperty {
        key: String,
        value: String,
        reason: String,
        /// What the caller may use instead.
        allowed: String,
    },
    /// A field of a request is out of range or contradicts another.
    #[error("invalid {field}: {reason}")]
    InvalidValue {
        field: String,
        reason: String,
        correction: String,
    },
    /// The object cannot be changed or deleted while other objects depend on it.
    #[error("{kind} '{name}' is in use: {reason}")]
    InUse {
        kind: ObjectKind,
        name: String,
        reason: String,
        correction: String,
    },
    /// The auto-placer found no set of nodes that satisfies the select filter.
    #[error("cannot place resource '{resource}': {reason}")]
    NotEnoughNodes {
        resource: String,
        reason: String,
        /// What would have to change (more nodes, a pool, relaxed constraints).
        correction: String,
    },
    /// Every number of a pool (node ids, TCP ports) is taken.
    #[error("no free {what} left in {lo}..={hi}")]
    Exhausted { what: String, lo: u32, hi: u32 },
}

impl ModelError {
    /// The cause as LINSTOR's ApiCallRc `cause` text.
    pub fn cause(&self) -> String {
        match self {
            Self::InvalidName { reason, .. } => reason.clone(),
            Self::Exists { kind, .. } => {
                format!("a {kind} with that name (compared ignoring case) exists")
            }
            Self::NotFound { kind, name } => format!("there is no {kind} named '{name}'"),
            Self::InvalidProperty { reason, .. } => reason.clone(),
            Self::InvalidValue { reason, .. } => reason.clone(),
            Self::InUse { reason, .. } => reason.clone(),
            Self::NotEnoughNodes { reason, .. } => reason.clone(),
            Self::Exhausted { what, lo, hi } => {
                format!("every {what} in {lo}..={hi} is allocated")
            }
        }
    }

    /// What the user can do about it, as LINSTOR's ApiCallRc `correction` text.
    pub fn correction(&self) -> String {
        match self {
            Self::InvalidName { kind, .. } => match kind {
                ObjectKind::Node => "use a host name: 2 to 255 characters, labels of letters, digits \
                     and '-' separated by '.', not starting or ending with '-'"
                    .into(),
                ObjectKind::NetInterface => "use 3 to 32 characters: a letter or '_' first, then letters, \
                     digits, '_' or '-', with at least one letter"
                    .into(),
                ObjectKind::StoragePool => "use 3 to 48 characters: a letter or '_' first, then letters, \
                     digits, '_' or '-', with at least one letter"
                    .into(),
                _ => "use 2 to 48 characters: a letter or '_' first, then letters, digits, '_' or '-', \
                      with at least one letter (not 'all' or 'proxy')"
                    .into(),
            },
            Self::Exists { kind, .. } => {
                format!("choose another name, or modify or delete the existing {kind}")
            }
            Self::NotFound { kind, .. } => {
                format!("check the name (list them), or create the {kind} first")
            }
            Self::InvalidProperty { allowed, .. } => allowed.clone(),
            Self::InvalidValue { correction, .. } => correction.clone(),
            Self::InUse { correction, .. } => correction.clone(),
            Self::NotEnoughNodes { correction, .. } => correction.clone(),
            Self::Exhausted { what, .. } => format!(
                "delete objects that hold a {what}, or widen the range (controller property \
                 TcpPortAutoRange for TCP ports)"
            ),
        }
    }

    pub(crate) fn not_found(kind: ObjectKind, name: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            name: name.into(),
        }
    }

    pub(crate) fn exists(kind: ObjectKind, name: impl Into<String>) -> Self {
        Self::Exists {
            kind,
            name: name.into(),
        }
    }

    pub(crate) fn invalid(
        field: impl Into<String>,
        reason: impl Into<String>,
        correction: impl Into<String>,
    ) -> Self {
        Self::InvalidValue {
            field: field.into(),
            reason: reason.into(),
            correction: correction.into(),
        }
    }
}
