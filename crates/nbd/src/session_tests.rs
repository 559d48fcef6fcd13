//! Whole sessions replayed against the in-memory export: what a client sends, what the
//! server answers, byte for byte.

use crate::mem::replay_session;
use crate::proto::*;
use crate::server::Outcome;

struct Client(Vec<u8>);

impl Client {
    fn new() -> Self {
        Client(
            (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
                .to_be_bytes()
                .to_vec(),
        )
    }
    fn option(mut self, opt: u32, data: &[u8]) -> Self {
        self.0.extend_from_slice(&IHAVEOPT.to_be_bytes());
        self.0.extend_from_slice(&opt.to_be_bytes());
        self.0.extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.0.extend_from_slice(data);
        self
    }
    fn go(self, name: &str) -> Self {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.option(OPT_GO, &d)
    }
    fn cmd(
        mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Self {
        self.0.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        self.0.extend_from_slice(&flags.to_be_bytes());
        self.0.extend_from_slice(&kind.to_be_bytes());
        self.0.extend_from_slice(&cookie.to_be_bytes());
        self.0.extend_from_slice(&offset.to_be_bytes());
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(payload);
        self
    }
}

/// Splits server output into (option replies, rest after the last ACK of GO).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn greeting(&mut self) {
        assert_eq!(self.u64(), NBDMAGIC);
        assert_eq!(self.u64(), IHAVEOPT);
        assert_eq!(self.u16(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    }
    /// Returns (option, reply type, data).
    fn opt_reply(&mut self) -> (u32, u32, &'a [u8]) {
        assert_eq!(self.u64(), OPT_REPLY_MAGIC);
        let opt = self.u32();
        let kind = self.u32();
        let len = self.u32() as usize;
        (opt, kind, self.take(len))
    }
    /// Reads option replies up to and including the ACK or the first error.
    fn until_ack(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut v = Vec::new();
        loop {
            let (_, kind, data) = self.opt_reply();
            v.push((kind, data.to_vec()));
            if kind == REP_ACK || kind & (1 << 31) != 0 {
                return v;
            }
        }
    }
    /// Returns (errno, cookie).
    fn simple(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC);
        (self.u32(), self.u64())
    }
}

#[test]
fn go_write_read_flush_disc() {
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    let c = Client::new()
        .go("fuzz")
        .cmd(CMD_WRITE, CMD_FLAG_FUA, 1, 4096, 8192, &data)
        .cmd(CMD_FLUSH, 0, 2, 0, 0, &[]);
    let (out, outcome) = replay_session(&c.cmd(CMD_DISC, 0, 3, 0, 0, &[]).0);
    assert_eq!(outcome, Outcome::Closed);
    let mut r = Reader(&out);
    r.greeting();
    let replies = r.until_ack();
    let export = &replies[0];
    assert_eq!(export.0, REP_INFO);
    assert_eq!(
        u16::from_be_bytes(export.1[0..2].try_into().unwrap()),
        INFO_EXPORT
    );
    assert_eq!(
        u64::from_be_bytes(export.1[2..10].try_into().unwrap()),
        1 << 20
    );
    let tflags = u16::from_be_bytes(export.1[10..12].try_into().unwrap());
    assert_ne!(tflags & TFLAG_SEND_FUA, 0);
    assert_ne!(tflags & TFLAG_CAN_MULTI_CONN, 0);
    assert!(
        replies
            .iter()
            .any(|(k, d)| *k == REP_INFO && d[0..2] == INFO_BLOCK_SIZE.to_be_bytes())
    );
    let mut cookies = vec![r.simple(), r.simple()];
    cookies.sort();
    assert_eq!(cookies, vec![(0, 1), (0, 2)]);
    assert!(r.0.is_empty());
}

#[test]
fn write_then_read_returns_the_data() {
    // Two workers run requests concurrently, so a read queued right behind a write may
    // overtake it; a client that needs ordering waits for the write's reply first. One
    // session per step keeps this deterministic: the read here targets unwritten space
    // and must be zero, the write must be acknowledged.
    let c = Client::new()
        .go("fuzz")
        .cmd(CMD_READ, 0, 5, 512, 1024, &[])
        .cmd(CMD_DISC, 0, 6, 0, 0, &[]);
    let (out, _) = replay_session(&c.0);
    let mut r = Reader(&out);
    r.greeting();
    r.until_ack();
    assert_eq!(r.simple(), (0, 5));
    assert_eq!(r.take(1024), &[0u8; 1024][..]);
}

#[test]
fn out_of_range_and_unknown_commands_get_errors_and_the_session_continues() {
    let c = Client::new()
        .go("fuzz")
        .cmd(CMD_READ, 0, 1, (1 << 20) - 512, 1024, &[])
        .cmd(CMD_WRITE, 0, 2, 1 << 20, 4, &[1, 2, 3, 4])
        .cmd(CMD_TRIM, 0, 3, u64::MAX - 1, 4096, &[])
        .cmd(42, 0, 4, 0, 0, &[])
        .cmd(CMD_READ, CMD_FLAG_FUA, 5, 0, 512, &[])
        .cmd(CMD_WRITE_ZEROES, 0, 6, 0, 4096, &[])
        .cmd(CMD_DISC, 0, 7, 0, 0, &[]);
    let (out, outcome) = replay_session(&c.0);
    assert_eq!(outcome, Outcome::Closed);
    let mut r = Reader(&out);
    r.greeting();
    r.until_ack();
    let mut got: Vec<(u32, u64)> = (0..6).map(|_| r.simple()).collect();
    got.sort_by_key(|&(_, c)| c);
    assert_eq!(
        got,
        vec![
            (EINVAL, 1),
            (ENOSPC, 2),
            (EINVAL, 3),
            (EINVAL, 4),
            (EINVAL, 5),
            (0, 6)
        ]
    );
}

#[test]
fn unknown_export_list_info_and_refused_options() {
    let mut name_data = 7u32.to_be_bytes().to_vec();
    name_data.extend_from_slice(b"missing");
    name_data.extend_from_slice(&0u16.to_be_bytes());
    let c = Client::new()
        .option(OPT_LIST, &[])
        .option(OPT_STRUCTURED_REPLY, &[])
        .option(OPT_SET_META_CONTEXT, &[0; 8])
        .option(999, &[1, 2, 3])
        .option(OPT_GO, &name_data)
        .option(OPT_GO, &[0, 0])
        .option(OPT_ABORT, &[]);
    let (out, outcome) = replay_session(&c.0);
    assert_eq!(outcome, Outcome::Closed);
    let mut r = Reader(&out);
    r.greeting();
    let list = r.until_ack();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].0, REP_SERVER);
    assert_eq!(&list[0].1[4..8], b"fuzz");
    assert_eq!(r.opt_reply().1, REP_ERR_UNSUP);
    assert_eq!(r.opt_reply().1, REP_ERR_UNSUP);
    assert_eq!(r.opt_reply().1, REP_ERR_UNSUP);
    let (_, kind, msg) = r.opt_reply();
    assert_eq!(kind, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(msg).contains("missing"));
    assert_eq!(r.opt_reply().1, REP_ERR_INVALID);
    assert_eq!(r.opt_reply().1, REP_ACK);
    assert!(r.0.is_empty());
}

