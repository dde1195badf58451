//! The Porter stemmer as NLTK's `PorterStemmer()` implements it in its
//! default `NLTK_EXTENSIONS` mode, the stemmer `rouge-score` uses with
//! `use_stemmer=True`. It is neither Porter's 1980 paper nor Snowball's
//! English (Porter2) stemmer that the usual crates implement: it adds a
//! table of irregular forms and changed rules for `-ies`, `-ied`, `-y`,
//! `-alli`, `-fulli` and `-logi`.

/// Words the NLTK extensions map directly (`PorterStemmer.pool`).
const IRREGULAR: &[(&str, &str)] = &[
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

type Word = Vec<char>;

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// For each letter, whether it is a consonant: not a vowel, and a `y` only
/// when it starts the word or follows a vowel.
fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn is_consonant(w: &[char], i: usize) -> bool {
    consonant_flags(&w[..=i])[i]
}

/// Porter's m: the number of vowel-consonant sequences.
fn measure(w: &[char]) -> usize {
    consonant_flags(w)
        .windows(2)
        .filter(|p| !p[0] && p[1])
        .count()
}

fn contains_vowel(w: &[char]) -> bool {
    consonant_flags(w).iter().any(|&c| !c)
}

fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// Porter's *o, plus NLTK's two-letter vowel-consonant case.
fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let n = suffix.chars().count();
    w.len() >= n && w[w.len() - n..].iter().copied().eq(suffix.chars())
}

/// `w` without its last `suffix.len()` letters (the suffix is ASCII).
fn strip<'a>(w: &'a [char], suffix: &str) -> &'a [char] {
    &w[..w.len() - suffix.len()]
}

fn join(stem: &[char], tail: &str) -> Word {
    stem.iter().copied().chain(tail.chars()).collect()
}

/// One rule: replace `suffix` by `replacement` when `condition(stem)` holds.
type Rule<'a> = (&'a str, &'a str, &'a dyn Fn(&[char]) -> bool);

/// NLTK's `_apply_rule_list`: the first rule whose suffix matches decides;
/// when its condition fails the word stays as it is.
fn apply_rules(w: &[char], rules: &[Rule]) -> Word {
    for &(suffix, replacement, condition) in rules {
        if ends_with(w, suffix) {
            let stem = strip(w, suffix);
            return if condition(stem) {
                join(stem, replacement)
            } else {
                w.to_vec()
            };
        }
    }
    w.to_vec()
}

fn always(_: &[char]) -> bool {
    true
}

fn m_gt_0(s: &[char]) -> bool {
    measure(s) > 0
}

fn m_gt_1(s: &[char]) -> bool {
    measure(s) > 1
}

fn step1a(w: &[char]) -> Word {
    if ends_with(w, "ies") && w.len() == 4 {
        return join(strip(w, "ies"), "ie");
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", &always),
            ("ies", "i", &always),
            ("ss", "ss", &always),
            ("s", "", &always),
        ],
    )
}

fn step1b(w: &[char]) -> Word {
    if ends_with(w, "ied") {
        let tail = if w.len() == 4 { "ie" } else { "i" };
        return join(strip(w, "ied"), tail);
    }
    if ends_with(w, "eed") {
        let stem = strip(w, "eed");
        return if measure(stem) > 0 {
            join(stem, "ee")
        } else {
            w.to_vec()
        };
    }
    let mut stem = None;
    for suffix in ["ed", "ing"] {
        if ends_with(w, suffix) && contains_vowel(strip(w, suffix)) {
            stem = Some(strip(w, suffix));
            break;
        }
    }
    let Some(stem) = stem else {
        return w.to_vec();
    };
    for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if ends_with(stem, suffix) {
            return join(strip(stem, suffix), replacement);
        }
    }
    if ends_double_consonant(stem) {
        let last = stem[stem.len() - 1];
        return if matches!(last, 'l' | 's' | 'z') {
            stem.to_vec()
        } else {
            stem[..stem.len() - 1].to_vec()
        };
    }
    if measure(stem) == 1 && ends_cvc(stem) {
        join(stem, "e")
    } else {
        stem.to_vec()
    }
}

