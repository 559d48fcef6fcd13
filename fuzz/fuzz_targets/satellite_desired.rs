//! Bytes a controller (or anyone reaching the satellite's port) PUTs as a node's desired
//! state, parsed and checked as the satellite does before storing it, and each resource
//! rendered and checked as a blockd resource file: an answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = serde_json::from_slice::<model::satellite::DesiredState>(data) else {
        return;
    };
    if satellite::validate(&d.node, &d).is_err() {
        return;
    }
    for r in &d.resources {
        let vols: Vec<satellite::render::LocalVolume> = r
            .volumes
            .iter()
            .map(|v| satellite::render::LocalVolume {
                number: v.number,
                backing: v.pool.as_ref().map(|p| std::path::PathBuf::from(format!("/p/{p}"))),
                size: v.size_kib.saturating_mul(1024),
            })
            .collect();
        let text = satellite::render::resource_file(&d.node, r, &vols);
        let _ = satellite::render::check(std::path::Path::new("/x/r.toml"), &text);
    }
});
