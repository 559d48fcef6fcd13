//! The controller's HTTP client for one satellite: `PUT /v1/satellite/desired` and
//! `GET /v1/satellite/observed`, over one kept-alive HTTP/1.1 connection that is made
//! again after any failure. Every step has a deadline and every answer a size limit.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use model::satellite::{DesiredState, MAX_DESIRED_BYTES, ObservedState};
use serde::Deserialize;

pub const PATH_DESIRED: &str = "/v1/satellite/desired";
pub const PATH_OBSERVED: &str = "/v1/satellite/observed";
/// The largest observed state read (4096 resources with peers fit many times over).
pub const MAX_OBSERVED_BYTES: usize = 16 << 20;
/// The largest answer to a push.
pub const MAX_PUSH_ANSWER_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SatError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {} ms", .after.as_millis())]
    Timeout { addr: String, after: Duration },
    #[error("HTTP with {addr} failed: {source}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{addr} sent an answer larger than {limit} bytes")]
    TooLarge { addr: String, limit: usize },
    #[error("the desired state is {size} bytes, more than a satellite takes ({limit})")]
    DesiredTooLarge { size: usize, limit: usize },
    #[error("{addr} answered {path} with HTTP {status}: {message}")]
    Status {
        addr: String,
        path: &'static str,
        status: u16,
        message: String,
    },
    #[error("{addr} answered {path} with JSON that is not {what}: {source}")]
    Json {
        addr: String,
        path: &'static str,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding the desired state: {0}")]
    Encode(#[source] serde_json::Error),
}

impl SatError {
    /// The satellite answered and refused (4xx): pushing the same again will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Status { status, .. } if (400..500).contains(status))
    }
}

#[derive(Debug, Deserialize)]
struct PushAnswer {
    generation: u64,
}

#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    error: String,
}

#[derive(Debug)]
pub struct SatClient {
    addr: String,
    connect_timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl SatClient {
    pub fn new(addr: &str, connect_timeout: Duration) -> Self {
        Self {
            addr: addr.to_owned(),
            connect_timeout,
            sender: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Reads the satellite's observed state.
    pub async fn observed(&mut self, timeout: Duration) -> Result<ObservedState, SatError> {
        let body = self
            .call(
                Method::GET,
                PATH_OBSERVED,
                None,
                timeout,
                MAX_OBSERVED_BYTES,
            )
            .await?;
        serde_json::from_slice(&body).map_err(|source| SatError::Json {
            addr: self.addr.clone(),
            path: PATH_OBSERVED,
            what: "an observed state",
            source,
        })
    }

    /// Pushes a desired state; the generation the satellite says it holds now.
    pub async fn push(&mut self, d: &DesiredState, timeout: Duration) -> Result<u64, SatError> {
        let body = serde_json::to_vec(d).map_err(SatError::Encode)?;
        if body.len() > MAX_DESIRED_BYTES {
            return Err(SatError::DesiredTooLarge {
                size: body.len(),
                limit: MAX_DESIRED_BYTES,
            });
        }
        let answer = self
            .call(
                Method::PUT,
                PATH_DESIRED,
                Some(body),
                timeout,
                MAX_PUSH_ANSWER_BYTES,
            )
            .await?;
        let a: PushAnswer = serde_json::from_slice(&answer).map_err(|source| SatError::Json {
            addr: self.addr.clone(),
            path: PATH_DESIRED,
            what: "{\"generation\": N}",
            source,
        })?;
        Ok(a.generation)
    }

    async fn call(
        &mut self,
        method: Method,
        path: &'static str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Bytes, SatError> {
        let addr = self.addr.clone();
        let res = tokio::time::timeout(timeout, self.exchange(method, path, body, limit)).await;
        let res = match res {
            Ok(r) => r,
            Err(_) => Err(SatError::Timeout {
                addr: addr.clone(),
                after: timeout,
            }),
        };
        let (status, bytes) = match res {
            Ok(x) => x,
            Err(e) => {
                // Whatever state the connection is in, the next call makes a new one.
                self.sender = None;
                return Err(e);
            }
        };
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<ErrorAnswer>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                    .trim()
                    .to_owned()
            });
        Err(SatError::Status {
            addr,
            path,
            status: status.as_u16(),
            message,
        })
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &'static str,
        body: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), SatError> {
        let addr = self.addr.clone();
        let http = |source| SatError::Http {
            addr: addr.clone(),
            source,
        };
        let reusable = match self.sender.as_mut() {
            Some(s) => !s.is_closed() && s.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.sender = Some(self.connect().await?);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(SatError::Connect {
                addr,
                source: std::io::Error::other("no connection"),
            });
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.as_str());
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| SatError::Connect {
                addr: addr.clone(),
                source: std::io::Error::other(e),
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(h) => http(*h),
                Err(_) => SatError::TooLarge {
                    addr: addr.clone(),
                    limit,
                },
            })?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SatError> {
        let addr = self.addr.clone();
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(addr.as_str()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(SatError::Connect { addr, source }),
            Err(_) => {
                return Err(SatError::Timeout {
                    addr,
                    after: self.connect_timeout,
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| SatError::Http {
                addr: addr.clone(),
                source,
            })?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the satellite closes the connection.
            let _ = conn.await;
        });
        Ok(sender)
    }
}
