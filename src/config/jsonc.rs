//! Lenient JSON as the zhiva docs publish it: `//` and `/* */` comments and trailing commas.
//!
//! Rather than a second parser, the text is blanked into strict JSON of the same
//! length and line structure, so serde_json's line:column errors still point at
//! the user's file.

/// Returns `text` with comments and trailing commas replaced by spaces.
pub fn to_strict(text: &str) -> String {
    let src = text.as_bytes();
    let mut out = src.to_vec();
    let mut i = 0;
    // Index in `out` of a comma that is trailing if the next significant byte closes a container.
    let mut pending_comma: Option<usize> = None;
    while i < src.len() {
        match src[i] {
            b'"' => {
                pending_comma = None;
                i += 1;
                while i < src.len() && src[i] != b'"' {
                    if src[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'/' if src.get(i + 1) == Some(&b'/') => {
                while i < src.len() && src[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            b'/' if src.get(i + 1) == Some(&b'*') => {
                let start = i;
                i += 2;
                while i < src.len() && !(src[i] == b'*' && src.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                let end = (i + 2).min(src.len());
                for b in &mut out[start..end] {
                    if *b != b'\n' {
                        *b = b' ';
                    }
                }
                i = end;
            }
            b',' => {
                pending_comma = Some(i);
                i += 1;
            }
            b'}' | b']' => {
                if let Some(c) = pending_comma.take() {
                    out[c] = b' ';
                }
                i += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            _ => {
                pending_comma = None;
                i += 1;
            }
        }
    }
    // Only ASCII bytes outside strings were replaced by ASCII spaces: still valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Line and column (both 1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_trailing_commas() {
        let src = "{\n  // a comment\n  \"a\": \"http://x//y\", /* b */\n  \"b\": [1, 2,],\n}\n";
        let strict = to_strict(src);
        assert_eq!(strict.len(), src.len());
        let v: serde_json::Value = serde_json::from_str(&strict).unwrap();
        assert_eq!(v["a"], "http://x//y");
        assert_eq!(v["b"], serde_json::json!([1, 2]));
    }

    #[test]
    fn escaped_quotes_in_strings() {
        let src = r#"{"a": "say \"hi\", // not a comment",}"#;
        let v: serde_json::Value = serde_json::from_str(&to_strict(src)).unwrap();
        assert_eq!(v["a"], "say \"hi\", // not a comment");
    }

    #[test]
    fn positions_survive() {
        let src = "{\n // c\n \"a\": ?\n}";
        let err = serde_json::from_str::<serde_json::Value>(&to_strict(src)).unwrap_err();
        assert_eq!((err.line(), err.column()), (3, 7));
        assert_eq!(line_col(src, 9), (3, 2));
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for s in ["\"abc", "/* x", "{\"a\\", "//"] {
            let _ = to_strict(s);
        }
    }
}
