//! The users file as the daemon loads it, at start and on reload, and what
//! it says about it that an operator must know.

use std::path::Path;

use log::{info, warn};
use pop3::auth::users_file::{UsersChanges, UsersFile, Written};

/// Logs how many users `users` (read from `path`) has, and warns of what
/// is likely a mistake: no users at all, a last line without a line end,
/// or users whose failed logins can be told from those of names that do
/// not exist.
pub fn report(users: &UsersFile, written: Written, path: &Path) {
    info!("{} users loaded from {}", users.len(), path.display());
    if written == Written::Unterminated {
        warn!(
            "{} does not end with a line end: its last line is taken as it is (were the file \
             cut short, so would be that line's password); a reload refuses such a file",
            path.display()
        );
    }
    if users.is_empty() {
        warn!(
            "{} has no users: nobody can log in, so nobody is granted; add users and reload \
             (SIGHUP)",
            path.display()
        );
    }
    let unlike = users.users_unlike_the_decoy();
    if unlike > 0 {
        warn!(
            "{unlike} of the {} users in {} have a secret of another kind than {}, which names \
             that do not exist are checked against: how long a failed login takes tells that \
             such a name exists (give every user the same scheme and cost)",
            users.len(),
            path.display(),
            users.decoy().cost()
        );
    }
}

/// Why a reload does not take a users file that reads well, if it does
/// not. A file caught half written is far more likely empty, or cut in a
/// line, than meant so: the users in force stay. A file with no users but
/// something else (every line commented out) is meant: it is taken, and
/// nobody can log in. At start every such file is taken (with a warning):
/// there are no users in force to keep.
pub fn refused_on_reload(written: Written) -> Option<&'static str> {
    match written {
        Written::Whole => None,
        Written::Empty => Some("is empty (a file half written?)"),
        Written::Unterminated => {
            Some("does not end with a line end (a file half written? its last line may be cut)")
        }
    }
}

/// What a reload changed in the users, for its log line; `None` if
/// nothing.
pub fn describe(changes: &UsersChanges) -> Option<String> {
    if changes.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for (sign, names) in [
        ('+', &changes.added),
        ('-', &changes.removed),
        ('~', &changes.changed),
    ] {
        // A file of thousands must not make a line of thousands.
        const SHOWN: usize = 10;
        parts.extend(names.iter().take(SHOWN).map(|name| format!("{sign}{name}")));
        if names.len() > SHOWN {
            parts.push(format!("{sign}{} more", names.len() - SHOWN));
        }
    }
    Some(format!("users {}", parts.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_refuses_only_a_file_that_looks_half_written() {
        assert_eq!(refused_on_reload(Written::Whole), None);
        assert!(refused_on_reload(Written::Empty).is_some());
        assert!(refused_on_reload(Written::Unterminated).is_some());
    }

    #[test]
    fn changes_read_plainly_and_stay_short() {
        assert_eq!(describe(&UsersChanges::default()), None);
        let changes = UsersChanges {
            added: vec!["carol".into()],
            removed: vec!["alice".into()],
            changed: vec!["bob".into()],
        };
        assert_eq!(
            describe(&changes).as_deref(),
            Some("users +carol -alice ~bob")
        );
        let many = UsersChanges {
            added: (0..25).map(|i| format!("u{i:02}")).collect(),
            ..UsersChanges::default()
        };
        let line = describe(&many).unwrap();
        assert!(line.ends_with("+u09 +15 more"), "{line}");
    }
}
