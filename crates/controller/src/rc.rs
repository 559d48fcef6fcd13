//! LINSTOR's `ApiCallRc`: the list every mutation answers, with `ret_code` built from
//! the bit masks of linstor-common `consts.json` (type bits 62–63, operation, object,
//! code), and the HTTP status LINSTOR derives from it (`ApiCallRcRestUtils.toResponse`):
//! an error with a code of 300..=399 is 404, any other error 500, JSON that does not
//! parse 400, success the status of the endpoint (201 creates, 200 otherwise).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use model::{ModelError, ObjectKind};
use serde::{Deserialize, Serialize};

pub const MASK_ERROR: u64 = 0xC000_0000_0000_0000;
pub const MASK_WARN: u64 = 0x8000_0000_0000_0000;
pub const MASK_INFO: u64 = 0x4000_0000_0000_0000;
pub const MASK_BITS_TYPE: u64 = 0xC000_0000_0000_0000;

pub const MASK_CRT: u64 = 0x0100_0000;
pub const MASK_MOD: u64 = 0x0200_0000;
pub const MASK_DEL: u64 = 0x0300_0000;

pub const MASK_VLM_GRP: u64 = 0x48_0000;
pub const MASK_RSC_GRP: u64 = 0x44_0000;
pub const MASK_NODE: u64 = 0x3C_0000;
pub const MASK_RSC_DFN: u64 = 0x38_0000;
pub const MASK_RSC: u64 = 0x34_0000;
pub const MASK_VLM_DFN: u64 = 0x30_0000;
pub const MASK_VLM: u64 = 0x2C_0000;
pub const MASK_NET_IF: u64 = 0x1C_0000;
pub const MASK_STOR_POOL: u64 = 0x14_0000;
pub const MASK_CTRL_CONF: u64 = 0x10_0000;

pub const MASK_BITS_CODE: u64 = 0x7FFF;

pub const CREATED: u64 = 1;
pub const DELETED: u64 = 2;
pub const MODIFIED: u64 = 3;

pub const FAIL_SQL: u64 = 100;
pub const FAIL_INVLD_NODE_NAME: u64 = 200;
pub const FAIL_INVLD_NODE_TYPE: u64 = 201;
pub const FAIL_INVLD_RSC_NAME: u64 = 202;
pub const FAIL_INVLD_NODE_ID: u64 = 204;
pub const FAIL_INVLD_VLM_NR: u64 = 205;
pub const FAIL_INVLD_VLM_SIZE: u64 = 206;
pub const FAIL_INVLD_STOR_POOL_NAME: u64 = 208;
pub const FAIL_INVLD_NET_NAME: u64 = 209;
pub const FAIL_INVLD_NET_ADDR: u64 = 210;
pub const FAIL_INVLD_NET_PORT: u64 = 211;
pub const FAIL_INVLD_NET_TYPE: u64 = 212;
pub const FAIL_INVLD_PROP: u64 = 213;
pub const FAIL_INVLD_TCP_PORT: u64 = 215;
pub const FAIL_INVLD_PLACE_COUNT: u64 = 219;
pub const FAIL_INVLD_PROVIDER: u64 = 227;
pub const FAIL_INVLD_VLM_SIZES: u64 = 228;
pub const FAIL_INVLD_REQUEST: u64 = 234;
pub const FAIL_INVLD_RSC_GRP_NAME: u64 = 237;
pub const FAIL_NOT_FOUND_NODE: u64 = 300;
pub const FAIL_NOT_FOUND_RSC_DFN: u64 = 301;
pub const FAIL_NOT_FOUND_RSC: u64 = 302;
pub const FAIL_NOT_FOUND_VLM_DFN: u64 = 303;
pub const FAIL_NOT_FOUND_VLM: u64 = 304;
pub const FAIL_NOT_FOUND_NET_IF: u64 = 305;
pub const FAIL_NOT_FOUND_STOR_POOL: u64 = 310;
pub const FAIL_NOT_FOUND_RSC_GRP: u64 = 317;
pub const FAIL_NOT_FOUND_VLM_GRP: u64 = 318;
pub const FAIL_EXISTS_NODE: u64 = 500;
pub const FAIL_EXISTS_RSC_DFN: u64 = 501;
pub const FAIL_EXISTS_RSC: u64 = 502;
pub const FAIL_EXISTS_VLM_DFN: u64 = 503;
pub const FAIL_EXISTS_VLM: u64 = 504;
pub const FAIL_EXISTS_NET_IF: u64 = 505;
pub const FAIL_EXISTS_STOR_POOL: u64 = 510;
pub const FAIL_EXISTS_RSC_GRP: u64 = 522;
pub const FAIL_EXISTS_VLM_GRP: u64 = 523;
pub const FAIL_POOL_EXHAUSTED_VLM_NR: u64 = 800;
pub const FAIL_POOL_EXHAUSTED_TCP_PORT: u64 = 802;
pub const FAIL_POOL_EXHAUSTED_NODE_ID: u64 = 803;
pub const FAIL_NOT_ENOUGH_NODES: u64 = 996;
pub const FAIL_IN_USE: u64 = 997;
pub const FAIL_UNKNOWN_ERROR: u64 = 998;
pub const WARN_NOT_CONNECTED: u64 = 1002;
pub const WARN_NOT_ENOUGH_NODES_FOR_TIE_BREAKER: u64 = 1013;
pub const INFO_NO_RSC_SPAWNED: u64 = 10000;
pub const INFO_TIE_BREAKER_CREATED: u64 = 10003;
pub const INFO_TIE_BREAKER_DELETING: u64 = 10004;
/// `API_CALL_PARSE_ERROR`: the request body was not the JSON the endpoint takes.
pub const API_CALL_PARSE_ERROR: u64 = 0x0FFF_FFFF_FFFF_FFFD | MASK_ERROR;

