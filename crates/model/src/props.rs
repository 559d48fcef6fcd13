//! Properties: a string map on every object, changed with LINSTOR's
//! `override_props` / `delete_props` / `delete_namespaces`, and looked up through the
//! inheritance chain (closest object wins; LINSTOR evaluates it at use time and never
//! copies values down, linstor.md §1.8).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::options;

pub type Props = BTreeMap<String, String>;

/// Longest accepted key; keys are paths like `DrbdOptions/Net/protocol`.
pub const KEY_MAX: usize = 256;
/// Longest accepted value (LINSTOR stores values in a VARCHAR(4096) column).
pub const VALUE_MAX: usize = 4096;

/// A change to a property map, as in LINSTOR's `*Modify` request bodies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PropsModify {
    pub override_props: Props,
    pub delete_props: Vec<String>,
    pub delete_namespaces: Vec<String>,
}

impl PropsModify {
    pub fn set(key: &str, value: &str) -> Self {
        Self {
            override_props: [(key.to_owned(), value.to_owned())].into(),
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.override_props.is_empty()
            && self.delete_props.is_empty()
            && self.delete_namespaces.is_empty()
    }
}

/// Where an effective property value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "level", content = "name", rename_all = "snake_case")]
pub enum PropSource {
    Resource(String),
    ResourceDefinition(String),
    ResourceGroup(String),
    Node(String),
    Controller,
    /// Not set anywhere: tandem's built-in default (or automatic value) applies.
    Default,
}

impl fmt::Display for PropSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resource(n) => write!(f, "resource on node '{n}'"),
            Self::ResourceDefinition(n) => write!(f, "resource definition '{n}'"),
            Self::ResourceGroup(n) => write!(f, "resource group '{n}'"),
            Self::Node(n) => write!(f, "node '{n}'"),
            Self::Controller => f.write_str("controller"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// An effective value and the level that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveProp {
    pub value: String,
    pub source: PropSource,
}

/// Checks a key's shape: a `/`-separated path of non-empty printable parts.
pub fn check_key(key: &str) -> Result<(), ModelError> {
    let bad = |reason: &str| ModelError::InvalidProperty {
        key: key.to_owned(),
        value: String::new(),
        reason: reason.to_owned(),
        allowed: "use a key like 'Aux/rack' or 'DrbdOptions/Net/protocol': parts of printable \
                  characters without spaces, separated by single '/'"
            .to_owned(),
    };
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    if key.len() > KEY_MAX {
        return Err(bad(&format!("the key is longer than {KEY_MAX} bytes")));
    }
    if key.split('/').any(str::is_empty) {
        return Err(bad(
            "the key has an empty part (leading, trailing or double '/')",
        ));
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("the key contains whitespace or a control character"));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), ModelError> {
    if value.len() > VALUE_MAX || value.chars().any(char::is_control) {
        return Err(ModelError::InvalidProperty {
            key: key.to_owned(),
            value: value.chars().take(64).collect(),
            reason: format!("values are at most {VALUE_MAX} bytes without control characters"),
            allowed: "shorten the value or remove line breaks and other control characters"
                .to_owned(),
        });
    }
    options::check_known_prop(key, value)
}

fn in_namespace(key: &str, ns: &str) -> bool {
    let ns = ns.trim_end_matches('/');
    key.strip_prefix(ns)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The props after `m`, or why `m` is refused; `props` itself is not touched.
/// Deletes apply first, then overrides (LINSTOR's order, so "delete ns, set one key in it" works).
pub fn apply(props: &Props, m: &PropsModify) -> Result<Props, ModelError> {
    for k in m.delete_props.iter().chain(&m.delete_namespaces) {
        check_key(k)?;
    }
    for (k, v) in &m.override_props {
        check_key(k)?;
        check_value(k, v)?;
    }
    let mut out = props.clone();
    for k in &m.delete_props {
        out.remove(k);
    }
    for ns in &m.delete_namespaces {
        out.retain(|k, _| !in_namespace(k, ns));
    }
    for (k, v) in &m.override_props {
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// The first level of `chain` (closest first) that sets `key`.
pub fn lookup<'a>(
    chain: impl IntoIterator<Item = (&'a Props, PropSource)>,
    key: &str,
) -> Option<EffectiveProp> {
    chain.into_iter().find_map(|(p, source)| {
        p.get(key).map(|v| EffectiveProp {
            value: v.clone(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modify_deletes_then_overrides() {
        let p: Props = [
            ("Aux/a".to_owned(), "1".to_owned()),
            ("Aux/b/c".to_owned(), "2".to_owned()),
            ("Auxiliary".to_owned(), "3".to_owned()),
            ("Other".to_owned(), "4".to_owned()),
        ]
        .into();
        let m = PropsModify {
            override_props: [("Aux/new".to_owned(), "5".to_owned())].into(),
            delete_props: vec!["Other".into(), "Missing".into()],
            delete_namespaces: vec!["Aux".into()],
        };
        let out = apply(&p, &m).unwrap();
        let keys: Vec<_> = out.keys().map(String::as_str).collect();
        assert_eq!(keys, ["Aux/new", "Auxiliary"]);
    }

    #[test]
    fn bad_keys_and_values_are_refused() {
        for k in ["", "/a", "a/", "a//b", "a b", "a\nb"] {
            assert!(
                apply(&Props::new(), &PropsModify::set(k, "v")).is_err(),
                "{k:?}"
            );
        }
        assert!(apply(&Props::new(), &PropsModify::set("Aux/x", "a\u{0}b")).is_err());
        let e = apply(
            &Props::new(),
            &PropsModify::set("DrbdOptions/Net/protocol", "Z"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("DrbdOptions/Net/protocol"), "{e}");
    }

    #[test]
    fn lookup_takes_the_closest_level() {
        let rsc: Props = Props::new();
        let rd: Props = [("k".to_owned(), "rd".to_owned())].into();
        let ctrl: Props = [("k".to_owned(), "c".to_owned())].into();
        let got = lookup(
            [
                (&rsc, PropSource::Resource("n1".into())),
                (&rd, PropSource::ResourceDefinition("r".into())),
                (&ctrl, PropSource::Controller),
            ],
            "k",
        )
        .unwrap();
        assert_eq!(got.value, "rd");
        assert_eq!(got.source, PropSource::ResourceDefinition("r".into()));
    }
}
