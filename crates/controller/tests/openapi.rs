//! docs/controller-openapi.yaml documents exactly what the router serves: every
//! (method, path) the router registers is in the document and nothing else is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

/// (METHOD, path) pairs of the document's `paths:` section. The document is YAML as
/// `yaml.safe_dump` writes it: paths at two spaces, methods at four.
fn documented(doc: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in doc.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = false;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':')));
        } else if let Some(m) = line.strip_prefix("    ")
            && !m.starts_with(' ')
            && let Some(m) = m.strip_suffix(':')
            && ["get", "post", "put", "delete", "patch"].contains(&m)
        {
            out.insert((
                m.to_uppercase(),
                path.clone().expect("method before any path"),
            ));
        }
    }
    out
}

#[test]
fn openapi_document_matches_the_routes() {
    let doc_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/controller-openapi.yaml"
    );
    let doc = std::fs::read_to_string(doc_path).expect("docs/controller-openapi.yaml");
    let documented = documented(&doc);
    let served: BTreeSet<(String, String)> = controller::http::route_list()
        .into_iter()
        // axum's catch-all `{*key}` is OpenAPI's `{key}`.
        .map(|(m, p)| (m.to_owned(), p.replace("{*", "{")))
        .collect();
    assert!(served.len() > 40, "{served:?}");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}\ndocumented but not served: {unserved:?}"
    );
}

#[test]
fn the_parser_sees_methods_under_their_path() {
    let doc = "paths:\n  /a:\n    get:\n      summary: x\n    post:\n      summary: y\n  /b/{n}:\n    delete:\n      parameters:\n      - name: get\ncomponents:\n  schemas:\n    get:\n      type: object\n";
    let got = documented(doc);
    let want: BTreeSet<(String, String)> = [("GET", "/a"), ("POST", "/a"), ("DELETE", "/b/{n}")]
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(got, want);
}
