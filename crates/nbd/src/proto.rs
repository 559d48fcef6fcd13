//! Wire constants and pure parsers of the NBD protocol (fixed newstyle).
//!
//! Everything here works on byte slices and never panics on any input, so that the
//! fuzz target and the property tests can throw arbitrary bytes at it.

use thiserror::Error;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Info types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Error values allowed on the wire (the spec restricts them to this set).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const ESHUTDOWN: u32 = 108;

/// Longest export name we accept (the spec caps strings at 4096 bytes).
pub const MAX_NAME_LEN: usize = 4096;
/// Most info requests one GO/INFO may carry; more is not a real client.
pub const MAX_INFO_REQUESTS: usize = 64;

pub const OPTION_HEADER_LEN: usize = 16;
pub const REQUEST_HEADER_LEN: usize = 28;

#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum ParseError {
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("message truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("export name of {0} bytes exceeds the {MAX_NAME_LEN}-byte limit")]
    NameTooLong(usize),
    #[error("export name is not UTF-8")]
    NameNotUtf8,
    #[error("{0} info requests exceed the limit of {MAX_INFO_REQUESTS}")]
    TooManyInfos(usize),
    #[error("option data has {0} trailing bytes")]
    Trailing(usize),
}

fn be_u16(b: &[u8], at: usize) -> Result<u16, ParseError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or(ParseError::Truncated {
            need: at + 2,
            have: b.len(),
        })
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, ParseError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(ParseError::Truncated {
            need: at + 4,
            have: b.len(),
        })
}

fn be_u64(b: &[u8], at: usize) -> Result<u64, ParseError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(ParseError::Truncated {
            need: at + 8,
            have: b.len(),
        })
}

/// Header of one option the client sends during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

pub fn parse_option_header(b: &[u8]) -> Result<OptionHeader, ParseError> {
    let magic = be_u64(b, 0)?;
    if magic != IHAVEOPT {
        return Err(ParseError::BadMagic(magic));
    }
    Ok(OptionHeader {
        option: be_u32(b, 8)?,
        length: be_u32(b, 12)?,
    })
}

/// Data of NBD_OPT_INFO and NBD_OPT_GO: an export name and the info types asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

pub fn parse_info_request(b: &[u8]) -> Result<InfoRequest, ParseError> {
    let name_len = be_u32(b, 0)? as usize;
    if name_len > MAX_NAME_LEN {
        return Err(ParseError::NameTooLong(name_len));
    }
    let name_end = 4 + name_len;
    let name = b.get(4..name_end).ok_or(ParseError::Truncated {
        need: name_end,
        have: b.len(),
    })?;
    let name = std::str::from_utf8(name)
        .map_err(|_| ParseError::NameNotUtf8)?
        .to_owned();
    let count = be_u16(b, name_end)? as usize;
    if count > MAX_INFO_REQUESTS {
        return Err(ParseError::TooManyInfos(count));
    }
    let mut infos = Vec::with_capacity(count);
    for i in 0..count {
        infos.push(be_u16(b, name_end + 2 + 2 * i)?);
    }
    let used = name_end + 2 + 2 * count;
    if b.len() != used {
        return Err(ParseError::Trailing(b.len().saturating_sub(used)));
    }
    Ok(InfoRequest { name, infos })
}

/// Data of NBD_OPT_EXPORT_NAME: the whole option payload is the name.
pub fn parse_export_name(b: &[u8]) -> Result<String, ParseError> {
    if b.len() > MAX_NAME_LEN {
        return Err(ParseError::NameTooLong(b.len()));
    }
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| ParseError::NameNotUtf8)
}

/// One transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

pub fn parse_request(b: &[u8]) -> Result<Request, ParseError> {
    let magic = be_u32(b, 0)?;
    if magic != REQUEST_MAGIC {
        return Err(ParseError::BadMagic(u64::from(magic)));
    }
    Ok(Request {
        flags: be_u16(b, 4)?,
        kind: be_u16(b, 6)?,
        cookie: be_u64(b, 8)?,
        offset: be_u64(b, 16)?,
        length: be_u32(b, 24)?,
    })
}

/// What the server does with a parsed request, decided before any payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Carry it out.
    Run,
    /// Answer with this error. `payload` says whether the client still sends data that
    /// must be read (and dropped) first, to stay in step with the stream.
    Fail { errno: u32, payload: bool },
    /// The stream cannot be kept in step (a write payload beyond our limit): close it.
    Close,
}

