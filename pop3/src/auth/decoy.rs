//! No user enumeration by timing. A login for a name that does not exist
//! must take as long as a failed login of a user who does, or a prober
//! learns which names exist from one sample (with SHA512-CRYPT a check
//! takes milliseconds, a plaintext compare microseconds). So a name that
//! does not exist is checked against a decoy secret that costs what the
//! file's most common secrets cost: the same scheme, rounds and salt
//! length, through the same verification function. Users whose secrets
//! cost something else (a file that mixes schemes) can still be told
//! apart; the daemon says how many there are at start.

use std::collections::HashMap;

use super::users_file::{Cost, Secret};

/// When there are no users: what a new entry most likely is (a
/// SHA512-CRYPT hash as `doveadm pw -s SHA512-CRYPT` or `openssl passwd
/// -6` write it).
const DEFAULT: Cost = Cost::Sha512Crypt {
    rounds: 5000,
    salt_len: 16,
};

/// The cost most of `secrets` have; of equally common ones, the dearest.
pub(super) fn common_cost<'a>(secrets: impl Iterator<Item = &'a Secret>) -> Cost {
    let mut counts: HashMap<Cost, usize> = HashMap::new();
    for secret in secrets {
        *counts.entry(secret.cost()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(cost, count)| (count, cost))
        .map(|(cost, _)| cost)
        .unwrap_or(DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        auth::users_file::{verified, UsersFile},
        Authenticator,
    };

    /// `openssl passwd -6 -salt smtpgate0lab1 builder` (13-octet salt,
    /// default rounds).
    const BUILDER: &str = "$6$smtpgate0lab1$FsSm4oLGuTwkq.yIzOR2sX6mYGk6r77BwQTscWCvlC0cOmwvqhvXoiQbE78ag6vDca.e56Nl9DJrvpMDEZjbR0";
    /// Drepper's vector: "Hello world!", 10000 rounds, 16-octet salt.
    const HELLO_10000: &str = "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.";

    /// The structure of the defence: a login for a name that does not
    /// exist runs the same verification function, on a secret of the same
    /// kind (scheme, rounds, salt length), as a failed login of a user of
    /// the file's common kind, whichever kind that is.
    #[test]
    fn an_unknown_name_is_checked_like_a_user_of_the_common_scheme() {
        let plain_mostly = format!("a:{{PLAIN}}x\nb:{{PLAIN}}yy\nc:{BUILDER}\n");
        let crypt_mostly = format!("a:{BUILDER}\nb:{{CRYPT}}{BUILDER}\nc:{{PLAIN}}x\n");
        let dear_mostly = format!("a:{HELLO_10000}\nb:{HELLO_10000}\nc:{BUILDER}\n");
        for (text, common_user, cost) in [
            (plain_mostly.as_str(), "b", Cost::Plain),
            (
                crypt_mostly.as_str(),
                "a",
                Cost::Sha512Crypt {
                    rounds: 5000,
                    salt_len: 13,
                },
            ),
            (
                dear_mostly.as_str(),
                "a",
                Cost::Sha512Crypt {
                    rounds: 10000,
                    salt_len: 16,
                },
            ),
        ] {
            let users = UsersFile::parse(text).unwrap();
            let known = verified::during(|| {
                assert!(!users.verify_password(common_user, "wrong"));
            });
            let unknown = verified::during(|| {
                assert!(!users.verify_password("nobody", "wrong"));
            });
            assert_eq!(known, [cost], "{text}");
            assert_eq!(unknown, known, "{text}: the unknown name against the known");
            // Nor does the wait for a turn to hash tell them apart
            // (password_checks.rs).
            assert_eq!(
                users.check_hashes("nobody"),
                cost != Cost::Plain,
                "{text}: whether an unknown name waits for a turn"
            );
            assert_eq!(
                users.check_hashes(common_user),
                users.check_hashes("nobody"),
                "{text}"
            );
            assert_eq!(users.users_unlike_the_decoy(), 1, "{text}");
        }
        // The start-up warning's count: none when every user is of the
        // common kind, two of five here.
        let alike = format!("a:{BUILDER}\nb:{BUILDER}\n");
        assert_eq!(
            UsersFile::parse(&alike).unwrap().users_unlike_the_decoy(),
            0
        );
        let two_odd =
            format!("a:{BUILDER}\nb:{BUILDER}\nc:{BUILDER}\nd:{{PLAIN}}x\ne:{{PLAIN}}y\n");
        assert_eq!(
            UsersFile::parse(&two_odd).unwrap().users_unlike_the_decoy(),
            2
        );
        let nobody = UsersFile::parse("# nobody yet\n").unwrap();
        let unknown = verified::during(|| assert!(!nobody.verify_password("x", "y")));
        assert_eq!(unknown, [DEFAULT]);
        assert!(nobody.check_hashes("x"));
    }

    /// Of kinds equally common, the dearer one: a name that does not
    /// exist then never answers faster than one that does.
    #[test]
    fn a_tie_goes_to_the_dearer_scheme() {
        let users = UsersFile::parse(&format!("a:{{PLAIN}}x\nb:{BUILDER}\n")).unwrap();
        assert_eq!(
            users.decoy().cost(),
            Cost::Sha512Crypt {
                rounds: 5000,
                salt_len: 13
            }
        );
    }

    /// A decoy hash is a well-formed hash that the verifier computes in
    /// full and finds wrong, not one it refuses before hashing (which
    /// would be fast again).
    #[test]
    fn a_decoy_hash_is_computed_in_full() {
        use sha_crypt::{PasswordHashRef, PasswordVerifier, ShaCrypt};
        for cost in [
            DEFAULT,
            Cost::Sha512Crypt {
                rounds: 1000,
                salt_len: 1,
            },
        ] {
            let decoy = Secret::decoy(cost);
            assert_eq!(decoy.cost(), cost);
            let Secret::Sha512Crypt(hash) = &decoy else {
                panic!("{cost:?} gave {decoy:?}")
            };
            assert!(PasswordHashRef::new(hash).is_ok(), "{hash}");
            assert_eq!(
                ShaCrypt::SHA512.verify_password(b"x", hash.as_str()),
                Err(sha_crypt::password_hash::Error::PasswordInvalid),
                "{hash}"
            );
            // It also passes the users file's own check of the form.
            UsersFile::parse(&format!("a:{hash}\n")).unwrap();
        }
        assert_eq!(Secret::decoy(Cost::Plain).cost(), Cost::Plain);
    }
}
