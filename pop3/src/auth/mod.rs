//! Who may log in: the users file and the APOP digest.

pub mod apop;
pub mod users_file;

use crate::{ApopSecret, Authenticator};

/// A SHA512-CRYPT hash (of "Hello world!", the reference test vector)
/// checked for users that do not exist, so that a failed login takes as
/// long whether or not the name is known.
const DECOY_HASH: &str = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";

impl Authenticator for users_file::UsersFile {
    fn verify_password(&self, user: &str, password: &str) -> bool {
        match self.get(user) {
            Some(secret) => secret.verify_password(password.as_bytes()),
            None => {
                let decoy = users_file::Secret::Sha512Crypt(DECOY_HASH.to_string());
                let _ = decoy.verify_password(password.as_bytes());
                false
            }
        }
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
