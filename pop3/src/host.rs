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
