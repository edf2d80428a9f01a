//! Who may log in: the users file and the APOP digest.

pub mod apop;
mod decoy;
pub mod live_users;
pub mod password_checks;
pub mod sasl_plain;
pub mod user_throttle;
pub mod users_file;

use crate::{ApopSecret, Authenticator};

impl Authenticator for users_file::UsersFile {
    fn verify_password(&self, user: &str, password: &str) -> bool {
        match self.get(user) {
            Some(secret) => secret.verify_password(password.as_bytes()),
            None => {
                // As long as a user of the common scheme (decoy.rs); the
                // answer is no whatever the decoy says.
                let _ = self.decoy().verify_password(password.as_bytes());
                false
            }
        }
    }

    fn check_hashes(&self, user: &str) -> bool {
        // A name that does not exist costs what the decoy costs, so it is
        // queued as a user of the decoy's kind is.
        self.get(user).unwrap_or(self.decoy()).cost() != users_file::Cost::Plain
    }

    fn apop_secret(&self, user: &str) -> ApopSecret {
        match self.get(user) {
            None => ApopSecret::NoSuchUser,
            Some(secret) => match secret.apop_secret() {
                Some(plain) => ApopSecret::Secret(plain.to_string()),
                None => ApopSecret::NotPlaintext,
            },
        }
    }
}
