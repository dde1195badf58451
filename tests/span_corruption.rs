//! T5 span corruption: the length formula against numbers worked by hand
//! from T5's `random_spans_helper`, and properties of the packer:
//! reconstruction, exact lengths, noise statistics, determinism and resume.

use proptest::prelude::*;
use t5_tui::data::span_corruption::{
    compute_input_and_target_lengths, random_spans_noise_mask, t5_sentinel_ids, PackerState,
    SpanCorruption, SpanCorruptionExample, SpanCorruptionPacker,
};
use t5_tui::Error;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const EOS: u32 = 1;
/// Sentinels are ids 999 (`<extra_id_0>`) down to 900; text ids stay below.
const VOCAB: u32 = 1000;
const FIRST_SENTINEL_FREE: u32 = 900;

fn sentinels() -> Vec<u32> {
    t5_sentinel_ids(VOCAB, 100).unwrap()
}

fn objective(input_length: usize, density: f64, mean: f64) -> SpanCorruption {
    SpanCorruption::new(input_length, density, mean, EOS, sentinels()).unwrap()
}

fn is_sentinel(t: u32) -> bool {
    t >= FIRST_SENTINEL_FREE
}

/// Every example of `docs`, pushed one document at a time.
fn pack(objective: &SpanCorruption, seed: u64, docs: &[Vec<u32>]) -> Vec<SpanCorruptionExample> {
    let mut packer = SpanCorruptionPacker::new(objective.clone(), seed);
    let mut out = Vec::new();
    for doc in docs {
        out.extend(packer.push(doc).unwrap());
    }
    out
}

// Each case worked by hand from T5's helper: find the largest raw length t
// (starting from inputs_length - 1) whose inputs, (t - noise) + spans + 1
// with noise = round(t * d) and spans = round(noise / m), still fit in
// inputs_length; targets = noise + spans + 1. `round` halves to even.
#[test]
fn lengths_match_t5_worked_by_hand() {
    let cases: &[(usize, f64, f64, (usize, usize))] = &[
        // t=141: noise round(21.15)=21, spans 7: 120+7+1=128, 21+7+1=29;
        // t=142: noise 21, 121+7+1=129 > 128.
        (128, 0.15, 3.0, (141, 29)),
        // t=284: noise round(42.6)=43, spans round(14.33)=14: 241+14+1=256, 58;
        // t=285: noise round(42.75)=43, 242+15 = 257 > 256.
        (256, 0.15, 3.0, (284, 58)),
        // t=568: noise round(85.2)=85, spans round(28.33)=28: 483+28+1=512, 114.
        (512, 0.15, 3.0, (568, 114)),
        // t=1137: noise round(170.55)=171, spans 57: 966+57+1=1024, 229.
        (1024, 0.15, 3.0, (1137, 229)),
        // t=70: noise round(10.5)=10 (half to even; half up would give 11
        // noise in 4 spans and 16 targets), spans 3: 60+3+1=64, 14.
        (64, 0.15, 3.0, (70, 14)),
        // t=110: noise round(16.5)=16, spans round(5.33)=5: 94+5+1=100, 22.
        (100, 0.15, 3.0, (110, 22)),
        // t=74: noise round(22.2)=22, spans 11: 52+11+1=64, 34;
        // t=75: noise round(22.5)=22, 53+11+1=65 > 64.
        (64, 0.3, 2.0, (74, 34)),
        // t=150: noise 45, spans round(22.5)=22: 105+22+1=128, 68.
        (128, 0.3, 2.0, (150, 68)),
        // t=766: noise 383, spans round(127.67)=128: 383+128+1=512 both sides.
        (512, 0.5, 3.0, (766, 512)),
        // T5's "minor hack" for density 0.5: t=127 gives noise round(63.5)=64,
        // 63+64+1=128 inputs but 129 targets, so t=126 and targets 128.
        (128, 0.5, 1.0, (126, 128)),
    ];
    for &(inputs, d, m, expected) in cases {
        assert_eq!(
            compute_input_and_target_lengths(inputs, d, m).unwrap(),
            expected,
            "inputs_length {inputs}, noise_density {d}, mean_noise_span_length {m}"
        );
    }
}

#[test]
fn bad_length_parameters_are_errors() {
    for (d, m) in [
        (1.0, 3.0),
        (-0.1, 3.0),
        (f64::NAN, 3.0),
        (0.15, 0.0),
        (0.15, f64::NAN),
    ] {
        let err = compute_input_and_target_lengths(512, d, m).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }
    // A density near 1 with long spans would need an absurd raw length.
    assert!(compute_input_and_target_lengths(512, 0.999, 1000.0).is_err());
}

#[test]
fn settings_where_t5_would_pad_are_rejected() {
    // T5's density-0.5 hack gives 126 raw tokens for 128 inputs, but the
    // mask then yields 127 inputs and 127 targets: T5 pads, we refuse.
    let err = SpanCorruption::new(128, 0.5, 1.0, EOS, sentinels()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("127 inputs and 127 targets"), "{msg}");
}