/// One entry of an `ApiCallRcList` (OpenAPI `ApiCallRc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCallRc {
    /// Signed as LINSTOR's JSON carries it: errors and warnings are negative.
    pub ret_code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub obj_refs: BTreeMap<String, String>,
}

/// What a request does, for the operation bits of `ret_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Modify,
    Delete,
    /// Reads and queries: no operation bits.
    Query,
}

impl Op {
    fn mask(self) -> u64 {
        match self {
            Op::Create => MASK_CRT,
            Op::Modify => MASK_MOD,
            Op::Delete => MASK_DEL,
            Op::Query => 0,
        }
    }
}

pub fn object_mask(kind: ObjectKind) -> u64 {
    match kind {
        ObjectKind::Controller => MASK_CTRL_CONF,
        ObjectKind::Node => MASK_NODE,
        ObjectKind::NetInterface => MASK_NET_IF,
        ObjectKind::StoragePool => MASK_STOR_POOL,
        ObjectKind::ResourceGroup => MASK_RSC_GRP,
        ObjectKind::VolumeGroup => MASK_VLM_GRP,
        ObjectKind::ResourceDefinition => MASK_RSC_DFN,
        ObjectKind::VolumeDefinition => MASK_VLM_DFN,
        ObjectKind::Resource => MASK_RSC,
        ObjectKind::Volume => MASK_VLM,
    }
}

/// The `ret_code` as LINSTOR's JSON shows it: the u64 bit pattern read as i64.
pub fn signed(code: u64) -> i64 {
    i64::from_ne_bytes(code.to_ne_bytes())
}

/// The request context an entry belongs to: what was done to which kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub op: Op,
    pub kind: ObjectKind,
}

impl Ctx {
    pub fn new(op: Op, kind: ObjectKind) -> Self {
        Self { op, kind }
    }

    fn code(self, type_mask: u64, code: u64) -> i64 {
        signed(type_mask | self.op.mask() | object_mask(self.kind) | code)
    }

    pub fn success(self, code: u64, message: impl Into<String>) -> ApiCallRc {
        ApiCallRc {
            ret_code: self.code(0, code),
            message: message.into(),
            cause: None,
            correction: None,
            details: None,
            obj_refs: BTreeMap::new(),
        }
    }

    pub fn info(self, code: u64, message: impl Into<String>) -> ApiCallRc {
        ApiCallRc {
            ret_code: self.code(MASK_INFO, code),
            ..self.success(0, message)
        }
    }

