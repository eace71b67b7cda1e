//! The message marker: what a sender puts in a line and a receiver finds
//! again in its byte stream, whatever the server adds around it.
//!
//! A message of `size` bytes is `|#SENDER.SEQ.TIME.` (hex fields; TIME in
//! microseconds since the run started) followed by filler letters derived
//! from the three fields, then `|`. A receiver looks for `|#` in each line,
//! so a prefix such as `<guest-3> ` does not matter; a marker whose filler
//! or length is not what its fields say is counted as corrupt.

/// What a receiver found in a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No marker in this line (greetings, notices).
    None,
    Marker {
        sender: u32,
        seq: u32,
        time_us: u64,
    },
    Corrupt,
}

fn filler(sender: u32, seq: u32, time_us: u64, i: usize) -> u8 {
    let h = (sender as u64)
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add((seq as u64).wrapping_mul(31))
        .wrapping_add(time_us)
        .wrapping_add(i as u64 * 7);
    b'a' + (h % 26) as u8
}

/// Appends the `size`-byte message and a newline to `out`.
pub fn encode(out: &mut Vec<u8>, sender: u32, seq: u32, time_us: u64, size: usize) {
    let start = out.len();
    out.extend_from_slice(format!("|#{sender:x}.{seq:x}.{time_us:x}.").as_bytes());
    let head = out.len() - start;
    for i in head..size.saturating_sub(1).max(head) {
        out.push(filler(sender, seq, time_us, i));
    }
    out.push(b'|');
    out.push(b'\n');
}

/// The shortest message that fits a marker with large fields.
pub const MIN_SIZE: usize = 48;

/// Looks for a marker in one line (without its newline).
pub fn decode(line: &[u8], size: usize) -> Found {
    let Some(at) = line.windows(2).position(|w| w == b"|#") else {
        return Found::None;
    };
    let m = &line[at..];
    let mut fields = [0u64; 3];
    let mut pos = 2;
    for f in &mut fields {
        let digits = m[pos..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits == 0 || digits > 16 || m.get(pos + digits) != Some(&b'.') {
            return Found::Corrupt;
        }
        let s = std::str::from_utf8(&m[pos..pos + digits]).unwrap();
        *f = u64::from_str_radix(s, 16).unwrap();
        pos += digits + 1;
    }
    let [sender, seq, time_us] = fields;
    if sender > u32::MAX as u64 || seq > u32::MAX as u64 || m.len() != size.max(pos + 1) {
        return Found::Corrupt;
    }
    let (sender, seq) = (sender as u32, seq as u32);
    let body_ok = m[pos..m.len() - 1]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == filler(sender, seq, time_us, pos + i));
    if !body_ok || m[m.len() - 1] != b'|' {
        return Found::Corrupt;
    }
    Found::Marker {
        sender,
        seq,
        time_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_behind_a_prefix() {
        let mut v = b"<guest-12> ".to_vec();
        encode(&mut v, 7, 12345, 987654321, 64);
        assert_eq!(v.len(), 11 + 64 + 1);
        let line = &v[..v.len() - 1];
        assert_eq!(
            decode(line, 64),
            Found::Marker {
                sender: 7,
                seq: 12345,
                time_us: 987654321
            }
        );
        assert_eq!(decode(b"* Welcome", 64), Found::None);
    }

    #[test]
    fn any_changed_byte_is_corrupt() {
        let mut v = Vec::new();
        encode(&mut v, 3, 4, 5, 64);
        v.pop();
        for i in 2..v.len() {
            let mut w = v.clone();
            w[i] = if w[i] == b'z' { b'y' } else { b'z' };
            assert_ne!(
                decode(&w, 64),
                Found::Marker {
                    sender: 3,
                    seq: 4,
                    time_us: 5
                },
                "byte {i}"
            );
        }
        assert_eq!(decode(&v[..40], 64), Found::Corrupt);
    }
}