#[test]
fn the_objective_reports_t5_lengths() {
    let o = objective(512, 0.15, 3.0);
    assert_eq!(
        (o.input_length(), o.raw_length(), o.target_length()),
        (512, 568, 114)
    );
    assert_eq!(o.num_noise_spans(), 28);
    let d = SpanCorruption::t5_defaults(512, EOS, sentinels()).unwrap();
    assert_eq!(d, o);
}

/// Noise statistics measured from the examples themselves: noise tokens are
/// the targets minus their sentinels and `</s>`; spans are the sentinels.
#[test]
fn noise_fraction_and_mean_span_length_match_the_configuration() {
    for (input_length, d, m, n_examples) in [
        (64, 0.3, 2.0, 4000),
        (128, 0.15, 3.0, 2000),
        (512, 0.15, 3.0, 1000),
    ] {
        let o = objective(input_length, d, m);
        let raw = o.raw_length();
        let docs: Vec<Vec<u32>> = (0..n_examples)
            .map(|i| (0..raw as u32 - 1).map(|t| 2 + (t + i) % 800).collect())
            .collect();
        let examples = pack(&o, 42, &docs);
        assert_eq!(examples.len(), n_examples as usize);

        let mut noise = 0usize;
        let mut spans = 0usize;
        let mut span_lengths = Vec::new();
        for ex in &examples {
            let body = &ex.targets[..ex.targets.len() - 1];
            let s = body.iter().filter(|&&t| is_sentinel(t)).count();
            noise += body.len() - s;
            spans += s;
            for chunk in body.split(|&t| is_sentinel(t)).skip(1) {
                span_lengths.push(chunk.len());
            }
        }
        let fraction = noise as f64 / (raw * examples.len()) as f64;
        let mean_span = noise as f64 / spans as f64;
        let rounded = (raw as f64 * d).round_ties_even() / raw as f64;
        eprintln!(
            "{input_length}/{d}/{m}: raw {raw}, {} examples: noise fraction {fraction:.5} \
             (T5's rounded {rounded:.5}), mean span {mean_span:.4}, span lengths {}..={}",
            examples.len(),
            span_lengths.iter().min().unwrap(),
            span_lengths.iter().max().unwrap(),
        );
        assert!(
            (fraction - rounded).abs() < 1e-12,
            "{fraction} vs {rounded}"
        );
        assert!((fraction - d).abs() / d <= 0.01, "{fraction} vs {d}");
        assert!((mean_span - m).abs() / m <= 0.05, "{mean_span} vs {m}");
        assert!(span_lengths.iter().all(|&l| l >= 1));
        // Spans really vary: the segmentation is random, not regular.
        assert!(span_lengths.iter().max() > span_lengths.iter().min());
    }
}

#[test]
fn noise_positions_follow_t5s_distribution() {
    // Where noise falls, per position, over many masks of 141 tokens
    // (128 inputs at the defaults: 21 noise tokens in 7 spans). The first
    // token is never noise and the last always is, as in T5. The reference
    // shares come from 200,000 masks of a plain-Python transcription of T5's
    // algorithm (shuffled cut points, as `_random_segmentation`): position 1
    // 0.050, position 2 0.083, positions 138 and 139 0.494 and 0.698, the
    // middle half 0.1350 (below 21/141 = 0.149 because the ends pull noise
    // towards the last span).
    let n = 20000;
    let length = 141;
    let mut counts = vec![0usize; length];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..n {
        let mask = random_spans_noise_mask(length, 0.15, 3.0, &mut rng).unwrap();
        assert_eq!(mask.iter().filter(|&&x| x).count(), 21);
        assert!(!mask[0] && mask[length - 1]);
        for (c, &x) in counts.iter_mut().zip(&mask) {
            *c += x as usize;
        }
    }
    let share = |i: usize| counts[i] as f64 / n as f64;
    let middle = &counts[length / 4..3 * length / 4];
    let middle_share = middle.iter().sum::<usize>() as f64 / (middle.len() * n) as f64;
    eprintln!(
        "noise share by position over {n} masks: [1] {:.3} [2] {:.3} [138] {:.3} [139] {:.3} middle {middle_share:.4}",
        share(1),
        share(2),
        share(138),
        share(139)
    );
    for (i, reference) in [(1, 0.050), (2, 0.083), (138, 0.494), (139, 0.698)] {
        assert!(
            (share(i) - reference).abs() < 0.015,
            "position {i}: {}",
            share(i)
        );
    }
    assert!((middle_share - 0.1350).abs() < 0.002, "{middle_share}");
}

fn docs_strategy() -> impl Strategy<Value = Vec<Vec<u32>>> {
    prop::collection::vec(
        prop::collection::vec(2u32..FIRST_SENTINEL_FREE, 0..700),
        0..12,
    )
}

