//! The users that logins are checked against, replaceable while the service
//! runs: a reload (SIGHUP in the daemon) swaps a new users file in whole,
//! at once. A check already under way finishes against the file it began
//! with; sessions already logged in go on.

use std::sync::{Arc, RwLock};

use super::users_file::UsersFile;
use crate::{ApopSecret, Authenticator};

pub struct LiveUsers {
    current: RwLock<Arc<UsersFile>>,
}

impl LiveUsers {
    pub fn new(users: UsersFile) -> Self {
        Self {
            current: RwLock::new(Arc::new(users)),
        }
    }

    /// The users file in force.
    pub fn current(&self) -> Arc<UsersFile> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `users` in force; returns the file it replaces.
    pub fn replace(&self, users: UsersFile) -> Arc<UsersFile> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *current, Arc::new(users))
    }
}

impl Authenticator for LiveUsers {
    fn verify_password(&self, user: &str, password: &str) -> bool {
        // The lock is not held while the hash is computed.
        self.current().verify_password(user, password)
    }

    fn check_hashes(&self, user: &str) -> bool {
        self.current().check_hashes(user)
    }

    fn apop_secret(&self, user: &str) -> ApopSecret {
        self.current().apop_secret(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_in_force_at_once_and_whole() {
        let live = LiveUsers::new(UsersFile::parse("alice:{PLAIN}a\nbob:{PLAIN}b\n").unwrap());
        let before = live.current();
        assert!(live.verify_password("alice", "a"));
        let old = live.replace(UsersFile::parse("bob:{PLAIN}new\ncarol:{PLAIN}c\n").unwrap());
        assert_eq!(old.len(), 2);
        assert!(!live.verify_password("alice", "a"), "removed");
        assert!(!live.verify_password("bob", "b"), "the old password");
        assert!(live.verify_password("bob", "new"));
        assert!(live.verify_password("carol", "c"), "added");
        assert_eq!(live.apop_secret("carol"), ApopSecret::Secret("c".into()));
        // Who holds the old file (a check under way) still has it.
        assert!(before.verify_password("alice", "a"));
    }

    /// Whether a check waits for a turn to hash follows the file in force.
    #[test]
    fn whether_checks_hash_follows_the_file_in_force() {
        const HASH: &str = "{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        let live = LiveUsers::new(
            UsersFile::parse(
                "alice:{PLAIN}a
",
            )
            .unwrap(),
        );
        assert!(!live.check_hashes("alice"));
        live.replace(
            UsersFile::parse(&format!(
                "alice:{HASH}
"
            ))
            .unwrap(),
        );
        assert!(live.check_hashes("alice"));
    }
}