    pub fn warn(self, code: u64, message: impl Into<String>) -> ApiCallRc {
        ApiCallRc {
            ret_code: self.code(MASK_WARN, code),
            ..self.success(0, message)
        }
    }

    pub fn error(
        self,
        code: u64,
        message: impl Into<String>,
        cause: impl Into<String>,
        correction: impl Into<String>,
    ) -> ApiCallRc {
        ApiCallRc {
            ret_code: self.code(MASK_ERROR, code),
            message: message.into(),
            cause: Some(cause.into()),
            correction: Some(correction.into()),
            details: None,
            obj_refs: BTreeMap::new(),
        }
    }

    /// A model error as LINSTOR would report it for this request.
    pub fn model_error(self, e: &ModelError) -> ApiCallRc {
        self.error(error_code(e), e.to_string(), e.cause(), e.correction())
    }
}

impl ApiCallRc {
    pub fn with_ref(mut self, key: &str, value: impl Into<String>) -> Self {
        self.obj_refs.insert(key.to_owned(), value.into());
        self
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    fn bits(&self) -> u64 {
        u64::from_ne_bytes(self.ret_code.to_ne_bytes())
    }

    pub fn is_error(&self) -> bool {
        self.bits() & MASK_BITS_TYPE == MASK_ERROR
    }

    pub fn is_warning(&self) -> bool {
        self.bits() & MASK_BITS_TYPE == MASK_WARN
    }

    pub fn is_info(&self) -> bool {
        self.bits() & MASK_BITS_TYPE == MASK_INFO
    }
}

/// The code bits for a model error.
pub fn error_code(e: &ModelError) -> u64 {
    use ObjectKind as K;
    match e {
        ModelError::InvalidName { kind, .. } => match kind {
            K::Node => FAIL_INVLD_NODE_NAME,
            K::ResourceDefinition | K::Resource => FAIL_INVLD_RSC_NAME,
            K::StoragePool => FAIL_INVLD_STOR_POOL_NAME,
            K::NetInterface => FAIL_INVLD_NET_NAME,
            K::ResourceGroup => FAIL_INVLD_RSC_GRP_NAME,
            _ => FAIL_INVLD_REQUEST,
        },
        ModelError::Exists { kind, .. } => match kind {
            K::Node => FAIL_EXISTS_NODE,
            K::ResourceDefinition => FAIL_EXISTS_RSC_DFN,
            K::Resource => FAIL_EXISTS_RSC,
            K::VolumeDefinition => FAIL_EXISTS_VLM_DFN,
            K::Volume => FAIL_EXISTS_VLM,
            K::NetInterface => FAIL_EXISTS_NET_IF,
            K::StoragePool => FAIL_EXISTS_STOR_POOL,
            K::ResourceGroup => FAIL_EXISTS_RSC_GRP,
            K::VolumeGroup => FAIL_EXISTS_VLM_GRP,
            K::Controller => FAIL_INVLD_REQUEST,
        },
        ModelError::NotFound { kind, .. } => match kind {
            K::Node => FAIL_NOT_FOUND_NODE,
            K::ResourceDefinition => FAIL_NOT_FOUND_RSC_DFN,
            K::Resource => FAIL_NOT_FOUND_RSC,
            K::VolumeDefinition => FAIL_NOT_FOUND_VLM_DFN,
            K::Volume => FAIL_NOT_FOUND_VLM,
            K::NetInterface => FAIL_NOT_FOUND_NET_IF,
            K::StoragePool => FAIL_NOT_FOUND_STOR_POOL,
            K::ResourceGroup => FAIL_NOT_FOUND_RSC_GRP,
            K::VolumeGroup => FAIL_NOT_FOUND_VLM_GRP,
            K::Controller => FAIL_INVLD_REQUEST,
        },
        ModelError::InvalidProperty { .. } => FAIL_INVLD_PROP,
        ModelError::InvalidValue { field, .. } => match field.as_str() {
            "size_kib" => FAIL_INVLD_VLM_SIZE,
            "volume_sizes" => FAIL_INVLD_VLM_SIZES,
            "place_count" => FAIL_INVLD_PLACE_COUNT,
            "node_id" => FAIL_INVLD_NODE_ID,
            "volume_number" => FAIL_INVLD_VLM_NR,
            "port" => FAIL_INVLD_TCP_PORT,
            "node type" => FAIL_INVLD_NODE_TYPE,
            "storage provider kind" | "provider_kind" => FAIL_INVLD_PROVIDER,
            "net interface address" => FAIL_INVLD_NET_ADDR,
            "satellite port" => FAIL_INVLD_NET_PORT,
            "satellite encryption type" => FAIL_INVLD_NET_TYPE,
            _ => FAIL_INVLD_REQUEST,
        },
        ModelError::InUse { .. } => FAIL_IN_USE,
        ModelError::NotEnoughNodes { .. } => FAIL_NOT_ENOUGH_NODES,
        ModelError::Exhausted { what, .. } => {
            if what.contains("TCP port") {
                FAIL_POOL_EXHAUSTED_TCP_PORT
            } else if what.contains("node id") {
                FAIL_POOL_EXHAUSTED_NODE_ID
            } else if what.contains("volume number") {
                FAIL_POOL_EXHAUSTED_VLM_NR
            } else {
                FAIL_UNKNOWN_ERROR
            }
        }
    }
}

/// LINSTOR's HTTP status for an answer (`ApiCallRcRestUtils.toResponse`): the first
/// error decides; without errors the endpoint's success status.
pub fn http_status(rcs: &[ApiCallRc], success: StatusCode) -> StatusCode {
    match rcs.iter().find(|r| r.is_error()) {
        None => success,
        Some(e) if e.bits() == API_CALL_PARSE_ERROR => StatusCode::BAD_REQUEST,
        Some(e) => {
            let code = e.bits() & MASK_BITS_CODE;
            if (FAIL_NOT_FOUND_NODE..=399).contains(&code) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ret_codes_match_linstor() {
        // python-linstor's test_responses.py: FAIL_EXISTS_RSC on a resource create.
        let e = Ctx::new(Op::Create, ObjectKind::Resource).error(FAIL_EXISTS_RSC, "m", "c", "x");
        assert_eq!(e.ret_code, -4_611_686_018_407_202_314);
        assert!(e.is_error() && !e.is_warning());
        let ok = Ctx::new(Op::Create, ObjectKind::Node).success(CREATED, "m");
        assert_eq!(ok.ret_code, 0x3C_0000 | 0x100_0000 | 1);
        assert!(!ok.is_error() && !ok.is_info());
        let w = Ctx::new(Op::Create, ObjectKind::Node).warn(WARN_NOT_CONNECTED, "w");
        assert!(w.ret_code < 0 && w.is_warning() && !w.is_error());
        let i = Ctx::new(Op::Create, ObjectKind::Resource).info(INFO_TIE_BREAKER_CREATED, "i");
        assert!(i.ret_code > 0 && i.is_info());
        assert_eq!(signed(API_CALL_PARSE_ERROR) as u64, 0xCFFF_FFFF_FFFF_FFFD);
        assert!(signed(API_CALL_PARSE_ERROR) < 0);
    }

    #[test]
    fn statuses_follow_linstor() {
        let c = Ctx::new(Op::Create, ObjectKind::Node);
        let nf = c.model_error(&ModelError::NotFound {
            kind: ObjectKind::Node,
            name: "x".into(),
        });
        assert_eq!(
            http_status(&[nf], StatusCode::CREATED),
            StatusCode::NOT_FOUND
        );
        let ex = c.model_error(&ModelError::Exists {
            kind: ObjectKind::Node,
            name: "x".into(),
        });
        assert_eq!(ex.ret_code & 0x7FFF, 500);
        assert_eq!(
            http_status(&[ex], StatusCode::CREATED),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let parse = ApiCallRc {
            ret_code: signed(API_CALL_PARSE_ERROR),
            ..c.success(0, "bad json")
        };
        assert_eq!(
            http_status(&[parse], StatusCode::OK),
            StatusCode::BAD_REQUEST
        );
        let ok = c.success(CREATED, "ok");
        assert_eq!(http_status(&[ok], StatusCode::CREATED), StatusCode::CREATED);
    }
}
