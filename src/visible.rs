//! Text from callers and from SageMaker (a stop's reason, a step's failure reason, a display
//! name) made visible and harmless before people see it: control characters, bidirectional
//! controls and invisible characters are shown as escapes (`\n`, `\u{1b}`, `\u{202e}`), so a
//! line feed cannot forge a row, a carriage return cannot rewrite one, an escape sequence
//! cannot retitle or clear a terminal, and a right-to-left override cannot make one name read
//! as another. Everything else, accents and scripts included, is left as it is. Used by the
//! command line (every line it prints) and by the console (every caller's text it shows).

use std::borrow::Cow;

/// `text` with every character [`hidden`] replaced by a visible escape: `\n`, `\r`, `\t`,
/// else `\u{hex}` as Rust writes it. Borrowed when there is nothing to escape (the common
/// case); escaping twice changes nothing more.
pub(crate) fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            c if hidden(c) => shown.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

/// A line of JSON with the [`hidden`] characters serde_json leaves as they are (DEL, C1,
/// bidirectional and invisible characters; it escapes C0 itself) written as `\uXXXX` escapes:
/// the same data for a JSON reader, nothing hidden for a terminal. Such characters only occur
/// inside JSON strings, where an escape means the same character.
pub(crate) fn json(line: &str) -> Cow<'_, str> {
    if !line.chars().any(hidden) {
        return Cow::Borrowed(line);
    }
    let mut shown = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if hidden(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                shown.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// Whether `c` changes what a terminal or a reader sees without being seen itself: C0 and C1
/// controls and DEL; bidirectional controls (embeddings, overrides, isolates, marks); and
/// invisible characters (zero-width spaces and joiners, word joiner and invisible operators,
/// the byte order mark, soft hyphen, line and paragraph separators, Hangul fillers, tags).
pub(crate) fn hidden(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00..=0x1f
            | 0x7f..=0x9f
            | 0xad
            | 0x34f
            | 0x61c
            | 0x115f..=0x1160
            | 0x17b4..=0x17b5
            | 0x180b..=0x180f
            | 0x200b..=0x200f
            | 0x2028..=0x202e
            | 0x2060..=0x206f
            | 0x3164
            | 0xfeff
            | 0xffa0
            | 0xfff9..=0xfffb
            | 0xe0000..=0xe007f
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_bidi_and_invisible_characters_are_shown_as_escapes() {
        assert_eq!(
            visible("a\nb\rc\td\u{1b}]0;title\u{7}"),
            "a\\nb\\rc\\td\\u{1b}]0;title\\u{7}"
        );
        assert_eq!(visible("x\u{7f}\u{9b}2J"), "x\\u{7f}\\u{9b}2J");
        assert_eq!(
            visible("admin\u{202e}txt.exe\u{2066}\u{200e}\u{61c}"),
            "admin\\u{202e}txt.exe\\u{2066}\\u{200e}\\u{61c}"
        );
        assert_eq!(
            visible("a\u{200b}b\u{200d}c\u{2060}d\u{feff}e\u{2028}f\u{e0041}"),
            "a\\u{200b}b\\u{200d}c\\u{2060}d\\u{feff}e\\u{2028}f\\u{e0041}"
        );
    }

    #[test]
    fn other_text_is_left_as_it_is_and_escaping_twice_changes_nothing() {
        for text in ["INC-2291 bad data", "Zürich 東京 ملف 👍🏽", "C:\\temp", ""] {
            assert!(matches!(visible(text), Cow::Borrowed(t) if t == text));
        }
        let once = visible("a\n\u{202e}b").into_owned();
        assert_eq!(visible(&once), once);
    }

    #[test]
    fn json_keeps_the_same_data_with_nothing_hidden() {
        let value = serde_json::json!({"reason": "a\u{202e}b\u{85}c\u{200b}\n\u{e0041}"});
        let line = serde_json::to_string(&value).unwrap();
        let shown = json(&line);
        assert_eq!(shown, r#"{"reason":"a\u202eb\u0085c\u200b\n\udb40\udc41"}"#);
        assert!(!shown.chars().any(hidden));
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, value);
    }
}