fn step1c(w: &[char]) -> Word {
    let cond = |s: &[char]| s.len() > 1 && is_consonant(s, s.len() - 1);
    apply_rules(w, &[("y", "i", &cond)])
}

fn step2(w: &[char]) -> Word {
    if ends_with(w, "alli") && measure(strip(w, "alli")) > 0 {
        return step2(&join(strip(w, "alli"), "al"));
    }
    // `logi -> log` when the word without `ogi` has m > 0.
    let logi = |_: &[char]| measure(&w[..w.len() - 3]) > 0;
    apply_rules(
        w,
        &[
            ("ational", "ate", &m_gt_0),
            ("tional", "tion", &m_gt_0),
            ("enci", "ence", &m_gt_0),
            ("anci", "ance", &m_gt_0),
            ("izer", "ize", &m_gt_0),
            ("bli", "ble", &m_gt_0),
            ("alli", "al", &m_gt_0),
            ("entli", "ent", &m_gt_0),
            ("eli", "e", &m_gt_0),
            ("ousli", "ous", &m_gt_0),
            ("ization", "ize", &m_gt_0),
            ("ation", "ate", &m_gt_0),
            ("ator", "ate", &m_gt_0),
            ("alism", "al", &m_gt_0),
            ("iveness", "ive", &m_gt_0),
            ("fulness", "ful", &m_gt_0),
            ("ousness", "ous", &m_gt_0),
            ("aliti", "al", &m_gt_0),
            ("iviti", "ive", &m_gt_0),
            ("biliti", "ble", &m_gt_0),
            ("fulli", "ful", &m_gt_0),
            ("logi", "log", &logi),
        ],
    )
}

fn step3(w: &[char]) -> Word {
    apply_rules(
        w,
        &[
            ("icate", "ic", &m_gt_0),
            ("ative", "", &m_gt_0),
            ("alize", "al", &m_gt_0),
            ("iciti", "ic", &m_gt_0),
            ("ical", "ic", &m_gt_0),
            ("ful", "", &m_gt_0),
            ("ness", "", &m_gt_0),
        ],
    )
}

fn step4(w: &[char]) -> Word {
    let ion = |s: &[char]| measure(s) > 1 && matches!(s.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            ("al", "", &m_gt_1),
            ("ance", "", &m_gt_1),
            ("ence", "", &m_gt_1),
            ("er", "", &m_gt_1),
            ("ic", "", &m_gt_1),
            ("able", "", &m_gt_1),
            ("ible", "", &m_gt_1),
            ("ant", "", &m_gt_1),
            ("ement", "", &m_gt_1),
            ("ment", "", &m_gt_1),
            ("ent", "", &m_gt_1),
            ("ion", "", &ion),
            ("ou", "", &m_gt_1),
            ("ism", "", &m_gt_1),
            ("ate", "", &m_gt_1),
            ("iti", "", &m_gt_1),
            ("ous", "", &m_gt_1),
            ("ive", "", &m_gt_1),
            ("ize", "", &m_gt_1),
        ],
    )
}

fn step5a(w: &[char]) -> Word {
    if ends_with(w, "e") {
        let stem = strip(w, "e");
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w.to_vec()
}

fn step5b(w: &[char]) -> Word {
    let cond = |_: &[char]| measure(&w[..w.len() - 1]) > 1;
    apply_rules(w, &[("ll", "l", &cond)])
}

/// NLTK's `PorterStemmer().stem(word)`: lowercases, then stems.
pub fn porter_stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some(&(_, stem)) = IRREGULAR.iter().find(|(w, _)| *w == lower) {
        return stem.to_owned();
    }
    if word.chars().count() <= 2 {
        return lower;
    }
    let w: Word = lower.chars().collect();
    let w = step1a(&w);
    let w = step1b(&w);
    let w = step1c(&w);
    let w = step2(&w);
    let w = step3(&w);
    let w = step4(&w);
    let w = step5a(&w);
    let w = step5b(&w);
    w.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::porter_stem;

    #[test]
    fn examples_from_the_paper_and_nltk() {
        for (word, stem) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("agreed", "agre"),
            ("hopping", "hop"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("controlled", "control"),
            ("dying", "die"),
            ("running", "run"),
        ] {
            assert_eq!(porter_stem(word), stem, "{word}");
        }
    }
}
