//! The built-in demo data: the Tanaka corpus of parallel Japanese–English
//! sentences (CC BY 2.0 FR), from the `tanaka` crate's checked subset, so
//! that `t5-tui` trains out of the box with no download.

use std::sync::OnceLock;

use super::source::Record;

/// One sentence pair of the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentencePair {
    pub english: &'static str,
    pub japanese: &'static str,
}

/// The sentence pairs, parsed once from the corpus text.
///
/// Only the `A:` lines are read (`Japanese<TAB>English#ID=…`); the `B:`
/// lines of word annotations are not needed here, and skipping them keeps
/// start-up fast.
pub fn pairs() -> &'static [SentencePair] {
    static PAIRS: OnceLock<Vec<SentencePair>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        tanaka::data::EXAMPLES_SUBSET
            .lines()
            .filter_map(|l| l.strip_prefix("A: "))
            .filter_map(|l| {
                let (ja, en) = l.split_once('\t')?;
                let en = en.split("#ID=").next().unwrap_or(en).trim();
                let ja = ja.trim();
                (!ja.is_empty() && !en.is_empty()).then_some(SentencePair {
                    english: en,
                    japanese: ja,
                })
            })
            .collect()
    })
}

/// Pre-training text: every English and every Japanese sentence, each a
/// document.
pub fn pretraining_records() -> impl Iterator<Item = Record> {
    pairs()
        .iter()
        .flat_map(|p| [Record::text(p.english), Record::text(p.japanese)])
}

/// The translation task: English input, Japanese target (the task prefix
/// is added by the text-to-text objective).
pub fn translation_records() -> impl Iterator<Item = Record> {
    pairs().iter().map(|p| Record::pair(p.english, p.japanese))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_there_and_parsed() {
        let p = pairs();
        assert!(p.len() > 10_000, "only {} pairs", p.len());
        for pair in p.iter().take(100) {
            assert!(!pair.english.contains("#ID="));
            assert!(pair.japanese.chars().any(|c| c as u32 > 0x3000));
            assert!(pair.english.is_ascii() || pair.english.chars().all(|c| !c.is_control()));
        }
        assert_eq!(pretraining_records().count(), 2 * p.len());
    }
}
