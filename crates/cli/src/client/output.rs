//! How answers are shown: `SUCCESS:`/`INFO:`/`WARNING:`/`ERROR:` blocks for ApiCallRc
//! lists (linstor-client `Output.handle_ret`), or the JSON with `-m`.

use serde_json::Value;

const MASK_ERROR: u64 = 0xC000_0000_0000_0000;
const MASK_WARN: u64 = 0x8000_0000_0000_0000;
const MASK_INFO: u64 = 0x4000_0000_0000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Success,
    Info,
    Warning,
    Error,
}

/// python-linstor's classification of a `ret_code`.
pub fn level(ret_code: i64) -> Level {
    let rc = ret_code as u64;
    if rc & MASK_ERROR == MASK_ERROR {
        Level::Error
    } else if rc & MASK_WARN == MASK_WARN {
        Level::Warning
    } else if rc & MASK_INFO == MASK_INFO {
        Level::Info
    } else {
        Level::Success
    }
}

/// The entries of an answer that should be an ApiCallRc list; None if it is not one.
pub fn rc_list(body: &Value) -> Option<&Vec<Value>> {
    body.as_array().filter(|a| {
        a.iter()
            .all(|e| e.get("ret_code").is_some_and(Value::is_i64))
    })
}

/// The worst level in a list of ApiCallRc entries.
pub fn worst(entries: &[Value]) -> Option<Level> {
    entries
        .iter()
        .filter_map(|e| e.get("ret_code").and_then(Value::as_i64))
        .map(level)
        .max()
}

/// One entry as a block:
/// ```text
/// ERROR:
/// Description:
///     Node 'x' not found.
/// Cause:
///     ...
/// ```
pub fn block(entry: &Value) -> String {
    let rc = entry.get("ret_code").and_then(Value::as_i64).unwrap_or(0);
    let mut out = String::from(match level(rc) {
        Level::Error => "ERROR:\n",
        Level::Warning => "WARNING:\n",
        Level::Info => "INFO:\n",
        Level::Success => "SUCCESS:\n",
    });
    for (key, title) in [
        ("message", "Description"),
        ("cause", "Cause"),
        ("correction", "Correction"),
        ("details", "Details"),
    ] {
        if let Some(text) = entry.get(key).and_then(Value::as_str)
            && !text.trim().is_empty()
        {
            out.push_str(title);
            out.push_str(":\n");
            for line in text.lines() {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// An error of our own (not from the controller) in the same block form.
pub fn local_error(message: &str, cause: Option<&str>, correction: Option<&str>) -> Value {
    let mut v = serde_json::json!({"ret_code": MASK_ERROR as i64, "message": message});
    if let Some(obj) = v.as_object_mut() {
        if let Some(c) = cause {
            obj.insert("cause".into(), c.into());
        }
        if let Some(c) = correction {
            obj.insert("correction".into(), c.into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn levels_follow_the_masks() {
        assert_eq!(level(-4611686018407202314), Level::Error); // FAIL_EXISTS_RSC
        assert_eq!(level(0x8000_0000_0000_03EA_u64 as i64), Level::Warning);
        assert_eq!(level(0x4000_0000_0000_2713), Level::Info);
        assert_eq!(level(0x0000_0000_0134_0001), Level::Success);
    }

    #[test]
    fn blocks_show_every_part() {
        let e = json!({"ret_code": -4611686018407202314_i64,
            "message": "A resource 'test' on node 'drbd1' already exists.",
            "cause": "The Resource already exists",
            "correction": "Use another name.",
            "details": "Node(s): 'drbd1'\nResource: 'test'"});
        assert_eq!(
            block(&e),
            "ERROR:\nDescription:\n    A resource 'test' on node 'drbd1' already exists.\n\
             Cause:\n    The Resource already exists\nCorrection:\n    Use another name.\n\
             Details:\n    Node(s): 'drbd1'\n    Resource: 'test'\n"
        );
        assert_eq!(
            block(&json!({"ret_code": 1, "message": "ok"})),
            "SUCCESS:\nDescription:\n    ok\n"
        );
        let list = json!([{"ret_code": 1, "message": "a"}, e]);
        assert_eq!(worst(rc_list(&list).unwrap()), Some(Level::Error));
        assert!(rc_list(&json!([{"name": "x"}])).is_none());
    }
}
