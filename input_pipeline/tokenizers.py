"""Caption -> token ids [B, max_tokens] int32, the same layout for both tokenizers.

Every row is `start, ids..., end, pad...` with pad id 0, and the end token is the largest id of the
vocabulary, so the text tower's pooled output (hidden state at argmax of the ids, `models.clip`) is
the hidden state at the end token for either tokenizer. The empty prompt is `start, end, 0, ...`:
it is the null condition of classifier-free guidance and what label dropout replaces a prompt by.

- 'clip_bpe': CLIP's byte-level BPE (`evaluation/clip_tokenizer.py`) from `bpe_simple_vocab_16e6.txt.gz`
  (config.data.vocab_path); needed for the pretrained CLIP text tower.
- 'words': a word-level vocabulary, for offline runs where the CLIP vocabulary file is not at hand.
  Lower-cased text is split into runs of letters/digits and single punctuation marks; ids are
  0 pad, 1 unknown, 2.. the words in file order, then start and end. The vocabulary is a text file
  with one word per line (config.data.vocab_path), or, when that is empty, the words of the digits
  caption templates (`input_pipeline.captions.DIGIT_TEMPLATES`, about 30 words): an honest, closed
  vocabulary for template captions, which any word outside it maps to the unknown id. Build one for
  other captions with `WordTokenizer.from_texts(captions)` and `save_vocab`.
"""
import functools
import os
import re


PAD_ID = 0
_WORD_PATTERN = re.compile(r'[a-z0-9]+|[^\sa-z0-9]')


def split_words(text):
  return _WORD_PATTERN.findall(' '.join(text.lower().split()))


class WordTokenizer:
  """Word-level tokenizer over a fixed vocabulary; the interface of `CLIPTokenizer.tokenize`."""

  PAD, UNK, START, END = '<pad>', '<unk>', '<start>', '<end>'

  def __init__(self, words):
    words = [w for w in dict.fromkeys(words) if w not in (self.PAD, self.UNK, self.START, self.END)]
    self.words = words
    self.encoder = {w: i + 2 for i, w in enumerate(words)}
    self.unk_id = 1
    self.start_id = len(words) + 2
    self.end_id = len(words) + 3

  @classmethod
  def from_texts(cls, texts):
    """The words of `texts`, in order of first appearance."""
    return cls([w for text in texts for w in split_words(text)])

  @classmethod
  def from_file(cls, path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'config.data.vocab_path={path!r}: no such word list (one word per line); build '
                              'one with input_pipeline.tokenizers.WordTokenizer.from_texts(captions).save_vocab(path)')
    with open(path, encoding='utf-8') as f:
      return cls([line.strip() for line in f if line.strip()])

  def save_vocab(self, path):
    with open(path, 'w', encoding='utf-8') as f:
      f.write('\n'.join(self.words) + '\n')

  @property
  def vocab_size(self):
    return len(self.words) + 4

  def encode(self, text):
    return [self.encoder.get(w, self.unk_id) for w in split_words(text)]

  def decode(self, ids, skip_special_tokens=True):
    names = [self.PAD, self.UNK] + self.words + [self.START, self.END]
    special = {PAD_ID, self.start_id, self.end_id} if skip_special_tokens else set()
    return ' '.join(names[int(i)] for i in ids if int(i) not in special)

  def tokenize(self, texts, context_length=77, pad_id=PAD_ID):
    """int32 [B, context_length]: start, ids, end, pad; too long texts are cut and keep the end token."""
    from evaluation.clip_tokenizer import pack_token_ids
    return pack_token_ids(self, texts, context_length, pad_id)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(kind, vocab_path):
  if kind == 'words':
    if vocab_path:
      return WordTokenizer.from_file(vocab_path)
    from input_pipeline.captions import digit_caption_vocabulary
    return WordTokenizer(digit_caption_vocabulary())
  if kind == 'clip_bpe':
    from evaluation.clip_tokenizer import HOW_TO_GET_VOCAB, CLIPTokenizer
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
