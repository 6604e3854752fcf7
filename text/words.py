"""The word-level tokenizer: lower-cased text split into runs of letters/digits and single punctuation marks.

Ids are 0 pad, 1 unknown, 2.. the words in vocabulary order, then start and end (`text/tokenizers.py` says how
rows are laid out). For offline runs where CLIP's vocabulary file is not at hand.
"""
import os
import re

from text.clip_bpe import pack_token_ids

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
                              'one with text.words.WordTokenizer.from_texts(captions).save_vocab(path)')
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
    return pack_token_ids(self, texts, context_length, pad_id)
