//! The admin socket protocol: one JSON object per line each way, documented in
//! docs/admin-socket.md. Requests run one at a time in the daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest request or response line either side accepts.
pub const MAX_LINE: u64 = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// A struct variant so that unknown fields are refused like everywhere else.
    Status {},
    /// Bring resources up; `None` means all.
    Up {
        resource: Option<String>,
    },
    Down {
        resource: Option<String>,
    },
    /// Re-read the config directory and apply the difference.
    Adjust {
        resource: Option<String>,
    },
    CreateMd {
        resource: String,
        #[serde(default)]
        force: bool,
    },
    /// Become primary; `force` also with data that is not UpToDate or without quorum.
    Primary {
        resource: String,
        #[serde(default)]
        force: bool,
    },
    /// Give up the primary role; `force` also while NBD clients hold the volume open:
    /// their requests, those held while I/O is suspended included, fail with an I/O
    /// error (the way out of a suspension).
    Secondary {
        resource: String,
        #[serde(default)]
        force: bool,
    },
    /// Allow connecting to `peer` (a node name; all peers when absent) again.
    Connect {
        resource: String,
        #[serde(default)]
        peer: Option<String>,
        #[serde(default)]
        discard_my_data: bool,
    },
    Disconnect {
        resource: String,
        #[serde(default)]
        peer: Option<String>,
    },
    /// Throw this node's data away and take a full resync.
    Invalidate {
        resource: String,
    },
    /// Compare this node's data with a peer's (all UpToDate peers when absent), block
    /// by block; blocks that differ are marked out of sync and resynced.
    Verify {
        resource: String,
        #[serde(default)]
        peer: Option<String>,
    },
    /// Use the local disk again after it was detached for an I/O error.
    Attach {
        resource: String,
    },
    /// Online grow: every volume's backing (one volume when `volume` is given) grows
    /// to `size` bytes, metadata included, like the resource file's `size`. Shrinking
    /// is refused. On a resource that is down here, only this node's backing grows.
    Resize {
        resource: String,
        size: u64,
        #[serde(default)]
        volume: Option<u32>,
    },
    /// Stream state changes: after the first answer, one JSON event per line until the
    /// client disconnects.
    Events {},
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Default::default()
        }
    }
    pub fn err(error: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(error.into()),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub config_dir: String,
    pub run_dir: String,
    pub resources: Vec<ResourceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub file: String,
    /// "up" or "down".
    pub state: String,
    /// Why the resource is not up, and what to do.
    pub error: Option<String>,
    pub volumes: Vec<VolumeStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub number: u32,
    pub backing: String,
    /// Exported bytes, when the metadata could be read.
    pub size: Option<u64>,
    pub backing_size: Option<u64>,
    /// Being served.
    pub open: bool,
    pub nbd_socket: String,
    pub nbd_uri: String,
    pub nbd_tcp: Option<String>,
    pub nbd_tcp_uri: Option<String>,
    pub export_name: String,
    pub connections: u64,
    /// "clean" or "unclean": how the run before this open ended.
    pub previous_shutdown: Option<String>,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub error: Option<String>,
    /// "Primary" or "Secondary" (a volume of a resource without peers is always
    /// primary while up).
    pub role: Option<String>,
    /// UpToDate, Consistent, Outdated, Inconsistent or Diskless.
    pub disk_state: Option<String>,
    pub quorum: Option<bool>,
    pub may_promote: Option<bool>,
    /// Node name this blockd runs as (replicated resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Generation UUID of the data (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_uuid: Option<String>,
    /// Bytes this node still has to receive from its sync source.
    #[serde(default)]
    pub resync_left_bytes: u64,
    /// Checksum-based resync: bytes this node, as sync target, found equal to its
    /// source's and did not need copied (since the volume came up).
    #[serde(default)]
    pub resync_same_bytes: u64,
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// Why the local disk was detached (it failed an I/O); the node then works
    /// through its peers with disk_state Diskless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached: Option<String>,
    /// What to run when the state needs a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Why client I/O is suspended ("no quorum", under on-no-quorum suspend-io):
    /// requests are held, neither completed nor failed; null when it is not.
    #[serde(default)]
    pub suspended: Option<String>,
    /// While suspended: client requests held, and the bytes of write data held.
    #[serde(default)]
    pub held_requests: u64,
    #[serde(default)]
    pub held_bytes: u64,
    /// allow-two-primaries: this node is the second primary and the named node
    /// orders its writes (null otherwise).
    #[serde(default)]
    pub writes_via: Option<String>,
}

/// One peer of a replicated volume as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub node_id: u8,
    pub address: String,
    pub diskless: bool,
    /// StandAlone, Connecting, Handshake or Connected.
    pub connection: String,
    /// Off, Established, SyncSource or SyncTarget.
    pub replication: String,
    pub role: Option<String>,
    pub disk_state: Option<String>,
    /// Bytes the peer lacks compared to this node (its out-of-sync bitmap).
    pub out_of_sync_bytes: u64,
    /// Of the running resync, how much is done (0-100).
    pub resync_done_percent: Option<f64>,
    pub resync_sent_bytes: u64,
    pub resync_received_bytes: u64,
    /// Bytes per second of the running resync with this peer (both directions).
    #[serde(default)]
    pub resync_rate_bytes_per_s: Option<u64>,
    /// Why the connection is refused or failed last.
    pub reason: Option<String>,
    /// An online verify against this peer is running.
    #[serde(default)]
    pub verifying: bool,
    /// Of the running or last verify, how much is done (0-100).
    #[serde(default)]
    pub verify_done_percent: Option<f64>,
    /// Bytes the running or last verify found different.
    #[serde(default)]
    pub verify_out_of_sync_bytes: u64,
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "cannot reach blockd at {path}: {source} (is `tandem blockd` running? pass --admin-socket PATH if it uses another socket)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to blockd: {0}")]
    Io(#[from] std::io::Error),
    #[error("blockd sent an unreadable answer: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("blockd closed the connection without answering")]
    NoAnswer,
}

/// Sends one request and waits for its answer.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s.take(MAX_LINE)).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(ClientError::NoAnswer);
    }
    Ok(serde_json::from_str(&answer)?)
}

/// Sends an `events` request and copies every event line to `out` until blockd closes
/// the stream.
pub fn stream_events(socket: &Path, out: &mut dyn Write) -> Result<(), ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    let mut line = serde_json::to_vec(&Request::Events {})?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut r = BufReader::new(s);
    let mut first = String::new();
    (&mut r).take(MAX_LINE).read_line(&mut first)?;
    let resp: Response = serde_json::from_str(&first)?;
    if !resp.ok {
        return Err(ClientError::Io(std::io::Error::other(
            resp.error.unwrap_or_default(),
        )));
    }
    loop {
        let mut ev = String::new();
        if (&mut r).take(MAX_LINE).read_line(&mut ev)? == 0 {
            return Ok(());
        }
        out.write_all(ev.as_bytes())?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape_is_stable() {
        let r: Request =
            serde_json::from_str(r#"{"command":"create-md","resource":"r0"}"#).unwrap();
        assert_eq!(
            r,
            Request::CreateMd {
                resource: "r0".into(),
                force: false
            }
        );
        let r: Request = serde_json::from_str(r#"{"command":"up"}"#).unwrap();
        assert_eq!(r, Request::Up { resource: None });
        let r: Request =
            serde_json::from_str(r#"{"command":"secondary","resource":"r0"}"#).unwrap();
        assert_eq!(
            r,
            Request::Secondary {
                resource: "r0".into(),
                force: false
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"status","x":1}"#).is_err());
    }
}
