//! A shared identity (two data directories using one instance id: a copied data folder, or one
//! credential used on two laptops) told to a person: one line naming the laptop and what
//! happens, and the exact commands that fix it, with the laptop's name filled in.
//!
//! Detection is `sync::receive` and `store/incarnation.rs`; this module only words it, for
//! `status`, `peers`, `doctor` and the console.

use uuid::Uuid;

/// `name` as it can stand in a file name and a shell word (letters, digits, `-`, `_`, `.`).
fn file_word(name: &str) -> String {
    let w: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if w.trim_matches('-').is_empty() {
        "laptop".into()
    } else {
        w
    }
}

/// The commands that give one of the two laptops named `name` an identity of its own: a new
/// credential from the coordinator, then on that laptop a backup restored into a new data
/// directory that joins with it.
pub fn copied_identity_fix(name: &str) -> String {
    let old = file_word(name);
    let new = format!("{old}-2");
    format!(
        "on the coordinator run `fieldsync mesh enroll --name {new} --out {new}.fsmesh`; on one \
         of the two laptops run `fieldsync backup {old}.fsbackup --no-keys && fieldsync \
         --data-dir ~/fieldsync-{new} init --mesh {new}.fsmesh && fieldsync --data-dir \
         ~/fieldsync-{new} restore {old}.fsbackup` and from then on run fieldsync there with \
         --data-dir ~/fieldsync-{new}"
    )
}

/// What is wrong, in one line: a peer `name` (`instance`) whose identity two data directories
/// use, or (`this_laptop`) this laptop, whose identity a peer saw used twice.
pub fn copied_identity_problem(name: &str, instance: Uuid, this_laptop: bool) -> String {
    if this_laptop {
        format!(
            "this laptop's identity ({name}, instance {instance}) is used by another data \
             directory too (a copied data folder or credential): peers refuse both"
        )
    } else {
        format!(
            "{name} (instance {instance}) is used by two data directories at once (a copied \
             data folder or credential): both are refused"
        )
    }
}

/// [`copied_identity_problem`] and its fix as one line.
pub fn copied_identity_line(name: &str, instance: Uuid, this_laptop: bool) -> String {
    format!(
        "{}. Fix: {}",
        copied_identity_problem(name, instance, this_laptop),
        copied_identity_fix(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fix_names_the_laptop_in_every_command() {
        let id = Uuid::nil();
        let line = copied_identity_line("field team 3", id, false);
        assert!(
            line.starts_with("field team 3 (instance 00000000-0000-0000-0000-000000000000) is used by two data directories at once"),
            "{line}"
        );
        assert!(
            line.contains(
                "`fieldsync mesh enroll --name field-team-3-2 --out field-team-3-2.fsmesh`"
            ),
            "{line}"
        );
        assert!(line.contains("init --mesh field-team-3-2.fsmesh"), "{line}");
        assert!(!line.contains('\n'));
        assert!(copied_identity_problem("", id, true).starts_with("this laptop's identity"));
        assert!(copied_identity_fix("").contains("--name laptop-2"));
    }
}
