//! What the master notes about its own process image before it confines
//! itself, for its children's last set-up steps.
//!
//! A child leaves behind two things it inherited from the master: the
//! system heap (`crate::arena::drop_system_heap`) and the stack it was
//! forked on, which also holds the command line `ps` shows
//! (`crate::child::stack`). Both need addresses only procfs gives, and
//! procfs may be out of reach once the master is confined (chroot) and is
//! out of reach in every child (Landlock). So the master reads them once,
//! before its first fork, into a static that children inherit: written
//! before any fork, it costs no child a private page.

use std::sync::OnceLock;

/// Addresses of the master's process image (`/proc/self/stat` and the
/// `[stack]` line of `/proc/self/maps`). The stat fields are the ones
/// `prctl(PR_SET_MM, PR_SET_MM_MAP)` must be given back unchanged (the
/// child replaces the argv and environment ranges, so those are not read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    /// The stack mapping, `[stack_lo, stack_hi)`, as it was when noted.
    pub stack_lo: u64,
    pub stack_hi: u64,
}

static NOTED: OnceLock<Image> = OnceLock::new();

/// The master, before it confines itself and before its first fork. Does
/// nothing if procfs cannot be read: children then keep the heap and the
/// stack they inherit.
pub fn note() {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let maps = std::fs::read_to_string("/proc/self/maps").ok();
    if let Some(image) = stat.zip(maps).and_then(|(s, m)| parse(&s, &m)) {
        let _ = NOTED.set(image);
    }
}

/// What [`note`] found, if anything.
pub fn noted() -> Option<&'static Image> {
    NOTED.get()
}

/// Parses `/proc/self/stat` and `/proc/self/maps` (fields as numbered in
/// proc(5)).
fn parse(stat: &str, maps: &str) -> Option<Image> {
    // Field 3 onwards follow the command name's closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let stack = maps.lines().find(|l| l.ends_with("[stack]"))?;
    let (lo, hi) = stack.split_whitespace().next()?.split_once('-')?;
    let image = Image {
        start_code: field(26)?,
        end_code: field(27)?,
        start_stack: field(28)?,
        start_data: field(45)?,
        end_data: field(46)?,
        start_brk: field(47)?,
        stack_lo: u64::from_str_radix(lo, 16).ok()?,
        stack_hi: u64::from_str_radix(hi, 16).ok()?,
    };
    // Zeros mean procfs hid them (no ptrace access to ourselves).
    (image.start_code != 0 && image.start_brk != 0 && image.stack_lo < image.stack_hi)
        .then_some(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let i = parse(&stat, &maps).expect("parsed");
        assert!(i.start_code < i.end_code);
        assert!(i.start_data <= i.end_data && i.start_brk >= i.end_data);
        // argc and argv's pointers sit on the stack.
        assert!(i.stack_lo <= i.start_stack && i.start_stack < i.stack_hi);
    }

    #[test]
    fn names_in_parentheses_do_not_shift_fields() {
        let maps = "7ffc0000-7ffd0000 rw-p 00000000 00:00 0    [stack]\n";
        let mut stat = String::from("1 (a) b)) S");
        for n in 4..=52 {
            stat.push_str(&format!(" {n}"));
        }
        let i = parse(&stat, maps).unwrap();
        assert_eq!((i.start_code, i.start_stack, i.start_brk), (26, 28, 47));
        assert_eq!((i.stack_lo, i.stack_hi), (0x7ffc0000, 0x7ffd0000));
        assert!(parse(&stat, "").is_none(), "no stack line");
    }
}
