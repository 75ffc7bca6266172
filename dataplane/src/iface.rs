//! Facts about a network interface, read from sysfs (no ioctl, no unsafe).

use std::fs;
use std::path::PathBuf;

use crate::error::DataplaneError;

/// Longest interface name (IFNAMSIZ - 1, include/uapi/linux/if.h).
const IFNAME_BYTES_MAX: usize = 15;

fn interface_error(ifname: &str, detail: impl Into<String>) -> DataplaneError {
    DataplaneError::Interface { ifname: ifname.to_owned(), detail: detail.into() }
}

/// Rejects names the kernel would not accept, before they are used in a sysfs path.
pub(crate) fn check_ifname(ifname: &str) -> Result<(), DataplaneError> {
    let valid = !ifname.is_empty()
        && ifname.len() <= IFNAME_BYTES_MAX
        && ifname != "."
        && ifname != ".."
        && !ifname.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':');
    if valid {
        Ok(())
    } else {
        Err(interface_error(ifname, "not a valid interface name"))
    }
}

fn sysfs(ifname: &str, leaf: &str) -> Result<PathBuf, DataplaneError> {
    check_ifname(ifname)?;
    let path = PathBuf::from("/sys/class/net").join(ifname);
    if !path.exists() {
        return Err(interface_error(ifname, "no such interface"));
    }
    Ok(path.join(leaf))
}

fn read(ifname: &str, leaf: &str) -> Result<String, DataplaneError> {
    let path = sysfs(ifname, leaf)?;
    fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| interface_error(ifname, format!("reading {}: {e}", path.display())))
}

/// The interface's index.
pub fn interface_index(ifname: &str) -> Result<u32, DataplaneError> {
    let text = read(ifname, "ifindex")?;
    text.parse().map_err(|_| interface_error(ifname, format!("ifindex {text:?} is not a number")))
}

/// The interface's MAC address (what the userspace stack must use as its own).
pub fn interface_mac(ifname: &str) -> Result<[u8; 6], DataplaneError> {
    let text = read(ifname, "address")?;
    parse_mac(&text).ok_or_else(|| interface_error(ifname, format!("address {text:?} is not a MAC")))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The number of RX queues (each needs its own AF_XDP socket, or its flows are lost).
pub fn interface_queues(ifname: &str) -> Result<u32, DataplaneError> {
    let path = sysfs(ifname, "queues")?;
    let entries = fs::read_dir(&path)
        .map_err(|e| interface_error(ifname, format!("reading {}: {e}", path.display())))?;
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|e| interface_error(ifname, format!("reading {}: {e}", path.display())))?;
        if entry.file_name().to_string_lossy().starts_with("rx-") {
            count += 1;
        }
    }
    if count == 0 {
        return Err(interface_error(ifname, "no rx queues in sysfs"));
    }
    Ok(count)
}

/// The interface's MTU.
pub fn interface_mtu(ifname: &str) -> Result<u32, DataplaneError> {
    let text = read(ifname, "mtu")?;
    text.parse().map_err(|_| interface_error(ifname, format!("mtu {text:?} is not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:00:0a:63:00:ff"), Some([2, 0, 0x0a, 0x63, 0, 0xff]));
        assert_eq!(parse_mac("02:00:0a:63:00"), None);
        assert_eq!(parse_mac("02:00:0a:63:00:ff:01"), None);
        assert_eq!(parse_mac("02:00:0a:63:00:fg"), None);
        assert_eq!(parse_mac("2:00:0a:63:00:ff"), None);
    }

    #[test]
    fn names_that_escape_sysfs_are_rejected() {
        for name in ["", "..", "a/b", "eth0 ", "abcdefghijklmnop"] {
            assert!(check_ifname(name).is_err(), "{name:?}");
        }
        check_ifname("pantera0").unwrap();
    }

    #[test]
    fn loopback_is_described() {
        assert_eq!(interface_mac("lo").unwrap(), [0; 6]);
        assert!(interface_queues("lo").unwrap() >= 1);
        assert_eq!(interface_index("lo").unwrap(), 1);
        assert!(interface_index("pantera-none").is_err());
    }
}
