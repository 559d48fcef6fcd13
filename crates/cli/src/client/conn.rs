//! Finding a controller and talking to it: the address list (`--controllers`,
//! `LS_CONTROLLERS`, client config files), fall-through in order, JSON over HTTP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub const DEFAULT_PORT: u16 = 3370;
pub const DEFAULT_CONTROLLERS: &str = "localhost:3370";
/// Used when the environment names no config file; the first one that sets
/// `controllers` in `[global]` wins.
const SYSTEM_CONFIGS: [&str; 1] = ["/etc/linstor/linstor-client.conf"];
const SYSTEM_CONFIG_DIR: &str = "/etc/linstor/linstor-client.d";
/// Names one config file to read instead of the usual ones (for tests and scripts).
pub const CONFIG_ENV: &str = "TANDEM_CLIENT_CONFIG";

/// Where the controller list came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerList {
    pub addrs: Vec<String>,
    pub source: String,
}

/// `host`, `host:port`, `[v6]:port`, `v6`, with an optional `linstor://` or `http://`.
pub fn parse_addr(entry: &str) -> Result<String> {
    let e = entry.trim();
    let rest = if let Some(r) = e.strip_prefix("linstor://") {
        r
    } else if let Some(r) = e.strip_prefix("http://") {
        r
    } else if e.starts_with("https://") || e.starts_with("linstor+ssl://") {
        bail!("{e:?}: HTTPS is not supported yet; use the plain HTTP port (3370)")
    } else if e.contains("://") {
        bail!("{e:?}: unknown scheme; write host[:port]")
    } else {
        e
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        bail!("empty controller address");
    }
    if rest.contains(['/', ' ', '?', '#', '@']) {
        bail!("{e:?} is not an address; write host[:port], e.g. 10.0.0.1:3370");
    }
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .with_context(|| format!("{e:?}: missing ']' after the IPv6 address"))?;
        match after.strip_prefix(':') {
            Some(p) => (format!("[{h}]"), Some(p)),
            None if after.is_empty() => (format!("[{h}]"), None),
            None => bail!("{e:?}: expected ':port' after ']'"),
        }
    } else if rest.matches(':').count() > 1 {
        (format!("[{rest}]"), None) // a bare IPv6 address
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("{e:?}: {p:?} is not a port number"))?,
    };
    Ok(format!("{host}:{port}"))
}

pub fn parse_list(list: &str) -> Result<Vec<String>> {
    let addrs: Vec<String> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse_addr)
        .collect::<Result<_>>()?;
    if addrs.is_empty() {
        bail!("the controller list {list:?} names no controller");
    }
    Ok(addrs)
}

/// `controllers` in the `[global]` section of an ini file, as linstor-client reads it.
pub fn controllers_in_ini(text: &str) -> Option<String> {
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().to_ascii_lowercase();
            continue;
        }
        if section != "global" {
            continue;
        }
        if let Some((k, v)) = l.split_once(['=', ':'])
            && k.trim().eq_ignore_ascii_case("controllers")
        {
            return Some(v.trim().to_owned());
        }
    }
    None
}

fn config_files() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(CONFIG_ENV) {
        return vec![PathBuf::from(p)];
    }
    let mut files = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        let home = Path::new(&home);
        files.push(home.join(".config/tandem/client.conf"));
        files.push(home.join(".config/linstor/linstor-client.conf"));
    }
    files.extend(SYSTEM_CONFIGS.iter().map(PathBuf::from));
    if let Ok(dir) = std::fs::read_dir(SYSTEM_CONFIG_DIR) {
        let mut extra: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        extra.sort();
        files.extend(extra);
    }
    files
}

/// The controllers to try: `--controllers` or `LS_CONTROLLERS` (clap gives either as
/// `flag`), else the first config file that sets them, else localhost:3370.
pub fn resolve(flag: Option<&str>, use_config: bool) -> Result<ControllerList> {
    if let Some(list) = flag {
        return Ok(ControllerList {
            addrs: parse_list(list).context("--controllers / LS_CONTROLLERS")?,
            source: "--controllers / LS_CONTROLLERS".into(),
        });
    }
    if use_config {
        let explicit = std::env::var_os(CONFIG_ENV).is_some();
        for f in config_files() {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
            };
            if let Some(list) = controllers_in_ini(&text) {
                return Ok(ControllerList {
                    addrs: parse_list(&list)
                        .with_context(|| format!("controllers in {}", f.display()))?,
                    source: f.display().to_string(),
                });
            }
        }
    }
    Ok(ControllerList {
        addrs: parse_list(DEFAULT_CONTROLLERS)?,
        source: "the default".into(),
    })
}

