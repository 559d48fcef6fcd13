//! Behaviour tests: a std echo server behind the proxy, driven with blocking sockets.
//!
//! Timing assertions are lower bounds only. Timeouts below exist to turn a hang into a
//! failure, never to assert speed.

use super::*;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream as StdStream};
use std::thread;
use std::time::Instant as StdInstant;

/// Longest any blocking read in these tests waits before the test fails as hung.
const HANG: Duration = Duration::from_secs(30);

/// How long "nothing arrives" is observed for.
const QUIET: Duration = Duration::from_millis(300);

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An echo server: every connection gets its bytes back, and end of stream after the
/// client's end of stream.
fn echo_server() -> SocketAddr {
    let listener = StdTcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let Ok(mut reader) = stream.try_clone() else {
                    return;
                };
                let _ = io::copy(&mut reader, &mut stream);
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn proxy_to_echo() -> Proxy {
    Proxy::start(localhost(), echo_server()).unwrap()
}

fn connect(proxy: &Proxy) -> StdStream {
    let stream = StdStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(HANG)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn round_trip(stream: &mut StdStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, message);
}

/// Sends `data` from another thread, half closes, and returns everything echoed back.
fn echo_all(mut stream: StdStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

/// The connection was closed by the proxy: end of stream or a reset, not a timeout.
fn assert_closed(stream: &mut StdStream) {
    let mut buf = [0; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection closed, read {n} bytes"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
            "expected end of stream or a reset, got {e}"
        ),
    }
}

/// Nothing arrives on `stream` for [`QUIET`].
fn assert_quiet(stream: &mut StdStream) {
    stream.set_read_timeout(Some(QUIET)).unwrap();
    let mut buf = [0; 64];
    match stream.read(&mut buf) {
        Ok(n) => panic!("expected nothing, read {n} bytes"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "expected a read timeout, got {e}"
        ),
    }
    stream.set_read_timeout(Some(HANG)).unwrap();
}

/// Polls `stats` until `done` holds, failing the test as hung after [`HANG`].
fn wait_stats(proxy: &Proxy, done: impl Fn(&Stats) -> bool) {
    let start = StdInstant::now();
    while !done(&proxy.stats()) {
        assert!(
            start.elapsed() < HANG,
            "stats never got there: {:?}",
            proxy.stats()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bytes_pass_through_unchanged_both_ways() {
    let proxy = proxy_to_echo();
    let data = payload(4 << 20, 1);
    let back = echo_all(connect(&proxy), data.clone());
    assert!(back == data, "echo differs from what was sent");
    let stats = proxy.stats();
    assert_eq!(stats.bytes_to_target, data.len() as u64);
    assert_eq!(stats.bytes_to_client, data.len() as u64);
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_refused, 0);
}

#[test]
fn concurrent_connections_stay_separate() {
    let proxy = proxy_to_echo();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let stream = connect(&proxy);
            thread::spawn(move || {
                let data = payload(512 << 10, 100 + i);
                assert!(
                    echo_all(stream, data.clone()) == data,
                    "client {i}: echo differs"
                );
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(proxy.stats().connections_accepted, 8);
    wait_stats(&proxy, |s| s.connections_active == 0);
}

#[test]
fn jitter_never_reorders_bytes() {
    let proxy = proxy_to_echo();
    proxy.set_delay(Direction::Both, Duration::from_millis(1));
    proxy.set_jitter(Direction::Both, Duration::from_millis(20));
    let stream = connect(&proxy);
    let mut writer = stream.try_clone().unwrap();
    // Many small writes, so many separately jittered chunks.
    let sender = thread::spawn(move || {
        for i in 0u64..400 {
            writer.write_all(&i.to_le_bytes()).unwrap();
            if i % 16 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    let expected: Vec<u8> = (0u64..400).flat_map(u64::to_le_bytes).collect();
    assert!(back == expected, "jittered echo differs from what was sent");
}

#[test]
fn delay_adds_at_least_the_configured_latency() {
    let proxy = proxy_to_echo();
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"warm");

    proxy.set_delay(Direction::ToTarget, Duration::from_millis(100));
    let start = StdInstant::now();
    round_trip(&mut stream, b"one way");
    let one_way = start.elapsed();
    assert!(
        one_way >= Duration::from_millis(100),
        "round trip took {one_way:?}"
    );

    proxy.set_delay(Direction::Both, Duration::from_millis(100));
    let start = StdInstant::now();
    round_trip(&mut stream, b"both ways");
    let both = start.elapsed();
    assert!(
        both >= Duration::from_millis(200),
        "round trip took {both:?}"
    );

    assert_eq!(
        proxy.faults(Direction::ToClient).delay,
        Duration::from_millis(100)
    );
}

#[test]
fn lowering_the_delay_releases_queued_data() {
    let proxy = proxy_to_echo();
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"warm");
    // Far longer than the hang timeout: the data only comes back if the change applies
    // to what is already queued.
    proxy.set_delay(Direction::ToTarget, Duration::from_secs(3600));
    stream.write_all(b"held").unwrap();
    assert_quiet(&mut stream);
    proxy.set_delay(Direction::ToTarget, Duration::ZERO);
    let mut back = [0; 4];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"held");
}

#[test]
fn cut_stalls_traffic_and_uncut_resumes_without_loss() {
    let proxy = proxy_to_echo();
    let mut first = connect(&proxy);
    round_trip(&mut first, b"before");
    // The counters move just after a write returns, so possibly after the reader has
    // the bytes.
    wait_stats(&proxy, |s| s.bytes_to_target == 6 && s.bytes_to_client == 6);
    let before = proxy.stats();

    proxy.cut(true);
    // An existing connection stalls, even with more in flight than any socket buffer
    // holds at once.
    let data = payload(8 << 20, 2);
    let mut writer = first.try_clone().unwrap();
    let sender = {
        let data = data.clone();
        thread::spawn(move || writer.write_all(&data).unwrap())
    };
    assert_quiet(&mut first);
    // A new connection is accepted but gets nothing through either.
    let mut second = connect(&proxy);
    second.write_all(b"during cut").unwrap();
    assert_quiet(&mut second);
    wait_stats(&proxy, |s| s.connections_accepted == 2);
    let during = proxy.stats();
    assert_eq!(during.bytes_to_target, before.bytes_to_target);
    assert_eq!(during.bytes_to_client, before.bytes_to_client);

    proxy.cut(false);
    let mut back = vec![0; data.len()];
    first.read_exact(&mut back).unwrap();
    assert!(back == data, "data sent during the cut came back different");
    sender.join().unwrap();
    let mut back = [0; 10];
    second.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"during cut");
    round_trip(&mut first, b"after");
}

#[test]
fn one_way_cut_stalls_only_that_way() {
    let proxy = proxy_to_echo();
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"warm");
    proxy.cut_direction(Direction::ToClient, true);
    stream.write_all(b"ping").unwrap();
    // The echo server gets it; the answer is held.
    wait_stats(&proxy, |s| s.bytes_to_target == 8);
    assert_quiet(&mut stream);
    proxy.cut_direction(Direction::ToClient, false);
    let mut back = [0; 4];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

#[test]
fn reset_all_closes_current_connections_and_new_ones_work() {
    let proxy = proxy_to_echo();
    let mut first = connect(&proxy);
    let mut second = connect(&proxy);
    round_trip(&mut first, b"one");
    round_trip(&mut second, b"two");

    proxy.reset_all();
    assert_closed(&mut first);
    assert_closed(&mut second);
    wait_stats(&proxy, |s| s.connections_active == 0);

    let mut third = connect(&proxy);
    round_trip(&mut third, b"three");

    // A connection still waiting for a cut to lift is reset too.
    proxy.cut(true);
    let mut waiting = connect(&proxy);
    wait_stats(&proxy, |s| s.connections_accepted == 4);
    proxy.reset_all();
    assert_closed(&mut waiting);
    assert_closed(&mut third);
    proxy.cut(false);
    round_trip(&mut connect(&proxy), b"after");
}

#[test]
fn refuse_closes_new_connections() {
    let proxy = proxy_to_echo();
    let mut existing = connect(&proxy);
    round_trip(&mut existing, b"before");

    proxy.refuse(true);
    let mut refused = connect(&proxy);
    assert_closed(&mut refused);
    assert_eq!(proxy.stats().connections_refused, 1);
    assert_eq!(proxy.stats().connections_accepted, 1);
    // Connections made before are not affected.
    round_trip(&mut existing, b"still");

    proxy.refuse(false);
    round_trip(&mut connect(&proxy), b"again");
}

#[test]
fn bandwidth_cap_slows_transfers() {
    const N: usize = 60_000;
    const RATE: u64 = 200_000;
    let minimum = Duration::from_secs_f64(N as f64 / RATE as f64 * 0.9);
    let proxy = proxy_to_echo();

    for dir in [Direction::ToTarget, Direction::ToClient] {
        proxy.clear();
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"warm");
        proxy.set_bandwidth(dir, Some(RATE));
        let data = payload(N, 3);
        let start = StdInstant::now();
        let back = echo_all(stream, data.clone());
        let took = start.elapsed();
        assert!(back == data, "{dir:?}: capped echo differs");
        assert!(
            took >= minimum,
            "{dir:?}: {N} bytes at {RATE} B/s took {took:?}"
        );
    }
}

#[test]
fn queued_data_is_bounded_and_the_sender_is_pushed_back() {
    let proxy = proxy_to_echo();
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"warm");
    proxy.set_delay(Direction::ToTarget, Duration::from_secs(3600));

    // Write until the sender is blocked for a while.
    let pattern: Vec<u8> = (0..64 * 1024 + 251).map(|i| (i % 251) as u8).collect();
    let limit = 64 << 20;
    stream.set_nonblocking(true).unwrap();
    let mut written = 0;
    let mut blocked = 0;
    while blocked < 20 {
        assert!(
            written < limit,
            "the proxy took {written} bytes without pushing back"
        );
        match stream.write(&pattern[written % 251..][..64 * 1024]) {
            Ok(n) => {
                written += n;
                blocked = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                blocked += 1;
                thread::sleep(Duration::from_millis(25));
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
    assert_eq!(
        proxy.stats().bytes_to_target,
        4,
        "delayed data reached the target"
    );

    // Nothing was lost on the way.
    proxy.clear();
    let mut back = vec![0; written];
    stream.read_exact(&mut back).unwrap();
    assert!(
        back.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "echoed data differs"
    );
}

#[test]
fn connection_limit_holds_further_clients_back() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let proxy = Proxy::start_with(localhost(), echo_server(), limits).unwrap();
    let mut first = connect(&proxy);
    let mut second = connect(&proxy);
    round_trip(&mut first, b"one");
    round_trip(&mut second, b"two");

    let mut third = connect(&proxy);
    third.write_all(b"three").unwrap();
    assert_quiet(&mut third);
    assert_eq!(proxy.stats().connections_accepted, 2);

    drop(first);
    let mut back = [0; 5];
    third.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"three");
    round_trip(&mut second, b"still");
}

#[test]
fn invalid_limits_are_rejected() {
    let zero = Limits {
        queue_chunks: 0,
        ..Limits::default()
    };
    let err = Proxy::start_with(localhost(), localhost(), zero).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn unreachable_target_closes_the_client() {
    // A port nobody listens on: bind one, note it, close it.
    let dead = StdTcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(localhost(), dead).unwrap();
    let mut stream = connect(&proxy);
    assert_closed(&mut stream);
}

#[test]
fn drop_closes_connections_and_the_listener() {
    let proxy = proxy_to_echo();
    let addr = proxy.addr();
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"alive");
    drop(proxy);
    assert_closed(&mut stream);
    assert!(
        StdStream::connect(addr).is_err(),
        "the listener is still open"
    );
}

#[test]
fn usable_from_inside_an_async_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let target = echo_server();
    runtime.block_on(async move {
        let proxy = Proxy::start(localhost(), target).unwrap();
        let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        stream.write_all(b"async").await.unwrap();
        let mut back = [0; 5];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"async");
        drop(proxy);
    });
}

#[test]
fn the_handle_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Proxy>();
}
