//! LINSTOR's name rules, byte for byte (linstor-server `server/.../com/linbit/Checks.java`
//! `nameCheck` and `hostNameCheck`, the limits in `core/identifier/*Name.java`).
//!
//! Names compare case-insensitively (LINSTOR's `GenericName` keeps an upper-case value
//! for comparison and the given spelling for display): the model keys its maps with
//! [`key`] and keeps the given spelling in the objects.

use crate::error::{ModelError, ObjectKind};

/// The map key of a name: LINSTOR compares names ignoring ASCII case.
pub fn key(name: &str) -> String {
    name.to_ascii_uppercase()
}

/// Resource and resource group names: `ResourceName.java` MIN 2, MAX 48.
pub const RESOURCE_NAME_MIN: usize = 2;
pub const RESOURCE_NAME_MAX: usize = 48;
/// `StorPoolName.java` MIN 3, MAX 48.
pub const STOR_POOL_NAME_MIN: usize = 3;
pub const STOR_POOL_NAME_MAX: usize = 48;
/// `NetInterfaceName.java` MIN 3, MAX 32.
pub const NET_IF_NAME_MIN: usize = 3;
pub const NET_IF_NAME_MAX: usize = 32;
/// `Checks.java` HOSTNAME_MIN_LENGTH, HOSTNAME_MAX_LENGTH, HOSTNAME_LABEL_MAX_LENGTH.
pub const HOSTNAME_MIN: usize = 2;
pub const HOSTNAME_MAX: usize = 255;
pub const HOSTNAME_LABEL_MAX: usize = 63;

fn invalid(kind: ObjectKind, name: &str, reason: String) -> ModelError {
    ModelError::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    }
}

/// `Checks.nameCheck` with '_' allowed first and '_', '-' allowed inside.
fn name_check(kind: ObjectKind, name: &str, min: usize, max: usize) -> Result<(), ModelError> {
    let b = name.as_bytes();
    if b.len() < min {
        return Err(invalid(
            kind,
            name,
            format!("name length {} is less than minimum length {min}", b.len()),
        ));
    }
    if b.len() > max {
        return Err(invalid(
            kind,
            name,
            format!(
                "name length {} is greater than maximum length {max}",
                b.len()
            ),
        ));
    }
    if !b.iter().any(u8::is_ascii_alphabetic) {
        return Err(invalid(
            kind,
            name,
            "name must contain at least one character that matches [a-zA-Z]".into(),
        ));
    }
    if !(b[0].is_ascii_alphabetic() || b[0] == b'_') {
        return Err(invalid(
            kind,
            name,
            format!("cannot begin with character '{}'", printable(name, 0)),
        ));
    }
    for (i, &c) in b.iter().enumerate().skip(1) {
        if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
            return Err(invalid(
                kind,
                name,
                format!("cannot contain character '{}'", printable(name, i)),
            ));
        }
    }
    Ok(())
}

/// The character at byte `i` for a message (a multi-byte character shows whole).
fn printable(name: &str, i: usize) -> char {
    name.char_indices()
        .take_while(|(start, _)| *start <= i)
        .last()
        .map_or('?', |(_, c)| c)
}

/// Node names are host names (`Checks.hostNameCheck`, RFC 952/1123).
pub fn check_node_name(name: &str) -> Result<(), ModelError> {
    let kind = ObjectKind::Node;
    if name.starts_with('.') {
        return Err(invalid(
            kind,
            name,
            "host name cannot begin with '.'".into(),
        ));
    }
    if name.starts_with('-') {
        return Err(invalid(
            kind,
            name,
            "host name cannot begin with '-'".into(),
        ));
    }
    if name.ends_with('-') {
        return Err(invalid(kind, name, "host name cannot end with '-'".into()));
    }
    let b = name.as_bytes();
    if b.len() < HOSTNAME_MIN {
        return Err(invalid(
            kind,
            name,
            format!(
                "host name length of {} violates RFC1123 minimum length of {HOSTNAME_MIN}",
                b.len()
            ),
        ));
    }
    if b.len() > HOSTNAME_MAX {
        return Err(invalid(
            kind,
            name,
            format!(
                "host name length of {} violates RFC1123 maximum length of {HOSTNAME_MAX}",
                b.len()
            ),
        ));
    }
    let mut label = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if c == b'.' {
            label = 0;
            continue;
        }
        label += 1;
        if label > HOSTNAME_LABEL_MAX {
            return Err(invalid(
                kind,
                name,
                format!(
                    "domain name component length of {label} violates RFC1123 maximum length of \
                     {HOSTNAME_LABEL_MAX}"
                ),
            ));
        }
        if !(c.is_ascii_alphanumeric() || c == b'-') {
            return Err(invalid(
                kind,
                name,
                format!(
                    "domain name cannot contain character '{}'",
                    printable(name, i)
                ),
            ));
        }
    }
    Ok(())
}

