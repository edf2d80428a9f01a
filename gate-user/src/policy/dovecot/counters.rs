//! What the endpoint did, counted for logs and metrics.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The endpoint's counts, shared with whoever reports them.
        #[derive(Debug, Default)]
        pub struct PolicyCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// The counts at one moment.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct CountsNow {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl PolicyCounters {
            pub fn now(&self) -> CountsNow {
                CountsNow {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        /// `key=value` pairs, as log lines have them.
        impl fmt::Display for CountsNow {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut separator = "";
                $(
                    write!(f, "{separator}{}={}", stringify!($name), self.$name)?;
                    separator = " ";
                )*
                let _ = separator;
                Ok(())
            }
        }
    };
}

counters! {
    /// Requests answered, whatever the answer.
    requests,
    /// `allow` requests answered "go on".
    allowed,
    /// `allow` requests refused: the client is banned.
    refused,
    /// Successful logins of an enabled protocol, granted.
    grants,
    /// Successful logins whose grant could not be written.
    grant_errors,
    /// Failed logins counted toward a ban.
    failures,
    /// Failed logins not counted: our own refusal, or Dovecot's trouble.
    failures_not_counted,
    /// Reports of a protocol not enabled, or without a client address.
    ignored,
    /// Requests refused as malformed (4xx).
    bad_requests,
    /// Requests without the shared secret (401).
    unauthorized,
}

impl PolicyCounters {
    pub(super) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
