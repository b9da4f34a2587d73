//! Making feed text safe to print.
//!
//! Feed content (rejected lines, indicator ids, descriptions, error
//! messages quoting a feed) comes from whoever serves the feed. Printed raw,
//! a `\r` or `\n` in it forges log lines and an ESC starts a terminal
//! control sequence. [`escape`] (and [`Escaped`], its `Display` form) turns
//! every such character into visible text: `\r`, `\n`, `\t`, `\0`, `\xNN`
//! for the other C0 controls and DEL, `\u{NN}` for C1 controls, and
//! `\u{NNNN}` for the characters that reorder or break lines on a terminal
//! (bidirectional overrides and isolates, U+2028/U+2029). Everything else is
//! kept, so ordinary text, addresses and non-Latin descriptions read as they
//! are.
//!
//! The escaping is idempotent (a backslash is not itself escaped), so text
//! that passes through two escaping layers (a message quoting an escaped
//! line, then the log formatter) is never double-escaped; the price is that
//! a feed's literal `\r` (two characters) prints like an escaped CR, which
//! is harmless: neither can move the cursor.
//!
//! [`escape_bytes`] does the same for bytes that may not be UTF-8: invalid
//! sequences become U+FFFD. [`json`] makes serialized JSON safe on a
//! terminal too: serde_json already escapes C0 controls, and the rest of the
//! set above is rewritten as `\uNNNN` (the same JSON value).

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal or log raw.
fn unsafe_char(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Write `c` escaped (it is one [`unsafe_char`] would flag).
fn write_escaped(out: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\r' => out.write_str("\\r"),
        '\n' => out.write_str("\\n"),
        '\t' => out.write_str("\\t"),
        '\0' => out.write_str("\\0"),
        c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

/// `text` with every control character (and line or direction changing
/// character) escaped; borrowed when there is nothing to escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(Escaped(text).to_string())
}

/// [`escape`] for bytes that may not be UTF-8 (invalid sequences become
/// U+FFFD, the replacement character).
pub fn escape_bytes(bytes: &[u8]) -> String {
    escape(&String::from_utf8_lossy(bytes)).into_owned()
}

/// `Display` of a string, escaped as [`escape`] does, without allocating:
/// `format!("{}", Escaped(line))`.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some((i, c)) = rest.char_indices().find(|&(_, c)| unsafe_char(c)) {
            f.write_str(&rest[..i])?;
            write_escaped(f, c)?;
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Serialized JSON made terminal-safe: DEL, C1 controls and the line or
/// direction changing characters (which serde_json leaves raw inside
/// strings) become `\uNNNN` escapes. They can only occur inside strings, so
/// the JSON value is unchanged. C0 controls are left alone: serde_json
/// escapes them inside strings, and outside strings they are the
/// (pretty-printer's) whitespace.
pub fn json(serialized: String) -> String {
    let raw_in_json = |c: char| unsafe_char(c) && c > '\u{1f}';
    if !serialized.chars().any(raw_in_json) {
        return serialized;
    }
    let mut out = String::with_capacity(serialized.len() + 16);
    for c in serialized.chars() {
        if raw_in_json(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `word` as one shell word, for a command the tool prints as advice
/// (`edge-filter detach --iface eth1 --bpffs DIR`): unchanged when it has
/// only characters no shell treats specially, else single-quoted (a `'`
/// inside becomes `'\''`). Pasted into sh, bash or zsh it is `word` again.
pub fn shell_word(word: &str) -> Cow<'_, str> {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', "'\\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_and_unchanged() {
        for s in [
            "",
            "203.0.113.7",
            "C2 \"Emotet\" 90%",
            "Zugriff verweigert: Straße",
            "日本語の説明",
            r"C:\path\to",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(_)), "{s}");
            assert_eq!(escape(s), s);
        }
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(
            escape("203.0.113.7\r[ERROR] forged"),
            "203.0.113.7\\r[ERROR] forged"
        );
        assert_eq!(escape("a\nb\tc\0d"), "a\\nb\\tc\\0d");
        assert_eq!(
            escape("\x1b[2J\x1b]0;title\x07"),
            "\\x1b[2J\\x1b]0;title\\x07"
        );
        assert_eq!(escape("\x01\x1f\x7f"), "\\x01\\x1f\\x7f");
        // C1 controls (CSI is U+009B), next to ordinary Latin-1.
        assert_eq!(escape("\u{9b}31m\u{85}é"), "\\u{9b}31m\\u{85}é");
        // Bidirectional overrides and Unicode line separators.
        assert_eq!(
            escape("abc\u{202e}fed\u{2066}x\u{2028}y"),
            "abc\\u{202e}fed\\u{2066}x\\u{2028}y"
        );
        // Every C0 and C1 control, and DEL.
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let e = escape(&c.to_string()).into_owned();
            assert!(
                e.starts_with('\\') && !e.chars().any(char::is_control),
                "{c:?}: {e}"
            );
        }
    }

    #[test]
    fn escaping_is_idempotent_and_display_agrees() {
        for s in ["x\ry", "\x1b[0m", "\u{9b}", "a\\rb", "plain"] {
            let once = escape(s).into_owned();
            assert_eq!(escape(&once), once, "{s:?}");
            assert_eq!(Escaped(s).to_string(), once, "{s:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(escape_bytes(b"203.0.113.\xff\r"), "203.0.113.\u{fffd}\\r");
        assert_eq!(escape_bytes(b"\xc3"), "\u{fffd}");
        assert_eq!(escape_bytes(b"ok"), "ok");
    }

    #[test]
    fn json_output_is_terminal_safe_and_the_same_value() {
        let v = serde_json::json!({"text": "a\r\x1b[1m\u{9b}\u{7f}\u{202e}b"});
        let s = serde_json::to_string(&v).unwrap();
        assert!(s.contains('\u{9b}'), "serde_json leaves C1 raw: {s}");
        let safe = json(s);
        assert!(!safe.chars().any(unsafe_char), "{safe}");
        assert_eq!(safe, r#"{"text":"a\r\u001b[1m\u009b\u007f\u202eb"}"#);
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
        // Pretty-printed: the layout's newlines stay.
        let pretty = json(serde_json::to_string_pretty(&v).unwrap());
        assert!(pretty.contains("{\n  \"text\""), "{pretty}");
        assert!(!pretty.contains('\u{9b}'), "{pretty}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&pretty).unwrap(),
            v
        );
    }

    #[test]
    fn shell_words_survive_sh() {
        for w in ["eth1", "/sys/fs/bpf/ef x", "it's", "", "a;b", "$HOME", "-x"] {
            let quoted = super::shell_word(w);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {quoted}"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), w, "{quoted}");
        }
    }
}
