//! Operating-system error texts in a person's words: Rust's `io::Error` prints
//! "No such file or directory (os error 2)", which names an errno a person cannot act on.
//! The binary passes every error line through [`plain`] before printing it.

/// The OS texts rewritten, and their plain words (Linux and macOS spellings).
const PLAIN: &[(&str, &str)] = &[
    ("No such file or directory", "no such file or folder"),
    ("Permission denied", "permission denied"),
    ("Is a directory", "it is a folder, not a file"),
    ("Not a directory", "a part of the path is not a folder"),
    ("File exists", "it already exists"),
    ("No space left on device", "the disk is full"),
    ("Read-only file system", "the disk is read-only"),
    (
        "Address already in use",
        "the port is in use by another program",
    ),
    ("Address in use", "the port is in use by another program"),
    ("Connection refused", "nothing is listening there"),
    ("Network is unreachable", "that network cannot be reached"),
];

/// `text` with each "OS TEXT (os error N)" replaced by plain words (unknown texts keep their
/// words and lose the errno suffix).
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(" (os error ") {
        let Some(close) = rest[i..].find(')') else {
            break;
        };
        let before = &rest[..i];
        let swapped = PLAIN
            .iter()
            .find(|(os, _)| before.ends_with(os))
            .map(|(os, words)| format!("{}{words}", &before[..before.len() - os.len()]));
        out.push_str(swapped.as_deref().unwrap_or(before));
        rest = &rest[i + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn os_errors_read_as_words() {
        assert_eq!(
            plain("cannot open /x.csv: No such file or directory (os error 2)"),
            "cannot open /x.csv: no such file or folder"
        );
        assert_eq!(
            plain("a: Permission denied (os error 13); b: Weird thing (os error 99)"),
            "a: permission denied; b: Weird thing"
        );
        assert_eq!(plain("nothing to change"), "nothing to change");
    }
}