/// No controller answered: the message names every address tried and why.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A connection to the first controller that answered.
#[derive(Debug)]
pub struct Api {
    agent: ureq::Agent,
    pub base: String,
}

/// An answer: HTTP status and the JSON body (Null when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

const BODY_LIMIT: u64 = 256 << 20;

fn read(resp: ureq::http::Response<ureq::Body>, what: &str) -> Result<Reply> {
    let status = resp.status().as_u16();
    let mut resp = resp;
    let text = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_string()
        .with_context(|| format!("{what}: reading the answer"))?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| {
            let head: String = text.chars().take(200).collect();
            format!("{what}: HTTP {status}, the answer is not JSON: {head}")
        })?
    };
    Ok(Reply { status, body })
}

impl Api {
    /// Tries each controller in order with `GET /v1/controller/version`; the first that
    /// answers is used for the whole command.
    pub fn connect(list: &ControllerList, timeout: Duration) -> Result<Api> {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5).min(timeout)))
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent: ureq::Agent = config.into();
        let mut tried = Vec::new();
        for addr in &list.addrs {
            let base = format!("http://{addr}");
            let url = format!("{base}/v1/controller/version");
            match agent.get(&url).call() {
                Ok(resp) => match read(resp, &url) {
                    Ok(r) if r.status == 200 && r.body.get("rest_api_version").is_some() => {
                        return Ok(Api { agent, base });
                    }
                    Ok(r) => tried.push(format!(
                        "{addr}: HTTP {} and not a LINSTOR controller version",
                        r.status
                    )),
                    Err(e) => tried.push(format!("{addr}: {e:#}")),
                },
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        Err(Unreachable(format!(
            "no controller reachable (list from {}); tried:\n  {}\n\
             Start one with `tandem controller`, or name it with --controllers HOST[:PORT] \
             or LS_CONTROLLERS.",
            list.source,
            tried.join("\n  ")
        ))
        .into())
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&form_encode(query));
        }
        url
    }

    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Reply> {
        let url = self.url(path, query);
        let resp = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        read(resp, &format!("GET {url}"))
    }

    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        let url = self.url(path, &[]);
        let what = format!("{method} {url}");
        let resp = match (method, body) {
            ("POST", Some(b)) => self.agent.post(&url).send_json(b),
            ("POST", None) => self.agent.post(&url).send_empty(),
            ("PUT", Some(b)) => self.agent.put(&url).send_json(b),
            ("PUT", None) => self.agent.put(&url).send_empty(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            _ => bail!("unsupported method {method}"),
        }
        .with_context(|| what.clone())?;
        read(resp, &what)
    }

    pub fn delete(&self, path: &str, query: &[(&str, String)]) -> Result<Reply> {
        let url = self.url(path, query);
        let resp = self
            .agent
            .delete(&url)
            .call()
            .with_context(|| format!("DELETE {url}"))?;
        read(resp, &format!("DELETE {url}"))
    }
}

/// Percent-encodes one path segment (names come from the user).
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn form_encode(q: &[(&str, String)]) -> String {
    q.iter()
        .map(|(k, v)| format!("{}={}", seg(k), seg(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("localhost").unwrap(), "localhost:3370");
        assert_eq!(parse_addr(" 10.0.0.1:4000 ").unwrap(), "10.0.0.1:4000");
        assert_eq!(parse_addr("linstor://ctl").unwrap(), "ctl:3370");
        assert_eq!(parse_addr("http://ctl:1/").unwrap(), "ctl:1");
        assert_eq!(parse_addr("[::1]:3371").unwrap(), "[::1]:3371");
        assert_eq!(parse_addr("fe80::1").unwrap(), "[fe80::1]:3370");
        for bad in ["", "a:b", "a:0", "https://x", "ftp://x", "a/b", "[::1"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_list("a, b:1,,").unwrap(),
            vec!["a:3370".to_owned(), "b:1".to_owned()]
        );
        assert!(parse_list(" , ").is_err());
    }

    #[test]
    fn ini() {
        let text = "# comment\n[other]\ncontrollers=no\n[global]\n; x\ncontrollers = a,b:1\n";
        assert_eq!(controllers_in_ini(text).as_deref(), Some("a,b:1"));
        assert_eq!(controllers_in_ini("[global]\nfoo=1\n"), None);
        assert_eq!(controllers_in_ini("controllers=x\n"), None);
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("vm-100_disk.0"), "vm-100_disk.0");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
