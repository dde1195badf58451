//! Generation: greedy, beam search and sampling over the decoder cache.
