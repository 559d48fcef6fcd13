//! Bytes a stranger sends to a replication port: the acceptor's handshake (offer,
//! then authentication), the dialer's handshake against a hostile acceptor, and the
//! frame reader that runs once a peer is in.
#![no_main]

use blockd::peer::{self, Offer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let mut s = tokio::io::join(data, tokio::io::sink());
        if let Ok(offer) = peer::read_offer(&mut s).await {
            assert!(offer.resource.len() <= 255);
            let _ = peer::accept(&mut s, &offer, "fuzz-secret").await;
        }
        let ours = Offer {
            resource: "r0".into(),
            from: 1,
            to: 0,
            size: 1 << 30,
            nonce: [7; 32],
        };
        let mut s = tokio::io::join(data, tokio::io::sink());
        let _ = peer::dial(&mut s, &ours, "fuzz-secret").await;
        // What follows a handshake: frames read as the peer connection reads them.
        let mut frames = peer::FrameReader::new(data, 64 << 10);
        while let Ok(Some(_)) = frames.next().await {}
    });
});
