//! The web UI's prompt chunking (`sd_hijack_clip.py`, `tokenize_line`): the parsed pieces'
//! tokens into chunks of 75, each wrapped in BOS and EOS to the text encoder's 77.
//!
//! - A chunk that fills up while the last comma is at most [`COMMA_BACKTRACK`] tokens back is
//!   cut after that comma; the tokens after it open the next chunk (the web UI's
//!   `comma_padding_backtrack` setting, default 20).
//! - An embedding's vectors never straddle two chunks: when they do not fit, the chunk is closed
//!   (padded with EOS) and they open the next one. Here an embedding is its tokens `P P_1 ...`
//!   (see `learned_tokens`), found where the ids of its first token start.
//! - `BREAK` closes the chunk. A chunk is padded with EOS; the last one too, and an empty
//!   prompt is one chunk.
use anyhow::{bail, Result};

/// Tokens per chunk between BOS and EOS.
pub const CHUNK_LEN: usize = 75;
/// The web UI's default `comma_padding_backtrack`.
pub const COMMA_BACKTRACK: usize = 20;

/// One chunk: 77 ids and the weight of each (1 for BOS, EOS and padding).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chunk {
    pub ids: Vec<i64>,
    pub multipliers: Vec<f64>,
}

/// The ids the chunking needs to know about.
pub struct Vocab {
    pub bos: i64,
    pub eos: i64,
    /// `,</w>`, where a chunk may be cut.
    pub comma: Option<i64>,
    /// Each embedding's ids, `P P_1 ...`.
    pub embeddings: Vec<Vec<i64>>,
}

/// A parsed piece's tokens (BOS/EOS not included) with its weight, or a chunk break.
pub enum TokenPiece {
    Tokens(Vec<i64>, f64),
    Break,
}

struct Builder<'a> {
    vocab: &'a Vocab,
    chunks: Vec<Chunk>,
    ids: Vec<i64>,
    mults: Vec<f64>,
    last_comma: Option<usize>,
}

impl Builder<'_> {
    /// Pads the open chunk with EOS, wraps it in BOS/EOS and starts an empty one.
    fn close(&mut self) {
        let pad = CHUNK_LEN.saturating_sub(self.ids.len());
        let mut ids = Vec::with_capacity(CHUNK_LEN + 2);
        ids.push(self.vocab.bos);
        ids.append(&mut self.ids);
        ids.extend(std::iter::repeat_n(self.vocab.eos, pad + 1));
        let mut mults = vec![1.0];
        mults.append(&mut self.mults);
        mults.extend(std::iter::repeat_n(1.0, pad + 1));
        self.chunks.push(Chunk { ids, multipliers: mults });
        self.last_comma = None;
    }

    /// The embedding whose ids start at `tokens[pos]`, by its vector count.
    fn embedding_at(&self, tokens: &[i64], pos: usize) -> Option<&[i64]> {
        self.vocab.embeddings.iter().find(|e| !e.is_empty() && tokens[pos..].starts_with(e)).map(Vec::as_slice)
    }
}

/// The chunks of a prompt's pieces (see the module doc).
pub fn chunk(pieces: &[TokenPiece], vocab: &Vocab) -> Result<Vec<Chunk>> {
    let mut b = Builder { vocab, chunks: Vec::new(), ids: Vec::new(), mults: Vec::new(), last_comma: None };
    for piece in pieces {
        let (tokens, weight) = match piece {
            TokenPiece::Break => {
                b.close();
                continue;
            }
            TokenPiece::Tokens(t, w) => (t, *w),
        };
        let mut pos = 0;
        while pos < tokens.len() {
            let token = tokens[pos];
            if Some(token) == vocab.comma {
                b.last_comma = Some(b.ids.len());
            } else if let Some(comma) = b.last_comma.filter(|&c| b.ids.len() == CHUNK_LEN && CHUNK_LEN - c <= COMMA_BACKTRACK) {
                let moved_ids = b.ids.split_off(comma + 1);
                let moved_mults = b.mults.split_off(comma + 1);
                b.close();
                b.ids = moved_ids;
                b.mults = moved_mults;
            }
            if b.ids.len() == CHUNK_LEN {
                b.close();
            }
            match b.embedding_at(tokens, pos).map(<[i64]>::to_vec) {
                None => {
                    b.ids.push(token);
                    b.mults.push(weight);
                    pos += 1;
                }
                Some(vectors) => {
                    if vectors.len() > CHUNK_LEN {
                        bail!("an embedding of {} vectors does not fit in a prompt chunk of {CHUNK_LEN} tokens", vectors.len());
                    }
                    if b.ids.len() + vectors.len() > CHUNK_LEN {
                        b.close();
                    }
                    b.mults.extend(std::iter::repeat_n(weight, vectors.len()));
                    pos += vectors.len();
                    b.ids.extend(vectors);
                }
            }
        }
    }
    if !b.ids.is_empty() || b.chunks.is_empty() {
        b.close();
    }
    Ok(b.chunks)
}
