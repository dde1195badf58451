//! Cleaning records: Unicode normalisation, control characters, whitespace,
//! length limits, and duplicate removal, each rule counting what it did.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use super::source::Record;

fn default_true() -> bool {
    true
}
fn default_min_chars() -> usize {
    1
}
fn default_max_chars() -> usize {
    100_000
}

/// The cleaning rules of an experiment's `[data]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanOptions {
    /// Unicode NFKC normalisation (full-width forms, ligatures, …).
    #[serde(default = "default_true")]
    pub nfkc: bool,
    /// Drop a record (either side of a pair) shorter than this, in characters.
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    /// Drop a record (either side of a pair) longer than this, in characters.
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    /// Drop exact duplicates (after cleaning).
    #[serde(default = "default_true")]
    pub dedup: bool,
    /// Drop near duplicates: records equal once case, punctuation, digits
    /// and spacing are ignored.
    #[serde(default)]
    pub near_dedup: bool,
}

impl Default for CleanOptions {
    fn default() -> Self {
        Self {
            nfkc: true,
            min_chars: default_min_chars(),
            max_chars: default_max_chars(),
            dedup: true,
            near_dedup: false,
        }
    }
}

/// How many records each rule touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanReport {
    pub records_in: u64,
    pub records_out: u64,
    /// Records whose text NFKC changed (kept).
    pub nfkc_changed: u64,
    /// Records that had control characters removed (kept).
    pub control_chars_removed: u64,
    /// Records whose whitespace was collapsed (kept).
    pub whitespace_collapsed: u64,
    pub dropped_empty: u64,
    pub dropped_too_short: u64,
    pub dropped_too_long: u64,
    pub dropped_duplicate: u64,
    pub dropped_near_duplicate: u64,
}

impl CleanReport {
    /// One line a rule, for the command line.
    pub fn lines(&self) -> Vec<(String, u64)> {
        vec![
            ("records read".into(), self.records_in),
            ("NFKC changed (kept)".into(), self.nfkc_changed),
            (
                "control characters removed (kept)".into(),
                self.control_chars_removed,
            ),
            (
                "whitespace collapsed (kept)".into(),
                self.whitespace_collapsed,
            ),
            ("dropped: empty".into(), self.dropped_empty),
            ("dropped: too short".into(), self.dropped_too_short),
            ("dropped: too long".into(), self.dropped_too_long),
            ("dropped: exact duplicate".into(), self.dropped_duplicate),
            (
                "dropped: near duplicate".into(),
                self.dropped_near_duplicate,
            ),
            ("records kept".into(), self.records_out),
        ]
    }
}

/// Applies the rules record by record. Duplicates are found by 64-bit
/// hashes, so memory grows by 8 bytes per kept record, not by its text.
pub struct Cleaner {
    opts: CleanOptions,
    seen: HashSet<u64>,
    near_seen: HashSet<u64>,
    pub report: CleanReport,
}

impl Cleaner {
    pub fn new(opts: CleanOptions) -> Self {
        Self {
            opts,
            seen: HashSet::new(),
            near_seen: HashSet::new(),
            report: CleanReport::default(),
        }
    }

    /// Cleans one string; the flags say which rules changed it.
    fn clean_text(&self, s: &str, flags: &mut [bool; 3]) -> String {
        let normalized: String = if self.opts.nfkc {
            let n: String = s.nfkc().collect();
            if n != s {
                flags[0] = true;
            }
            n
        } else {
            s.to_string()
        };
        // Control characters go; tabs and newlines are whitespace and
        // collapse with the rest below.
        let mut no_control = String::with_capacity(normalized.len());
        for c in normalized.chars() {
            if c.is_control() && !c.is_whitespace() {
                flags[1] = true;
            } else {
                no_control.push(c);
            }
        }
        let mut out = String::with_capacity(no_control.len());
        for word in no_control.split_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
        if out != no_control {
            flags[2] = true;
        }
        out
    }

