//! This host's name, as the system knows it.

use std::sync::OnceLock;

/// The system's host name (`localhost` if it has none): the default APOP
/// timestamp host, and the host part of new Maildir file names.
pub fn system_host_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let uname = rustix::system::uname();
        let name = uname.nodename().to_string_lossy();
        if name.is_empty() {
            "localhost".to_string()
        } else {
            name.into_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's own record of the name (what `hostname` prints).
    #[test]
    fn is_the_kernels_host_name() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let expected = match kernel.trim() {
            "" => "localhost",
            name => name,
        };
        assert_eq!(system_host_name(), expected);
    }
}
