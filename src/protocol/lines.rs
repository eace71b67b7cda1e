//! Line framing with a hard length limit.
//!
//! [`LineReader`] owns a fixed-size input buffer. The child reads socket data
//! into [`LineReader::spare`], then takes complete lines one at a time with
//! [`LineReader::next_line`], so that it can stop between lines (flood
//! control, a full ring) and resume later without losing or re-reading
//! anything. A line longer than the limit yields one [`Input::TooLong`] and
//! the rest of it, up to its newline, is discarded.

/// One item of framed input.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// A complete line without its `\n` or `\r\n`.
    Line(&'a [u8]),
    /// A line exceeded the limit; its remainder will be skipped.
    TooLong,
}

/// Frames a byte stream into lines of at most `max` bytes.
pub struct LineReader {
    /// Allocated when first read into; empty after [`LineReader::release`].
    buf: Box<[u8]>,
    /// The buffer's length once allocated.
    size: usize,
    start: usize,
    end: usize,
    max: usize,
    discarding: bool,
    /// Newlines consumed so far, discarded lines' included.
    ended: u64,
}

impl LineReader {
    /// A reader for lines of at most `max` bytes, reading `chunk` bytes at a time.
    pub fn new(max: usize, chunk: usize) -> Self {
        LineReader {
            buf: Box::default(),
            size: max + 2 + chunk,
            start: 0,
            end: 0,
            max,
            discarding: false,
            ended: 0,
        }
    }

    /// Free space to read into; compacts the buffer first. Empty only while
    /// unconsumed complete lines are pending.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0; self.size].into_boxed_slice();
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`LineReader::spare`] as filled.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Frees the buffer if it holds nothing (an idle client's child gives
    /// its memory back); the next [`LineReader::spare`] allocates it again.
    /// Keeps it, and returns false, while bytes are pending.
    pub fn release(&mut self) -> bool {
        if self.pending() > 0 {
            return false;
        }
        self.buf = Box::default();
        (self.start, self.end) = (0, 0);
        true
    }

    /// Whether the buffer is allocated (read into since the last release).
    pub fn is_allocated(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The bytes received and not yet returned as lines (a child handing
    /// its client over passes them on).
    pub fn unread(&self) -> &[u8] {
        if self.buf.is_empty() {
            return &[];
        }
        &self.buf[self.start..self.end]
    }

    /// Bytes received and not yet returned as lines.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Whether a line has begun and not ended: bytes without a newline are
    /// buffered, or the rest of an over-long line is being skipped. False
    /// while a complete line waits.
    pub fn in_partial_line(&self) -> bool {
        let data = &self.buf[self.start..self.end];
        (self.discarding || !data.is_empty()) && !data.contains(&b'\n')
    }

    /// How many lines have ended (their newline consumed by
    /// [`LineReader::next_line`]), over-long ones included: a partial line
    /// seen at two different counts is two different lines.
    pub fn ended(&self) -> u64 {
        self.ended
    }

    /// Whether [`LineReader::next_line`] would return something now.
    pub fn has_line(&self) -> bool {
        let data = &self.buf[self.start..self.end];
        data.contains(&b'\n') || (!self.discarding && data.len() > self.max + 1)
    }

    /// The next complete line or over-long notice, if any.
    pub fn next_line(&mut self) -> Option<Input<'_>> {
        loop {
            let data = &self.buf[self.start..self.end];
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let line_start = self.start;
                    self.start += i + 1;
                    self.ended += 1;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    let mut line = &self.buf[line_start..line_start + i];
                    if let Some(stripped) = line.strip_suffix(b"\r") {
                        line = stripped;
                    }
                    if line.len() > self.max {
                        return Some(Input::TooLong);
                    }
                    return Some(Input::Line(line));
                }
                None => {
                    if self.discarding {
                        self.start = self.end;
                        return None;
                    }
                    // Allow room for a trailing '\r' before deciding.
                    if data.len() > self.max + 1 {
                        self.discarding = true;
                        self.start = self.end;
                        return Some(Input::TooLong);
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut LineReader, data: &[u8]) -> Vec<Result<Vec<u8>, ()>> {
        let mut out = Vec::new();
        let mut rest = data;
        loop {
            while let Some(i) = r.next_line() {
                out.push(match i {
                    Input::Line(l) => Ok(l.to_vec()),
                    Input::TooLong => Err(()),
                });
            }
            if rest.is_empty() {
                return out;
            }
            let s = r.spare();
            let n = s.len().min(rest.len());
            s[..n].copy_from_slice(&rest[..n]);
            r.filled(n);
            rest = &rest[n..];
        }
    }

    #[test]
    fn release_frees_only_an_empty_buffer() {
        let mut r = LineReader::new(8, 16);
        r.spare()[..3].copy_from_slice(b"ab\n");
        r.filled(3);
        assert_eq!(r.next_line(), Some(Input::Line(b"ab")));
        assert!(r.release(), "nothing pending");
        assert!(!r.is_allocated(), "freed");
        assert_eq!(r.spare().len(), 26, "allocated again");
        assert!(r.is_allocated());
        r.spare()[..2].copy_from_slice(b"cd");
        r.filled(2);
        assert!(!r.release(), "a partial line is kept");
        r.spare()[..1].copy_from_slice(b"\n");
        r.filled(1);
        assert_eq!(r.next_line(), Some(Input::Line(b"cd")));
    }

    #[test]
    fn splits_lf_and_crlf() {
        let mut r = LineReader::new(16, 4);
        let out = feed(&mut r, b"ab\ncd\r\n\nef");
        assert_eq!(
            out,
            vec![Ok(b"ab".to_vec()), Ok(b"cd".to_vec()), Ok(vec![])]
        );
        assert_eq!(r.pending(), 2);
    }

    #[test]
    fn exact_limit_is_accepted_with_crlf() {
        let mut r = LineReader::new(4, 1);
        assert_eq!(
            feed(&mut r, b"abcd\r\nx\n"),
            vec![Ok(b"abcd".to_vec()), Ok(b"x".to_vec())]
        );
    }

    #[test]
    fn too_long_once_then_resyncs() {
        let mut r = LineReader::new(4, 3);
        let out = feed(&mut r, b"abcdefghijklmnop\nok\n");
        assert_eq!(out, vec![Err(()), Ok(b"ok".to_vec())]);
    }

    #[test]
    fn ended_counts_every_newline_consumed_discarded_ones_too() {
        let mut r = LineReader::new(4, 64);
        assert_eq!(feed(&mut r, b"abcdefgh"), vec![Err(())]);
        assert!(r.in_partial_line(), "the rest of the long line");
        assert_eq!(r.ended(), 0);
        // The long line's end and a new line's start in one read: the new
        // partial line is seen at another count.
        assert_eq!(feed(&mut r, b"ij\nok\nne"), vec![Ok(b"ok".to_vec())]);
        assert_eq!(r.ended(), 2);
        assert!(r.in_partial_line());
        assert_eq!(feed(&mut r, b"w"), vec![]);
        assert_eq!(r.ended(), 2, "the same partial line");
    }

    #[test]
    fn too_long_with_newline_in_buffer() {
        let mut r = LineReader::new(4, 64);
        assert_eq!(
            feed(&mut r, b"abcdef\nok\n"),
            vec![Err(()), Ok(b"ok".to_vec())]
        );
    }
}
