//! Canonical JSON: compact, with object keys sorted at every level (as `gen.py` computes it
//! with Python's `sort_keys=True`).
//!
//! This is a format other parties recompute byte for byte: record digests (`gen.py --digest`,
//! `verify`'s buckets) and the signed bodies of revocations hash or sign exactly this text, so
//! changing it breaks digests and every existing signature. Pure: no I/O.
//!
//! | value  | text                                                      |
//! |--------|-----------------------------------------------------------|
//! | object | `{` `"key":value` sorted by key (byte order), `,`-joined `}` |
//! | array  | `[` values in order, `,`-joined `]`                         |
//! | other  | serde_json's compact form (strings keep non-ASCII as UTF-8) |

use serde_json::Value;

/// Compact JSON with object keys sorted at every level (Python's `sort_keys=True`).
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Appends the canonical text of `v` to `out` (for callers that hash or join several values
/// without a `String` each).
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            // Already in order unless serde_json keeps insertion order (`preserve_order`).
            if !keys.is_sorted() {
                keys.sort();
            }
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_key(k, out);
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).expect("writing to a Vec cannot fail"),
    }
}

/// Appends `"key":` (the key as a JSON string) to `out`.
pub fn write_key(k: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, k).expect("writing to a Vec cannot fail");
    out.push(b':');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_escapes_keys_and_strings_like_serde_json() {
        // What the text was built from before it was written into one buffer: serde_json's
        // `to_string` of each key and scalar.
        fn reference(v: &Value) -> String {
            match v {
                Value::Object(m) => {
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    let parts: Vec<String> = keys
                        .into_iter()
                        .map(|k| format!("{}:{}", Value::String(k.clone()), reference(&m[k])))
                        .collect();
                    format!("{{{}}}", parts.join(","))
                }
                Value::Array(a) => {
                    let parts: Vec<String> = a.iter().map(reference).collect();
                    format!("[{}]", parts.join(","))
                }
                other => other.to_string(),
            }
        }
        let v = json!({
            "q\"\\\n\u{1}é": "a\"b\\c\n\t\u{7f}\u{1f}ü/",
            "n": [1.5, -0.0, 1e300, 12345678901234567890u64, -7, null, true, {}, []],
            "": {"b": {"d": 1, "c": 2}, "a": "x"},
        });
        assert_eq!(canonical_json(&v), reference(&v));
        assert!(canonical_json(&v).starts_with(r#"{"":{"a":"x","b":{"c":2,"d":1}},"n":[1.5,"#));
    }

    #[test]
    fn canonical_json_sorts_keys_and_keeps_unicode() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": "Müller"}]}, "c": 1.5});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"z":[1,{"x":"Müller","y":2}]},"b":1,"c":1.5}"#
        );
    }
}