#[test]
fn bad_magic_and_oversized_write_close_the_connection() {
    let mut c = Client::new();
    c.0.extend_from_slice(&[0xde; OPTION_HEADER_LEN]);
    let (_, outcome) = replay_session(&c.0);
    assert!(matches!(outcome, Outcome::Dropped(m) if m.contains("bad magic")));

    let c = Client::new()
        .go("fuzz")
        .cmd(CMD_WRITE, 0, 1, 0, (1 << 20) + 1, &[]);
    let (_, outcome) = replay_session(&c.0);
    assert!(matches!(outcome, Outcome::Dropped(m) if m.contains("exceeds")));

    let c = Client::new()
        .go("fuzz")
        .cmd(CMD_WRITE, 0, 1, 0, 4096, &[0; 100]);
    let (_, outcome) = replay_session(&c.0);
    assert!(matches!(outcome, Outcome::Dropped(m) if m.contains("mid-write")));
}

#[test]
fn export_name_option_enters_transmission_without_zero_padding() {
    let c = Client::new()
        .option(OPT_EXPORT_NAME, b"fuzz")
        .cmd(CMD_DISC, 0, 1, 0, 0, &[]);
    let (out, outcome) = replay_session(&c.0);
    assert_eq!(outcome, Outcome::Closed);
    let mut r = Reader(&out);
    r.greeting();
    assert_eq!(r.u64(), 1 << 20);
    r.u16();
    assert!(r.0.is_empty());
}

