"""Caption -> token ids [B, max_tokens] int32, the same layout for both tokenizers.

Every row is `start, ids..., end, pad...` with pad id 0, and the end token is the largest id of the
vocabulary, so the text tower's pooled output (hidden state at argmax of the ids, `models.clip`) is
the hidden state at the end token for either tokenizer. The empty prompt is `start, end, 0, ...`:
it is the null condition of classifier-free guidance and what label dropout replaces a prompt by.

- 'clip_bpe': CLIP's byte-level BPE (`text/clip_bpe.py`) from `bpe_simple_vocab_16e6.txt.gz`
  (config.data.vocab_path); needed for the pretrained CLIP text tower.
- 'words': a word-level vocabulary (`text/words.py`), for offline runs where the CLIP vocabulary file is not at hand.
  Lower-cased text is split into runs of letters/digits and single punctuation marks; ids are
  0 pad, 1 unknown, 2.. the words in file order, then start and end. The vocabulary is a text file
  with one word per line (config.data.vocab_path), or, when that is empty, the words of the digits
  caption templates (`text.digit_captions.DIGIT_TEMPLATES`, about 30 words): an honest, closed
  vocabulary for template captions, which any word outside it maps to the unknown id. Build one for
  other captions with `WordTokenizer.from_texts(captions)` and `save_vocab`.
"""
import functools
import os

from text.clip_bpe import HOW_TO_GET_VOCAB, CLIPTokenizer
from text.digit_captions import digit_caption_vocabulary
from text.words import WordTokenizer


@functools.lru_cache(maxsize=4)
def _load_tokenizer(kind, vocab_path):
  if kind == 'words':
    if vocab_path:
      return WordTokenizer.from_file(vocab_path)
    return WordTokenizer(digit_caption_vocabulary())
  if kind == 'clip_bpe':
    if not vocab_path or not os.path.isfile(vocab_path):
      raise FileNotFoundError(f"config.data.tokenizer='clip_bpe' needs config.data.vocab_path, the CLIP BPE "
                              f"vocabulary (got {vocab_path!r}); {HOW_TO_GET_VOCAB}")
    return CLIPTokenizer.from_file(vocab_path)
  raise ValueError(f"config.data.tokenizer={kind!r} is not one of 'words', 'clip_bpe'")


def tokenizer_for(data_config):
  """The (cached) tokenizer config.data names."""
  return _load_tokenizer(data_config.get('tokenizer', 'words'), data_config.get('vocab_path', ''))


def tokenize(texts, data_config):
  """int32 [B, config.data.max_tokens] ids of `texts` with the configured tokenizer."""
  return tokenizer_for(data_config).tokenize(list(texts), data_config.get('max_tokens', 77))


def empty_prompt_tokens(data_config):
  """The tokens of '' (start, end, pad...): the null condition of text-conditional models."""
  return tokenize([''], data_config)[0]
