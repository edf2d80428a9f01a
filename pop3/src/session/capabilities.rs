//! What CAPA lists, state by state and connection by connection.
//!
//! RFC 2449 section 5: "The capabilities available to a client may change
//! between the AUTHORIZATION and TRANSACTION states"; a capability is
//! listed only where it can be used. RFC 2595 section 4: STLS is not
//! offered once TLS is up. RFC 5034 section 3: the SASL capability lists
//! the mechanisms; like USER, it is not listed where a password would be
//! refused (Dovecot does the same with `auth_allow_cleartext = no`).

use super::Transport;

/// The capabilities of a session in AUTHORIZATION (`logged_in` false) or
/// TRANSACTION, on `transport`.
pub(super) fn capabilities(logged_in: bool, transport: &Transport) -> Vec<&'static str> {
    let mut list = vec!["TOP", "UIDL", "RESP-CODES", "PIPELINING"];
    if !logged_in {
        list.push("AUTH-RESP-CODE");
        if transport.stls_offered() {
            list.push("STLS");
        }
        if transport.cleartext_password_allowed() {
            list.push("USER");
            list.push("SASL PLAIN");
        }
    }
    list.push("IMPLEMENTATION smtp-gate");
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(tls: bool, tls_available: bool) -> Transport {
        Transport {
            tls,
            tls_available,
            loopback: false,
        }
    }

    #[test]
    fn each_state_and_connection_lists_what_it_takes() {
        let demo = capabilities(false, &remote(false, false));
        assert!(demo.contains(&"USER") && demo.contains(&"SASL PLAIN"));
        assert!(!demo.contains(&"STLS"), "no certificate, no STLS");

        let cleartext = capabilities(false, &remote(false, true));
        assert!(cleartext.contains(&"STLS"));
        assert!(!cleartext.contains(&"USER") && !cleartext.contains(&"SASL PLAIN"));

        let tls = capabilities(false, &remote(true, true));
        assert!(!tls.contains(&"STLS"), "RFC 2595: not inside TLS");
        assert!(tls.contains(&"USER") && tls.contains(&"SASL PLAIN"));

        let local = Transport {
            loopback: true,
            ..remote(false, true)
        };
        let local = capabilities(false, &local);
        assert!(local.contains(&"STLS") && local.contains(&"USER"));

        let logged_in = capabilities(true, &remote(false, true));
        for gone in ["STLS", "USER", "SASL PLAIN", "AUTH-RESP-CODE"] {
            assert!(!logged_in.contains(&gone), "{gone} after login");
        }
        for kept in ["TOP", "UIDL", "PIPELINING", "RESP-CODES"] {
            assert!(logged_in.contains(&kept), "{kept} after login");
        }
    }
}
