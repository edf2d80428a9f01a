//! Cutting a connection's octets into requests: each ends at an empty
//! line, within [`MAX_LINE`] a line and [`MAX_REQUEST`] a request, so a
//! client that never ends a line or a request holds a bounded buffer.
//! Octets after a request's empty line stay for the next request.

use super::request::{Malformed, MAX_LINE, MAX_REQUEST};

#[derive(Default)]
pub struct RequestFramer {
    buf: Vec<u8>,
    /// Where the line being read starts.
    line_start: usize,
    /// How far `buf` was searched for line ends.
    scanned: usize,
}

impl RequestFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes octets read from the connection.
    pub fn extend(&mut self, octets: &[u8]) {
        self.buf.extend_from_slice(octets);
    }

    /// True while nothing of a next request was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole request: its lines, each with its LF, without the
    /// empty line. `None` until one is whole. An error means the stream
    /// can no longer be framed (the caller closes it).
    pub fn next_request(&mut self) -> Result<Option<Vec<u8>>, Malformed> {
        while let Some(offset) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + offset;
            self.scanned = end + 1;
            if end - self.line_start > MAX_LINE {
                return Err(Malformed::LineTooLong);
            }
            if end > self.line_start {
                self.line_start = end + 1;
                continue;
            }
            // An empty line: the request is everything before it.
            if self.line_start > MAX_REQUEST {
                return Err(Malformed::RequestTooLarge);
            }
            let rest = self.buf.split_off(end + 1);
            let mut request = std::mem::replace(&mut self.buf, rest);
            request.truncate(self.line_start);
            self.line_start = 0;
            self.scanned = 0;
            return Ok(Some(request));
        }
        self.scanned = self.buf.len();
        if self.buf.len() - self.line_start > MAX_LINE {
            return Err(Malformed::LineTooLong);
        }
        // What is here already belongs to the request (at best the next
        // octet is the empty line's LF).
        if self.buf.len() > MAX_REQUEST {
            return Err(Malformed::RequestTooLarge);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<Malformed>) {
        let mut framer = RequestFramer::new();
        let mut requests = Vec::new();
        for chunk in chunks {
            framer.extend(chunk);
            loop {
                match framer.next_request() {
                    Ok(Some(request)) => requests.push(request),
                    Ok(None) => break,
                    Err(e) => return (requests, Some(e)),
                }
            }
        }
        (requests, None)
    }

    #[test]
    fn requests_end_at_an_empty_line_however_the_octets_arrive() {
        let whole: &[u8] = b"a=1\nb=2\n\nc=3\n\n";
        let expected = vec![b"a=1\nb=2\n".to_vec(), b"c=3\n".to_vec()];
        assert_eq!(framed(&[whole]), (expected.clone(), None));
        let octets: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(framed(&octets), (expected, None));
    }

    #[test]
    fn a_partial_request_waits_and_what_follows_stays() {
        let mut framer = RequestFramer::new();
        assert!(framer.is_empty());
        framer.extend(b"a=1\n\nb=");
        assert_eq!(framer.next_request().unwrap(), Some(b"a=1\n".to_vec()));
        assert_eq!(framer.next_request().unwrap(), None);
        assert!(!framer.is_empty(), "b= is the next request's start");
        framer.extend(b"2\n\n");
        assert_eq!(framer.next_request().unwrap(), Some(b"b=2\n".to_vec()));
        assert!(framer.is_empty());
    }

    #[test]
    fn a_line_too_long_is_refused_before_it_ends() {
        let long = vec![b'x'; MAX_LINE];
        let (_, error) = framed(&[b"a=1\n", &long]);
        assert_eq!(error, None, "a line of MAX_LINE octets is taken");
        let (_, error) = framed(&[b"a=1\n", &long, b"x"]);
        assert_eq!(
            error,
            Some(Malformed::LineTooLong),
            "refused without its LF"
        );
        let (_, error) = framed(&[&long, b"x\n"]);
        assert_eq!(error, Some(Malformed::LineTooLong));
    }

    #[test]
    fn a_request_too_large_is_refused_before_it_ends() {
        let line = [vec![b'x'; 999], vec![b'\n']].concat();
        let most: Vec<u8> = line.repeat(MAX_REQUEST / 1000);
        let (requests, error) = framed(&[&most, b"\n"]);
        assert_eq!((requests.len(), error), (1, None));
        let over = [most.clone(), line.clone()].concat();
        assert_eq!(framed(&[&over]).1, Some(Malformed::RequestTooLarge));
        // All of MAX_REQUEST in lines, then the empty line: still taken.
        let exact = [
            most.clone(),
            vec![b'y'; MAX_REQUEST - most.len() - 1],
            vec![b'\n'],
        ]
        .concat();
        assert_eq!(framed(&[&exact, b"\n"]).0.len(), 1);
        assert_eq!(
            framed(&[&exact, b"z\n\n"]).1,
            Some(Malformed::RequestTooLarge)
        );
    }
}
