//! What the connection is, as far as logging in cares: whether TLS is up,
//! whether it could be, and whether the client is on this host.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    /// TLS is up: implicit TLS (RFC 8314), or after STLS (RFC 2595).
    pub tls: bool,
    /// A certificate is configured, so STLS can be offered and a
    /// password is not taken in clear from another host.
    pub tls_available: bool,
    /// The client is on this host (a loopback address): nothing crosses
    /// a network.
    pub loopback: bool,
}

impl Transport {
    /// A connection without TLS (yet); `local` if its client is on this
    /// host (`server::proxy::Peer::is_local`).
    pub fn cleartext(local: bool, tls_available: bool) -> Self {
        Self {
            tls: false,
            tls_available,
            loopback: local,
        }
    }

    /// A connection that is TLS from its first octet (port 995).
    pub fn implicit_tls(local: bool) -> Self {
        Self {
            tls: true,
            tls_available: true,
            loopback: local,
        }
    }

    /// RFC 2595 section 4: STLS is offered where a certificate is
    /// configured and TLS is not up yet.
    pub fn stls_offered(&self) -> bool {
        self.tls_available && !self.tls
    }

    /// Whether a password may be sent here (USER/PASS, AUTH PLAIN): over
    /// TLS, from this host, or anywhere when no certificate is configured
    /// (the operator was warned at start).
    pub fn cleartext_password_allowed(&self) -> bool {
        self.tls || self.loopback || !self.tls_available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_need_tls_from_other_hosts_once_a_certificate_is_configured() {
        let (remote, local) = (false, true);
        assert!(Transport::cleartext(remote, false).cleartext_password_allowed());
        assert!(!Transport::cleartext(remote, true).cleartext_password_allowed());
        assert!(Transport::cleartext(local, true).cleartext_password_allowed());
        assert!(Transport::implicit_tls(remote).cleartext_password_allowed());
        assert!(Transport::cleartext(remote, true).stls_offered());
        assert!(!Transport::cleartext(remote, false).stls_offered());
        assert!(!Transport::implicit_tls(remote).stls_offered());
    }
}