/// Resource (definition) names; 'all' and 'proxy' are reserved by DRBD (`ResourceName.java`).
pub fn check_resource_name(name: &str) -> Result<(), ModelError> {
    if name.eq_ignore_ascii_case("all") || name.eq_ignore_ascii_case("proxy") {
        return Err(invalid(
            ObjectKind::ResourceDefinition,
            name,
            format!("the name '{name}' matches a keyword reserved for DRBD"),
        ));
    }
    name_check(
        ObjectKind::ResourceDefinition,
        name,
        RESOURCE_NAME_MIN,
        RESOURCE_NAME_MAX,
    )
}

pub fn check_resource_group_name(name: &str) -> Result<(), ModelError> {
    name_check(
        ObjectKind::ResourceGroup,
        name,
        RESOURCE_NAME_MIN,
        RESOURCE_NAME_MAX,
    )
}

pub fn check_storage_pool_name(name: &str) -> Result<(), ModelError> {
    name_check(
        ObjectKind::StoragePool,
        name,
        STOR_POOL_NAME_MIN,
        STOR_POOL_NAME_MAX,
    )
}

pub fn check_net_interface_name(name: &str) -> Result<(), ModelError> {
    name_check(
        ObjectKind::NetInterface,
        name,
        NET_IF_NAME_MIN,
        NET_IF_NAME_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_follow_linstor() {
        for ok in [
            "ab",
            "vm-100-disk-0",
            "_x",
            "A_b-C",
            "pvc-0123",
            &"a".repeat(48),
        ] {
            assert!(check_resource_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a",             // too short
            &"a".repeat(49), // too long
            "1abc",          // starts with a digit
            "-abc",          // starts with '-'
            "a.b",           // '.' not allowed
            "a b",           // space
            "__",            // no letter
            "_1",            // no letter
            "all",           // reserved
            "PROXY",         // reserved, any case
            "vm\u{e9}",      // non-ASCII
        ] {
            assert!(check_resource_name(bad).is_err(), "{bad}");
        }
        let e = check_resource_name("9lives").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid resource definition name '9lives': cannot begin with character '9'"
        );
        assert!(e.correction().contains("2 to 48"));
    }

    #[test]
    fn group_pool_and_interface_limits() {
        assert!(check_resource_group_name("rg").is_ok());
        assert!(check_resource_group_name("all").is_ok()); // only resources reserve it
        assert!(check_storage_pool_name("sp").is_err()); // pools need 3
        assert!(check_storage_pool_name("DfltDisklessStorPool").is_ok());
        assert!(check_storage_pool_name(&"p".repeat(48)).is_ok());
        assert!(check_storage_pool_name(&"p".repeat(49)).is_err());
        assert!(check_net_interface_name("default").is_ok());
        assert!(check_net_interface_name(&"n".repeat(33)).is_err());
        assert!(check_net_interface_name("eth0").is_ok());
        assert!(check_net_interface_name("0eth").is_err());
    }

    #[test]
    fn node_names_are_host_names() {
        for ok in [
            "pve1",
            "n1.example.com",
            "1node",
            "a-b",
            "AB",
            &"a".repeat(63),
        ] {
            assert!(check_node_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a",
            "-a",
            "a-",
            ".a",
            "a_b",
            "a b",
            &"a".repeat(64),
            &format!("{}.b", "a".repeat(64)),
            &"a.".repeat(128),
        ] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_ignore_case() {
        assert_eq!(key("Vm-1"), key("VM-1"));
    }
}
