//! One line to the system log (the journal where systemd runs), for what
//! an operator's command changed: `smtp-gate grant` and `revoke` write
//! their grant lines there, as the daemon writes its own, so a log
//! summary sees every source. Where nothing listens on /dev/log the line
//! is lost, as syslog(3) loses it; the command's own output still says
//! what it did.

use std::ffi::CString;

/// Writes `line` with priority info to the mail facility, tagged
/// `smtp-gate[PID]`.
pub fn mail_info(line: &str) {
    // A NUL would end the line early: the grant lines are escaped text
    // and hold none, but nothing a caller passes can cut one short.
    let Ok(message) = CString::new(line.replace('\0', "\\x00")) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated and outlive the calls; the
    // ident is a static, as openlog(3) keeps its pointer.
    unsafe {
        libc::openlog(c"smtp-gate".as_ptr(), libc::LOG_PID, libc::LOG_MAIL);
        libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), message.as_ptr());
        libc::closelog();
    }
}