fn settings_strategy() -> impl Strategy<Value = (usize, f64, f64)> {
    prop::sample::select(vec![
        (64, 0.3, 2.0),
        (128, 0.15, 3.0),
        (512, 0.15, 3.0),
        (100, 0.15, 3.0),
        (64, 0.5, 3.0),
        (32, 0.25, 2.0),
        (10, 0.15, 3.0),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Inputs and targets together give back the packed stream exactly, and
    /// every example has the computed lengths.
    #[test]
    fn examples_reconstruct_the_stream(
        docs in docs_strategy(),
        (input_length, d, m) in settings_strategy(),
        eos_after_document in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let o = objective(input_length, d, m).with_eos_after_document(eos_after_document);
        let examples = pack(&o, seed, &docs);

        let mut stream = Vec::new();
        for doc in docs.iter().filter(|d| !d.is_empty()) {
            stream.extend_from_slice(doc);
            if eos_after_document {
                stream.push(EOS);
            }
        }
        let n = stream.len() / o.raw_length();
        prop_assert_eq!(examples.len(), n);

        let mut rebuilt = Vec::new();
        for ex in &examples {
            prop_assert_eq!(ex.inputs.len(), o.input_length());
            prop_assert_eq!(ex.targets.len(), o.target_length());
            prop_assert_eq!(ex.inputs.last(), Some(&EOS));
            prop_assert_eq!(ex.targets.last(), Some(&EOS));
            prop_assert_eq!(ex.targets[0], 999);
            rebuilt.extend(o.reconstruct(ex).unwrap());
        }
        prop_assert_eq!(&rebuilt[..], &stream[..n * o.raw_length()]);
    }

    /// For any accepted setting, every example has exactly the lengths the
    /// objective promises; rejected settings are errors, never panics.
    #[test]
    fn accepted_settings_give_exact_lengths(
        input_length in 0usize..700,
        d in 0.0f64..0.6,
        m in 1.0f64..6.0,
        seed in any::<u64>(),
    ) {
        let o = match SpanCorruption::new(input_length, d, m, EOS, t5_sentinel_ids(VOCAB, 300).unwrap()) {
            Ok(o) => o,
            Err(e) => {
                prop_assert!(matches!(e, Error::Invalid(_)));
                return Ok(());
            }
        };
        let (raw, targets) = compute_input_and_target_lengths(input_length, d, m).unwrap();
        prop_assert_eq!((o.raw_length(), o.target_length()), (raw, targets));
        let doc: Vec<u32> = (0..3 * raw as u32).map(|t| 2 + t % 800).collect();
        let mut packer = SpanCorruptionPacker::new(o.clone(), seed);
        let examples = packer.push(&doc).unwrap();
        prop_assert_eq!(examples.len(), 3);
        for ex in &examples {
            prop_assert_eq!(ex.inputs.len(), input_length);
            prop_assert_eq!(ex.targets.len(), targets);
        }
    }

    /// The same seed gives the same examples; a packer restored from a state
    /// saved mid-stream (through JSON) continues exactly as one that never
    /// stopped.
    #[test]
    fn seeded_and_resumable(
        docs in docs_strategy(),
        (input_length, d, m) in settings_strategy(),
        seed in any::<u64>(),
        split_doc in 0usize..12,
        drain_before_save in 0usize..3,
    ) {
        let o = objective(input_length, d, m);
        let uninterrupted = pack(&o, seed, &docs);
        prop_assert_eq!(&pack(&o, seed, &docs), &uninterrupted);

        // First run: push documents up to split_doc, take a few of the
        // pending examples, save.
        let split_doc = split_doc.min(docs.len());
        let mut first = SpanCorruptionPacker::new(o.clone(), seed);
        let mut seen = Vec::new();
        for doc in &docs[..split_doc] {
            first.push_document(doc);
            for _ in 0..drain_before_save {
                if let Some(ex) = first.next_example().unwrap() {
                    seen.push(ex);
                }
            }
        }
        let json = serde_json::to_string(&first.state()).unwrap();
        drop(first);

        // Second run: a fresh packer, restored, drains and continues.
        let state: PackerState = serde_json::from_str(&json).unwrap();
        let mut resumed = SpanCorruptionPacker::new(o.clone(), seed.wrapping_add(1));
        resumed.restore(state).unwrap();
        while let Some(ex) = resumed.next_example().unwrap() {
            seen.push(ex);
        }
        prop_assert!(resumed.pending_tokens() < o.raw_length());
        for doc in &docs[split_doc..] {
            seen.extend(resumed.push(doc).unwrap());
        }
        prop_assert_eq!(resumed.examples_produced(), uninterrupted.len() as u64);
        prop_assert_eq!(&seen, &uninterrupted);
    }
}

#[test]
fn different_seeds_give_different_masks() {
    let o = objective(128, 0.15, 3.0);
    let doc: Vec<u32> = (0..20 * o.raw_length() as u32)
        .map(|t| 2 + t % 800)
        .collect();
    let a = pack(&o, 1, std::slice::from_ref(&doc));
    let b = pack(&o, 2, std::slice::from_ref(&doc));
    assert_eq!(a.len(), 20);
    assert_ne!(a, b);
    // And examples within one stream differ in their masks.
    let masks: std::collections::HashSet<Vec<bool>> = a
        .iter()
        .map(|ex| ex.inputs.iter().map(|&t| is_sentinel(t)).collect())
        .collect();
    assert!(masks.len() > 15);
}
