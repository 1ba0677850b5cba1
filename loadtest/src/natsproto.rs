//! Just enough of the NATS client protocol to subscribe over nats-server's WebSocket listener:
//! CONNECT/SUB out, MSG/PING/INFO/+OK/-ERR in (possibly split across or joined within frames).
use memchr::memmem;

/// One parsed server operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Msg(Vec<u8>),
    Ping,
    Other,
    Err(String),
}

/// Accumulates bytes and yields complete operations.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete operation, if the buffer holds one.
    pub fn next_op(&mut self) -> Option<Op> {
        let eol = memmem::find(&self.buf, b"\r\n")?;
        let line = &self.buf[..eol];
        if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
            let fields: Vec<&[u8]> = line
                .split(|b| *b == b' ')
                .filter(|f| !f.is_empty())
                .collect();
            let size: usize = std::str::from_utf8(fields.last()?).ok()?.parse().ok()?;
            let start = eol + 2;
            if self.buf.len() < start + size + 2 {
                return None;
            }
            let payload = self.buf[start..start + size].to_vec();
            self.buf.drain(..start + size + 2);
            return Some(Op::Msg(payload));
        }
        let op = if line == b"PING" {
            Op::Ping
        } else if line.starts_with(b"-ERR") {
            Op::Err(String::from_utf8_lossy(line).into_owned())
        } else {
            Op::Other
        };
        self.buf.drain(..eol + 2);
        Some(op)
    }
}

/// The client's opening: CONNECT, then SUB to `subject`, then PING (its PONG confirms the SUB).
pub fn hello(subject: &str) -> Vec<u8> {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"taskboard-loadtest\"}}\r\nSUB {subject} 1\r\nPING\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_and_joined_within_frames() {
        let mut p = Parser::default();
        p.push(b"INFO {}\r\nMSG a.b 1 5\r\nhel");
        assert_eq!(p.next_op(), Some(Op::Other));
        assert_eq!(p.next_op(), None);
        p.push(b"lo\r\nPING\r\nMSG a.b 1 2\r\nhi\r\n");
        assert_eq!(p.next_op(), Some(Op::Msg(b"hello".to_vec())));
        assert_eq!(p.next_op(), Some(Op::Ping));
        assert_eq!(p.next_op(), Some(Op::Msg(b"hi".to_vec())));
        assert_eq!(p.next_op(), None);
    }
}