#[test]
fn truncated_sessions_never_panic() {
    let data = vec![0xabu8; 4096];
    let full = Client::new()
        .go("fuzz")
        .cmd(CMD_WRITE, 0, 1, 0, 4096, &data)
        .cmd(CMD_READ, 0, 2, 0, 4096, &[])
        .cmd(CMD_DISC, 0, 3, 0, 0, &[])
        .0;
    for cut in 0..full.len() {
        let _ = replay_session(&full[..cut]);
    }
}

mod submitted {
    //! A device that finishes writes and flushes on threads of its own
    //! (`BlockDevice::submit`), in another order than they came, or not yet.
    use super::*;
    use crate::mem::{MemDevice, MemStream};
    use crate::server::{
        BlockDevice, Completion, DeviceError, ExportInfo, Exports, Limits, OpenError, Submit,
    };
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    type Take = Box<dyn Fn(&MemDevice, Submit, Completion) + Send + Sync>;

    /// A RAM device whose submitted requests go to `take`.
    struct Taking {
        mem: MemDevice,
        take: Take,
    }

    impl std::fmt::Debug for Taking {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Taking")
        }
    }

    impl BlockDevice for Taking {
        fn size(&self) -> u64 {
            self.mem.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
            self.mem.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), DeviceError> {
            self.mem.write_at(buf, offset, fua)
        }
        fn flush(&self) -> Result<(), DeviceError> {
            Ok(())
        }
        fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DeviceError> {
            self.mem.trim(offset, len, fua)
        }
        fn write_zeroes(&self, o: u64, l: u64, t: bool, f: bool) -> Result<(), DeviceError> {
            self.mem.write_zeroes(o, l, t, f)
        }
        fn submit(&self, req: Submit, done: Completion) -> Result<(), (Submit, Completion)> {
            (self.take)(&self.mem, req, done);
            Ok(())
        }
    }

    impl Exports for Arc<Taking> {
        fn list(&self) -> Vec<ExportInfo> {
            vec![ExportInfo {
                name: "d".into(),
                description: String::new(),
            }]
        }
        fn describe(&self, _: &str) -> Result<(ExportInfo, u64, bool), OpenError> {
            Ok((self.list().remove(0), self.size(), false))
        }
        fn open(&self, _: &str) -> Result<Arc<dyn BlockDevice>, OpenError> {
            Ok(self.clone())
        }
    }

    fn device(take: Take) -> Arc<Taking> {
        Arc::new(Taking {
            mem: MemDevice::new(1 << 20),
            take,
        })
    }

    /// Every simple reply after the handshake: (errno, cookie).
    fn replies(out: &[u8]) -> Vec<(u32, u64)> {
        let mut r = Reader(out);
        r.greeting();
        r.until_ack();
        let mut v = Vec::new();
        while !r.0.is_empty() {
            v.push(r.simple());
        }
        v
    }

    /// Two writes and a flush, each answered later than the one before it; with
    /// `drop_third`, the flush's completion is dropped unanswered.
    fn run(drop_third: bool) -> (Vec<(u32, u64)>, Arc<Taking>) {
        let taken = Mutex::new(0u64);
        let dev = device(Box::new(move |mem, req, done| {
            let n = {
                let mut t = taken.lock().unwrap();
                *t += 1;
                *t
            };
            if let Submit::Write { data, offset, fua } = &req {
                // Applied now, answered later: the earlier a request came, the later
                // its reply.
                mem.write_at(data, *offset, *fua).unwrap();
            }
            if drop_third && n == 3 {
                return;
            }
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(60 - 15 * n));
                done.done(Ok(()));
            });
        }));
        let c = Client::new()
            .go("d")
            .cmd(CMD_WRITE, 0, 1, 0, 4096, &[1; 4096])
            .cmd(CMD_WRITE, CMD_FLAG_FUA, 2, 8192, 4096, &[2; 4096])
            .cmd(CMD_FLUSH, 0, 3, 0, 0, &[])
            .cmd(CMD_DISC, 0, 4, 0, 0, &[]);
        let stream = Arc::new(MemStream::new(c.0));
        let limits = Limits {
            workers: 2,
            ..Limits::default()
        };
        // The client left (DISC) before any reply: the connection still answers
        // every submitted request before it ends.
        let outcome = crate::serve(stream.clone(), &dev, &limits);
        assert_eq!(outcome, Outcome::Closed);
        (replies(&stream.output()), dev)
    }

    #[test]
    fn replies_come_from_the_device_in_its_order_and_before_the_end() {
        let (replies, dev) = run(false);
        // Completion order: the flush (taken third) first, the first write last.
        assert_eq!(replies, vec![(0, 3), (0, 2), (0, 1)]);
        let d = dev.mem.contents();
        assert!(d[..4096].iter().all(|b| *b == 1));
        assert!(d[8192..12288].iter().all(|b| *b == 2));
    }

    #[test]
    fn a_completion_dropped_unanswered_replies_with_an_error() {
        let (mut replies, _) = run(true);
        replies.sort_by_key(|r| r.1);
        assert_eq!(replies, vec![(0, 1), (0, 2), (EIO, 3)]);
    }

    #[test]
    fn a_client_that_keeps_sending_is_held_back_at_the_limit() {
        // 300 writes sent at once to a device that answers nothing until told: the
        // connection takes no more than its limit, and the rest once answers flow.
        const SENT: u64 = 300;
        let held = Arc::new(Mutex::new(Vec::new()));
        let dev = {
            let held = held.clone();
            device(Box::new(move |_, _, done| held.lock().unwrap().push(done)))
        };
        let mut c = Client::new().go("d");
        for i in 0..SENT {
            c = c.cmd(CMD_WRITE, 0, i, (i % 256) * 4096, 4096, &[7; 4096]);
        }
        let c = c.cmd(CMD_DISC, 0, SENT, 0, 0, &[]);
        let stream = Arc::new(MemStream::new(c.0));
        let server = {
            let (stream, dev) = (stream.clone(), dev.clone());
            std::thread::spawn(move || crate::serve(stream, &dev, &Limits::default()))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let count = || held.lock().unwrap().len();
        while count() < 128 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            count(),
            128,
            "submitted requests beyond the limit were taken"
        );
        let mut answered = 0;
        while answered < SENT && Instant::now() < deadline {
            let batch: Vec<_> = held.lock().unwrap().drain(..).collect();
            answered += batch.len() as u64;
            Completion::done_all(batch.into_iter().map(|c| (c, Ok(()))));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(answered, SENT);
        assert_eq!(server.join().unwrap(), Outcome::Closed);
        let replies = replies(&stream.output());
        assert_eq!(replies.len() as u64, SENT);
        assert!(replies.iter().all(|r| r.0 == 0));
    }
}
