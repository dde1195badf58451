//! From token ids to the tensors a training step takes: text-to-text
//! examples, padding, labels and decoder inputs.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{shift_right, IGNORE_INDEX};

/// One training example in token ids, each side ending in `</s>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
}

/// The text-to-text objective: an (input, target) pair, the input behind an
/// optional task prefix (`"translate English to Japanese: "`), each side
/// truncated to its length with `</s>` kept last.
#[derive(Debug, Clone)]
pub struct TextToText {
    pub prefix: String,
    pub input_length: usize,
    pub target_length: usize,
    pub eos_id: u32,
}

impl TextToText {
    /// Builds an example; `encode` gives ids without `</s>`.
    pub fn example(
        &self,
        input: &str,
        target: &str,
        encode: impl Fn(&str) -> Result<Vec<u32>>,
    ) -> Result<Example> {
        let text = if self.prefix.is_empty() {
            input.to_string()
        } else {
            format!("{}{}", self.prefix, input)
        };
        Ok(Example {
            input: truncate_with_eos(encode(&text)?, self.input_length, self.eos_id),
            target: truncate_with_eos(encode(target)?, self.target_length, self.eos_id),
        })
    }
}

/// Cuts `ids` to `max_len - 1` and appends `</s>`.
pub fn truncate_with_eos(mut ids: Vec<u32>, max_len: usize, eos: u32) -> Vec<u32> {
    if ids.last() == Some(&eos) {
        ids.pop();
    }
    ids.truncate(max_len.saturating_sub(1));
    ids.push(eos);
    ids
}

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest sequence in the batch.
    Longest,
    /// To fixed lengths (encoder, decoder): the same shapes every step,
    /// which some accelerators prefer.
    Fixed { input: usize, target: usize },
}

/// A batch ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[b, s]` u32.
    pub input_ids: Tensor,
    /// `[b, s]` u32, 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[b, t]` u32: the labels shifted right behind the start token.
    pub decoder_input_ids: Tensor,
    /// `[b, t]` u32.
    pub decoder_attention_mask: Tensor,
    /// `[b, t]` i64, [`IGNORE_INDEX`] on padding.
    pub labels: Tensor,
    pub input_tokens: usize,
    pub target_tokens: usize,
}

impl Batch {
    pub fn size(&self) -> usize {
        self.input_ids.dims()[0]
    }
}

/// Pads examples into a batch. Labels are the targets with
/// [`IGNORE_INDEX`] on padding; decoder inputs are the labels shifted right
/// behind `start_id`, with padding as `pad_id`.
pub fn collate(
    examples: &[Example],
    pad_id: u32,
    start_id: u32,
    padding: Padding,
    device: &Device,
) -> Result<Batch> {
    if examples.is_empty() {
        return Err(Error::Invalid("cannot make a batch of no examples".into()));
    }
    let longest_in = examples.iter().map(|e| e.input.len()).max().unwrap_or(0);
    let longest_tg = examples.iter().map(|e| e.target.len()).max().unwrap_or(0);
    let (s, t) = match padding {
        Padding::Longest => (longest_in, longest_tg),
        Padding::Fixed { input, target } => {
            if longest_in > input || longest_tg > target {
                return Err(Error::Invalid(format!(
                    "an example ({longest_in} input / {longest_tg} target tokens) is longer than the fixed padding ({input} / {target})"
                )));
            }
            (input, target)
        }
    };
    let b = examples.len();
    let mut ids = Vec::with_capacity(b * s);
    let mut mask = Vec::with_capacity(b * s);
    let mut labels = Vec::with_capacity(b * t);
    let mut dec = Vec::with_capacity(b * t);
    let mut dec_mask = Vec::with_capacity(b * t);
    let (mut input_tokens, mut target_tokens) = (0, 0);
    for e in examples {
        input_tokens += e.input.len();
        target_tokens += e.target.len();
        ids.extend(e.input.iter().copied());
        ids.extend(std::iter::repeat_n(pad_id, s - e.input.len()));
        mask.extend(std::iter::repeat_n(1u32, e.input.len()));
        mask.extend(std::iter::repeat_n(0u32, s - e.input.len()));
        let row: Vec<i64> = e
            .target
            .iter()
            .map(|&x| x as i64)
            .chain(std::iter::repeat_n(IGNORE_INDEX, t - e.target.len()))
            .collect();
        dec.extend(shift_right(&row, start_id, pad_id));
        // The start token and every target token but the last are real
        // decoder inputs.
        dec_mask.extend(std::iter::repeat_n(1u32, e.target.len().min(t)));
        dec_mask.extend(std::iter::repeat_n(0u32, t - e.target.len().min(t)));
        labels.extend(row);
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, s), device)?,
        attention_mask: Tensor::from_vec(mask, (b, s), device)?,
        decoder_input_ids: Tensor::from_vec(dec, (b, t), device)?,
        decoder_attention_mask: Tensor::from_vec(dec_mask, (b, t), device)?,
        labels: Tensor::from_vec(labels, (b, t), device)?,
        input_tokens,
        target_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_pads_masks_and_shifts() {
        let ex = vec![
            Example {
                input: vec![5, 6, 7, 1],
                target: vec![8, 9, 1],
            },
            Example {
                input: vec![4, 1],
                target: vec![3, 1],
            },
        ];
        let b = collate(&ex, 0, 0, Padding::Longest, &Device::Cpu).unwrap();
        assert_eq!(
            b.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7, 1], vec![4, 1, 0, 0]]
        );
        assert_eq!(
            b.attention_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1, 1], vec![1, 1, 0, 0]]
        );
        assert_eq!(
            b.labels.to_vec2::<i64>().unwrap(),
            vec![vec![8, 9, 1], vec![3, 1, -100]]
        );
        assert_eq!(
            b.decoder_input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![0, 8, 9], vec![0, 3, 1]]
        );
        assert_eq!(
            b.decoder_attention_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 1, 0]]
        );
        assert_eq!((b.input_tokens, b.target_tokens), (6, 5));

        let fixed = collate(
            &ex,
            0,
            0,
            Padding::Fixed {
                input: 6,
                target: 4,
            },
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(fixed.input_ids.dims(), &[2, 6]);
        assert_eq!(fixed.labels.dims(), &[2, 4]);
        assert!(collate(
            &ex,
            0,
            0,
            Padding::Fixed {
                input: 3,
                target: 4
            },
            &Device::Cpu
        )
        .is_err());
    }

    #[test]
    fn text_to_text_adds_the_prefix_and_truncates_keeping_eos() {
        let t2t = TextToText {
            prefix: "p: ".into(),
            input_length: 4,
            target_length: 3,
            eos_id: 1,
        };
        // A stand-in tokenizer: one id per character.
        let enc = |s: &str| Ok(s.chars().map(|c| c as u32).collect());
        let e = t2t.example("abcdef", "xy", enc).unwrap();
        assert_eq!(e.input, vec!['p' as u32, ':' as u32, ' ' as u32, 1]);
        assert_eq!(e.target, vec!['x' as u32, 'y' as u32, 1]);
    }
}