/// Checks a request against the export's size, our payload limit and the flags each
/// command accepts, with the errors the spec asks for.
pub fn check_request(
    req: &Request,
    export_size: u64,
    max_payload: u32,
    read_only: bool,
) -> Verdict {
    let len = u64::from(req.length);
    let in_range = req
        .offset
        .checked_add(len)
        .is_some_and(|end| end <= export_size);
    let bad_flags = |allowed: u16| req.flags & !allowed != 0;
    let fail = |errno| Verdict::Fail {
        errno,
        payload: false,
    };
    match req.kind {
        CMD_READ => {
            if bad_flags(0) || req.length > max_payload || !in_range {
                fail(EINVAL)
            } else {
                Verdict::Run
            }
        }
        CMD_WRITE => {
            if req.length > max_payload {
                Verdict::Close
            } else if bad_flags(CMD_FLAG_FUA) {
                Verdict::Fail {
                    errno: EINVAL,
                    payload: true,
                }
            } else if read_only {
                Verdict::Fail {
                    errno: EPERM,
                    payload: true,
                }
            } else if !in_range {
                Verdict::Fail {
                    errno: ENOSPC,
                    payload: true,
                }
            } else {
                Verdict::Run
            }
        }
        CMD_FLUSH => {
            if bad_flags(0) {
                fail(EINVAL)
            } else {
                Verdict::Run
            }
        }
        CMD_TRIM => {
            if bad_flags(CMD_FLAG_FUA) || !in_range {
                fail(EINVAL)
            } else if read_only {
                fail(EPERM)
            } else {
                Verdict::Run
            }
        }
        CMD_WRITE_ZEROES => {
            if bad_flags(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE) {
                fail(EINVAL)
            } else if read_only {
                fail(EPERM)
            } else if !in_range {
                fail(ENOSPC)
            } else {
                Verdict::Run
            }
        }
        CMD_DISC => Verdict::Run,
        _ => fail(EINVAL),
    }
}

/// Encodes an option reply header followed by `data`.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    // Callers only pass data bounded by MAX_NAME_LEN-sized strings.
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Encodes a simple reply header into the first 16 bytes of `out`.
pub fn simple_reply_header(out: &mut [u8; 16], errno: u32, cookie: u64) {
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&errno.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
        }
    }

    #[test]
    fn request_roundtrip() {
        let mut b = Vec::new();
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&CMD_WRITE.to_be_bytes());
        b.extend_from_slice(&0xdead_beefu64.to_be_bytes());
        b.extend_from_slice(&4096u64.to_be_bytes());
        b.extend_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(
            r,
            Request {
                flags: 1,
                kind: CMD_WRITE,
                cookie: 0xdead_beef,
                offset: 4096,
                length: 512
            }
        );
        b[0] ^= 1;
        assert!(matches!(parse_request(&b), Err(ParseError::BadMagic(_))));
    }

    #[test]
    fn info_request_parses_and_rejects_trailing_or_short_data() {
        let mut b = Vec::new();
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(b"r/0");
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        b.extend_from_slice(&INFO_NAME.to_be_bytes());
        let r = parse_info_request(&b).unwrap();
        assert_eq!(r.name, "r/0");
        assert_eq!(r.infos, vec![INFO_BLOCK_SIZE, INFO_NAME]);
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(parse_info_request(&longer), Err(ParseError::Trailing(1)));
        assert!(matches!(
            parse_info_request(&b[..b.len() - 1]),
            Err(ParseError::Truncated { .. })
        ));
        let mut huge = b.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_info_request(&huge),
            Err(ParseError::NameTooLong(_))
        ));
    }

    #[test]
    fn range_and_flag_checks_follow_the_spec() {
        let size = 1 << 20;
        let max = 1 << 25;
        assert_eq!(
            check_request(&req(CMD_READ, 0, 0, 4096), size, max, false),
            Verdict::Run
        );
        assert_eq!(
            check_request(&req(CMD_READ, 0, size - 512, 4096), size, max, false),
            Verdict::Fail {
                errno: EINVAL,
                payload: false
            }
        );
        assert_eq!(
            check_request(&req(CMD_WRITE, 0, size, 1), size, max, false),
            Verdict::Fail {
                errno: ENOSPC,
                payload: true
            }
        );
        assert_eq!(
            check_request(&req(CMD_WRITE, 0, 0, max + 1), size, max, false),
            Verdict::Close
        );
        assert_eq!(
            check_request(&req(CMD_READ, 0, u64::MAX, 1), size, max, false),
            Verdict::Fail {
                errno: EINVAL,
                payload: false
            }
        );
        assert_eq!(
            check_request(&req(CMD_READ, CMD_FLAG_FUA, 0, 1), size, max, false),
            Verdict::Fail {
                errno: EINVAL,
                payload: false
            }
        );
        assert_eq!(
            check_request(
                &req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 0, 4096),
                size,
                max,
                false
            ),
            Verdict::Run
        );
        assert_eq!(
            check_request(&req(CMD_WRITE, 0, 0, 1), size, max, true),
            Verdict::Fail {
                errno: EPERM,
                payload: true
            }
        );
        assert_eq!(
            check_request(&req(99, 0, 0, 0), size, max, false),
            Verdict::Fail {
                errno: EINVAL,
                payload: false
            }
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_option_header(&data);
            let _ = parse_info_request(&data);
            let _ = parse_export_name(&data);
            if let Ok(r) = parse_request(&data) {
                let _ = check_request(&r, 1 << 30, 1 << 25, false);
            }
        }

        #[test]
        fn run_verdict_implies_in_range(offset in any::<u64>(), length in any::<u32>(), kind in 0u16..8) {
            let r = req(kind, 0, offset, length);
            if check_request(&r, 1 << 30, 1 << 25, false) == Verdict::Run && kind != CMD_DISC && kind != CMD_FLUSH {
                prop_assert!(offset.checked_add(u64::from(length)).is_some_and(|e| e <= 1 << 30));
            }
        }
    }
}
