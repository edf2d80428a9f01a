//! Who may log in: the users file and the APOP digest.

pub mod apop;
pub mod users_file;

use crate::{ApopSecret, Authenticator};

impl Authenticator for users_file::UsersFile {
    fn verify_password(&self, user: &str, password: &str) -> bool {
        self.get(user)
            .is_some_and(|secret| secret.verify_password(password.as_bytes()))
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
