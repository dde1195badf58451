//! Corpus BLEU exactly as `sacrebleu.corpus_bleu` (sacrebleu 2.x) computes
//! it: its `13a`, `char` and `none` tokenizers, clipped n-gram counts
//! against the references, the closest reference length for the brevity
//! penalty, and its smoothing methods (default `exp`, mteval-v13a's).

use std::collections::HashMap;

use super::{check_multi, check_pairs, py_rstrip, py_split};
use crate::Result;

/// How BLEU splits a line into tokens (sacrebleu's `tokenize=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BleuTokenizer {
    /// `13a`, sacrebleu's default: mteval-v13a's rules for Western
    /// languages (punctuation split off, but not the period or comma of a
    /// number like `1,000.5`, nor the dash of `2-3` before a letter).
    #[default]
    #[serde(rename = "13a")]
    V13a,
    /// `char`: every non-space character is a token, for languages written
    /// without spaces (Japanese, Chinese).
    Char,
    /// `none`: split on whitespace only.
    None,
}

/// sacrebleu's `smooth_method` (and `smooth_value`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub enum Smoothing {
    /// `none`.
    None,
    /// `floor`: a zero precision becomes `value / total` (sacrebleu's
    /// default value 0.1).
    Floor(f64),
    /// `add-k`: add `value` to matches and totals of orders 2 and up
    /// (sacrebleu's default value 1).
    AddK(f64),
    /// `exp`, the default: the n-th zero precision becomes
    /// `1 / (2^n · total)`, as mteval-v13a does.
    #[default]
    Exp,
}

/// The arguments of `sacrebleu.BLEU(...)` this implementation supports.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BleuOptions {
    pub tokenize: BleuTokenizer,
    /// Lowercase hypotheses and references first (`lowercase=True`).
    pub lowercase: bool,
    pub smoothing: Smoothing,
    /// Highest n-gram order, 4 by default.
    pub max_ngram_order: usize,
    /// Average only over the orders that have n-grams (`effective_order=True`,
    /// what `sentence_bleu` uses).
    pub effective_order: bool,
}

impl Default for BleuOptions {
    fn default() -> Self {
        BleuOptions {
            tokenize: BleuTokenizer::V13a,
            lowercase: false,
            smoothing: Smoothing::Exp,
            max_ngram_order: 4,
            effective_order: false,
        }
    }
}

impl BleuOptions {
    /// The defaults with another tokenizer.
    pub fn with_tokenizer(tokenize: BleuTokenizer) -> Self {
        BleuOptions {
            tokenize,
            ..Self::default()
        }
    }
}

/// A corpus BLEU score and its sufficient statistics, as sacrebleu's
/// `BLEUScore`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BleuScore {
    /// BLEU, 0–100.
    pub score: f64,
    /// Clipped matching n-grams of each order (1-grams first).
    pub counts: Vec<u64>,
    /// Hypothesis n-grams of each order.
    pub totals: Vec<u64>,
    /// Smoothed precisions of each order, 0–100.
    pub precisions: Vec<f64>,
    /// Brevity penalty.
    pub bp: f64,
    /// Hypothesis tokens in the corpus.
    pub sys_len: u64,
    /// Reference tokens (the closest reference's, per segment).
    pub ref_len: u64,
}

/// Corpus BLEU of `predictions` against one reference each, as
/// `sacrebleu.corpus_bleu(predictions, [references], ...)`.
pub fn corpus_bleu<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[R],
    options: &BleuOptions,
) -> Result<BleuScore> {
    check_pairs("BLEU", predictions.len(), references.len())?;
    let refs: Vec<[&str; 1]> = references.iter().map(|r| [r.as_ref()]).collect();
    bleu_impl(predictions, &refs, options)
}

/// Corpus BLEU with several references per prediction (`references[i]` are
/// prediction `i`'s): n-gram counts clip to the most any reference has, and
/// the brevity penalty uses the reference length closest to the
/// hypothesis's (the shorter on a tie).
pub fn corpus_bleu_multi<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[Vec<R>],
    options: &BleuOptions,
) -> Result<BleuScore> {
    check_pairs("BLEU", predictions.len(), references.len())?;
    check_multi("BLEU", references)?;
    bleu_impl(predictions, references, options)
}