    /// The cleaned record, or `None` when a rule drops it.
    pub fn clean(&mut self, record: Record) -> Option<Record> {
        self.report.records_in += 1;
        let mut flags = [false; 3];
        let cleaned = match &record {
            Record::Text { text } => Record::text(self.clean_text(text, &mut flags)),
            Record::Pair { input, target } => Record::pair(
                self.clean_text(input, &mut flags),
                self.clean_text(target, &mut flags),
            ),
        };
        self.report.nfkc_changed += flags[0] as u64;
        self.report.control_chars_removed += flags[1] as u64;
        self.report.whitespace_collapsed += flags[2] as u64;

        let sides: Vec<&str> = match &cleaned {
            Record::Text { text } => vec![text],
            Record::Pair { input, target } => vec![input, target],
        };
        if sides.iter().any(|s| s.is_empty()) {
            self.report.dropped_empty += 1;
            return None;
        }
        let lens: Vec<usize> = sides.iter().map(|s| s.chars().count()).collect();
        if lens.iter().any(|&l| l < self.opts.min_chars) {
            self.report.dropped_too_short += 1;
            return None;
        }
        if lens.iter().any(|&l| l > self.opts.max_chars) {
            self.report.dropped_too_long += 1;
            return None;
        }
        if self.opts.dedup && !self.seen.insert(hash_of(&cleaned)) {
            self.report.dropped_duplicate += 1;
            return None;
        }
        if self.opts.near_dedup {
            let key: Vec<String> = sides.iter().map(|s| near_key(s)).collect();
            if !self.near_seen.insert(hash_of(&key)) {
                self.report.dropped_near_duplicate += 1;
                return None;
            }
        }
        self.report.records_out += 1;
        Some(cleaned)
    }
}

fn hash_of<T: Hash>(value: &T) -> u64 {
    // SipHash with fixed keys: the same text hashes the same in every run.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The text with case, punctuation, symbols, digits and spacing removed:
/// two records with the same key are near duplicates.
fn near_key(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphabetic())
        .flat_map(|c| c.to_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_counts_what_it_did() {
        let mut c = Cleaner::new(CleanOptions {
            min_chars: 3,
            max_chars: 20,
            near_dedup: true,
            ..CleanOptions::default()
        });
        let input = [
            "Ｆｕｌｌ width １２３",            // NFKC -> "Full width 123"
            "tabs\tand  \n spaces",             // whitespace
            "bell\u{7}char",                    // control
            "   ",                              // empty
            "ab",                               // too short
            "this one is far too long to keep", // too long
            "Full width 123",                   // duplicate of the first after NFKC
            "full WIDTH, 456!",                 // near duplicate
            "日本語の文です",                   // kept
        ];
        let kept: Vec<Record> = input
            .iter()
            .filter_map(|s| c.clean(Record::text(*s)))
            .collect();
        assert_eq!(
            kept,
            vec![
                Record::text("Full width 123"),
                Record::text("tabs and spaces"),
                Record::text("bellchar"),
                Record::text("日本語の文です"),
            ]
        );
        let r = &c.report;
        assert_eq!(r.records_in, 9);
        assert_eq!(r.records_out, 4);
        assert_eq!(r.nfkc_changed, 1);
        assert_eq!(r.control_chars_removed, 1);
        assert_eq!(r.whitespace_collapsed, 2); // "tabs…" and "   "
        assert_eq!(r.dropped_empty, 1);
        assert_eq!(r.dropped_too_short, 1);
        assert_eq!(r.dropped_too_long, 1);
        assert_eq!(r.dropped_duplicate, 1);
        assert_eq!(r.dropped_near_duplicate, 1);
    }

    #[test]
    fn pairs_are_cleaned_on_both_sides() {
        let mut c = Cleaner::new(CleanOptions::default());
        assert_eq!(
            c.clean(Record::pair(" a  b ", "ｃ")),
            Some(Record::pair("a b", "c"))
        );
        assert_eq!(c.clean(Record::pair("x", "  ")), None);
        assert_eq!(c.report.dropped_empty, 1);
    }
}
