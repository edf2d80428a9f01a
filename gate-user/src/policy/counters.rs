//! The hooks' counters: what each did since the daemon started, one
//! atomic a count, read at once into a plain struct that prints as the
//! `key=value` pairs of a log line (and later a metrics page).

/// `policy_counters!(Counters, Now; fields...)`: the atomics `Counters` (with
/// `now()`) and their values at one moment, `Now`.
#[macro_export]
macro_rules! policy_counters {
    ($counters:ident, $now:ident; $($(#[$doc:meta])* $name:ident,)*) => {
        /// What the hook did since the daemon started.
        #[derive(Debug, Default)]
        pub struct $counters {
            $($(#[$doc])* pub $name: std::sync::atomic::AtomicU64,)*
        }

        /// The counts at one moment.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $now {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl $counters {
            /// One more of `counter` (one of this struct's fields).
            pub fn add(counter: &std::sync::atomic::AtomicU64) {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }

            pub fn now(&self) -> $now {
                $now {
                    $($name: self.$name.load(std::sync::atomic::Ordering::Relaxed),)*
                }
            }
        }

        /// `key=value` pairs, as log lines have them.
        impl std::fmt::Display for $now {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