/// One line as BLEU sees it: sacrebleu's preprocessing (optional
/// lowercasing, `rstrip`, the tokenizer), split into tokens.
pub fn tokenize_bleu(line: &str, options: &BleuOptions) -> Vec<String> {
    let line = preprocess(line, options);
    py_split(&line).map(str::to_owned).collect()
}

fn preprocess(line: &str, options: &BleuOptions) -> String {
    let lowered;
    let line = if options.lowercase {
        lowered = line.to_lowercase();
        lowered.as_str()
    } else {
        line
    };
    let line = py_rstrip(line);
    match options.tokenize {
        BleuTokenizer::V13a => tokenize_13a(line),
        // `" ".join(line)` then split: every non-space character.
        BleuTokenizer::Char => {
            let mut out = String::with_capacity(line.len() * 2);
            for c in line.chars() {
                out.push(c);
                out.push(' ');
            }
            out
        }
        BleuTokenizer::None => line.to_owned(),
    }
}

/// sacrebleu's `Tokenizer13a` followed by `TokenizerRegexp` (the result is
/// split on whitespace afterwards, so runs of spaces do not matter).
fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> " \1 "
    let line = format!(" {line} ");
    let mut spaced = String::with_capacity(line.len() * 2);
    for c in line.chars() {
        if is_13a_symbol(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> "\1 \2 "
    let s = sub_pair(
        &spaced,
        |a| !digit(a),
        period_comma,
        |o, a, b| {
            o.push(a);
            o.push(' ');
            o.push(b);
            o.push(' ');
        },
    );
    // ([\.,])([^0-9]) -> " \1 \2"
    let s = sub_pair(
        &s,
        period_comma,
        |b| !digit(b),
        |o, a, b| {
            o.push(' ');
            o.push(a);
            o.push(' ');
            o.push(b);
        },
    );
    // ([0-9])(-) -> "\1 \2 "
    sub_pair(
        &s,
        digit,
        |b| b == '-',
        |o, a, b| {
            o.push(a);
            o.push(' ');
            o.push(b);
            o.push(' ');
        },
    )
}

/// The characters of 13a's first rule: `{|}~ [\]^_` space !"#$%& ()*+
/// :;<=>?@ /` (all ASCII punctuation but `'`, `,`, `-` and `.`).
fn is_13a_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Python's `re.sub` of a two-character pattern `(A)(B)`: scans left to
/// right, replacing each non-overlapping match.
fn sub_pair(
    s: &str,
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    emit: impl Fn(&mut String, char, char),
) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            emit(&mut out, chars[i], chars[i + 1]);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn count_ngrams<'a>(tokens: &'a [&'a str], max_order: usize) -> HashMap<&'a [&'a str], u64> {
    let mut counts = HashMap::new();
    for n in 1..=max_order {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

fn bleu_impl<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[impl AsRef<[R]>],
    options: &BleuOptions,
) -> Result<BleuScore> {
    let order = options.max_ngram_order;
    if order == 0 {
        return Err(crate::Error::Invalid(
            "BLEU: max_ngram_order must be at least 1".into(),
        ));
    }
    let mut sys_len = 0u64;
    let mut ref_len = 0u64;
    let mut correct = vec![0u64; order];
    let mut total = vec![0u64; order];
    for (hyp, refs) in predictions.iter().zip(references) {
        let ref_lines: Vec<String> = refs
            .as_ref()
            .iter()
            .map(|r| preprocess(r.as_ref(), options))
            .collect();
        let ref_tokens: Vec<Vec<&str>> = ref_lines.iter().map(|l| py_split(l).collect()).collect();
        let mut ref_ngrams: HashMap<&[&str], u64> = HashMap::new();
        for tokens in &ref_tokens {
            for (gram, count) in count_ngrams(tokens, order) {
                let slot = ref_ngrams.entry(gram).or_insert(0);
                *slot = (*slot).max(count);
            }
        }
        let hyp_line = preprocess(hyp.as_ref(), options);
        let hyp_tokens: Vec<&str> = py_split(&hyp_line).collect();
        let hyp_len = hyp_tokens.len();
        // The closest reference length, the shorter on a tie.
        let mut closest: Option<(usize, usize)> = None;
        for tokens in &ref_tokens {
            let len = tokens.len();
            let diff = len.abs_diff(hyp_len);
            closest = match closest {
                Some((d, l)) if d < diff || (d == diff && l <= len) => Some((d, l)),
                _ => Some((diff, len)),
            };
        }
        sys_len += hyp_len as u64;
        ref_len += closest.map_or(0, |(_, l)| l) as u64;
        for (gram, count) in count_ngrams(&hyp_tokens, order) {
            let n = gram.len() - 1;
            total[n] += count;
            if let Some(&r) = ref_ngrams.get(gram) {
                correct[n] += count.min(r);
            }
        }
    }
    Ok(compute_bleu(correct, total, sys_len, ref_len, options))
}

/// sacrebleu's `my_log`: `log`, with log(0) floored to -9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// sacrebleu's `BLEU.compute_bleu`.
fn compute_bleu(
    counts: Vec<u64>,
    totals: Vec<u64>,
    sys_len: u64,
    ref_len: u64,
    options: &BleuOptions,
) -> BleuScore {
    let order = options.max_ngram_order;
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = vec![0.0; order];
    let mut score = BleuScore {
        score: 0.0,
        counts: counts.clone(),
        totals: totals.clone(),
        precisions: precisions.clone(),
        bp,
        sys_len,
        ref_len,
    };
    if counts.iter().all(|&c| c == 0) {
        return score;
    }
    let mut correct: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let mut total: Vec<f64> = totals.iter().map(|&t| t as f64).collect();
    let mut smooth_mteval = 1.0;
    let mut eff_order = order;
    for n in 1..=order {
        if let Smoothing::AddK(k) = options.smoothing {
            if n > 1 {
                correct[n - 1] += k;
                total[n - 1] += k;
            }
        }
        if total[n - 1] == 0.0 {
            break;
        }
        if options.effective_order {
            eff_order = n;
        }
        if correct[n - 1] == 0.0 {
            match options.smoothing {
                Smoothing::Exp => {
                    smooth_mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1]);
                }
                Smoothing::Floor(v) => precisions[n - 1] = 100.0 * v / total[n - 1],
                Smoothing::None | Smoothing::AddK(_) => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1];
        }
    }
    let log_sum: f64 = precisions[..eff_order].iter().map(|&p| my_log(p)).sum();
    score.score = bp * (log_sum / eff_order as f64).exp();
    score.precisions = precisions;
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> String {
        tokenize_bleu(s, &BleuOptions::default()).join(" ")
    }

    #[test]
    fn thirteen_a_keeps_numbers_together() {
        assert_eq!(
            tok("It costs $1,000.50, or 2-3 euros."),
            "It costs $ 1,000.50 , or 2 - 3 euros ."
        );
        assert_eq!(
            tok("U.S. &amp; e-mail &quot;x&quot;"),
            "U . S . & e-mail \" x \""
        );
        assert_eq!(tok("a.b,c"), "a . b , c");
        assert_eq!(tok("<skipped>pre-\nfix"), "prefix");
    }

    #[test]
    fn perfect_and_empty() {
        let s = corpus_bleu(
            &["the cat sat on the mat"],
            &["the cat sat on the mat"],
            &BleuOptions::default(),
        )
        .unwrap();
        assert!((s.score - 100.0).abs() < 1e-9);
        let s = corpus_bleu(&[""], &["the cat"], &BleuOptions::default()).unwrap();
        assert_eq!(s.score, 0.0);
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        let err = corpus_bleu(&["a", "b"], &["a"], &BleuOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("2 predictions but 1 references"),
            "{err}"
        );
        let empty: [&str; 0] = [];
        assert!(corpus_bleu(&empty, &empty, &BleuOptions::default()).is_err());
        let refs: [Vec<&str>; 1] = [vec![]];
        assert!(corpus_bleu_multi(&["a"], &refs, &BleuOptions::default()).is_err());
    }
}
