//! A reader that cuts over-long JSON strings short while the request streams in.
//!
//! serde_json reads a string whole into a scratch buffer before a visitor sees it, so a single
//! 60 MiB text would cost 60 MiB (and up to twice that while the buffer grows) even though the
//! text model keeps only its byte budget of it. This adapter sits between the body and the
//! JSON parser and drops the bytes of any string past `keep` characters, up to its closing
//! quote: every visitor clips or refuses strings far shorter than `keep` anyway (an input's
//! `max_bytes` plus one character, 4 KiB for ids, names and parameters), so what it decides is
//! unchanged and the JSON stays valid. It counts a character per plain byte and per escape,
//! which is never more than the bytes the escape decodes to, and cuts only between whole
//! characters: never inside an escape, inside a UTF-8 sequence, or between the two halves of a
//! surrogate pair.

use std::io::{self, Read};

/// See the module documentation.
pub(super) struct ClipStrings<R> {
    inner: R,
    keep: usize,
    state: State,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    in_string: bool,
    /// Dropping the rest of the current string.
    dropping: bool,
    /// 0: not in an escape; 1: after `\`; 2..=5: reading the hex digits of `\u`.
    escape: u8,
    hex: u32,
    /// The last character was the high half of a surrogate pair.
    high_surrogate: bool,
    /// Characters kept of the current string.
    count: usize,
}

impl<R: Read> ClipStrings<R> {
    pub(super) fn new(inner: R, keep: usize) -> ClipStrings<R> {
        ClipStrings {
            inner,
            keep,
            state: State::default(),
        }
    }
}

impl<R: Read> Read for ClipStrings<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(out)?;
            if n == 0 {
                return Ok(0);
            }
            let mut kept = 0;
            for i in 0..n {
                let byte = out[i];
                if self.state.keeps(byte, self.keep) {
                    out[kept] = byte;
                    kept += 1;
                }
            }
            // A read that dropped everything is not the end of the stream: read on.
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

impl State {
    /// Advances over `byte` and says whether it is passed on.
    fn keeps(&mut self, byte: u8, keep: usize) -> bool {
        if !self.in_string {
            if byte == b'"' {
                *self = State {
                    in_string: true,
                    ..State::default()
                };
            }
            return true;
        }
        if !self.dropping {
            let boundary = self.escape == 0
                && !(0x80..0xC0).contains(&byte)
                && !(self.high_surrogate && byte == b'\\');
            if boundary && byte != b'"' && self.count >= keep {
                self.dropping = true;
            }
        }
        if self.dropping {
            match (self.escape, byte) {
                (1, _) => self.escape = 0,
                (_, b'\\') => self.escape = 1,
                (_, b'"') => self.in_string = false,
                _ => {}
            }
            return !self.in_string;
        }
        self.advance(byte);
        true
    }

    /// Follows a kept byte of a string.
    fn advance(&mut self, byte: u8) {
        match self.escape {
            0 => match byte {
                b'\\' => self.escape = 1,
                b'"' => self.in_string = false,
                _ => {
                    if !(0x80..0xC0).contains(&byte) {
                        self.count += 1;
                        self.high_surrogate = false;
                    }
                }
            },
            1 => {
                self.count += 1;
                if byte == b'u' {
                    self.escape = 2;
                    self.hex = 0;
                } else {
                    self.escape = 0;
                    self.high_surrogate = false;
                }
            }
            _ => {
                self.hex = self.hex * 16 + char::from(byte).to_digit(16).unwrap_or(0);
                self.escape += 1;
                if self.escape == 6 {
                    self.escape = 0;
                    self.high_surrogate = (0xD800..0xDC00).contains(&self.hex);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `json` through the adapter in reads of `chunk` bytes.
    fn clip(json: &str, keep: usize, chunk: usize) -> String {
        struct Chunked<'a>(&'a [u8], usize);
        impl Read for Chunked<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        ClipStrings::new(Chunked(json.as_bytes(), chunk), keep)
            .read_to_end(&mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn strings(json: &str) -> Vec<String> {
        serde_json::from_str(json).expect("the clipped JSON is valid")
    }

    #[test]
    fn long_strings_are_cut_and_the_json_stays_valid() {
        for chunk in [1, 3, 4096] {
            let json = r#"["short","abcdefghij","a\"b\\c\ndefgh"]"#;
            assert_eq!(
                strings(&clip(json, 4, chunk)),
                ["shor", "abcd", "a\"b\\"],
                "chunk {chunk}"
            );
            // Within the limit nothing changes, keys and numbers included.
            let json = r#"{"key":["ab",1.5,"cd"]}"#;
            assert_eq!(clip(json, 4, chunk), json);
        }
    }

    #[test]
    fn cuts_fall_between_whole_characters() {
        // A \u escape, a two-byte UTF-8 character and a surrogate pair are never split: the
        // cut comes after them, so the prefix kept decodes.
        let cases = [
            (r#"["ab\u00e9cd"]"#, 3, "ab\u{e9}"),
            (r#"["abécd"]"#, 3, "abé"),
            (r#"["a\ud83d\ude00bc"]"#, 2, "a\u{1F600}"),
            (r#"["a\ud83d\ude00bc"]"#, 1, "a"),
        ];
        for (json, keep, want) in cases {
            for chunk in [1, 2, 64] {
                assert_eq!(
                    strings(&clip(json, keep, chunk)),
                    [want],
                    "{json} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_60_mib_string_is_never_held() {
        let body = format!(r#"{{"text":["{}"]}}"#, "word ".repeat(12 << 20));
        let clipped = clip(&body, 1024, 64 << 10);
        assert!(clipped.len() < 1100, "{}", clipped.len());
        let parsed: serde_json::Value = serde_json::from_str(&clipped).unwrap();
        assert_eq!(parsed["text"][0].as_str().map(str::len), Some(1024));
    }
}
