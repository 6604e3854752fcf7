"""CLIP's byte-level BPE tokenizer (OpenAI CLIP `simple_tokenizer`), reading `bpe_simple_vocab_16e6.txt.gz`.

Vocabulary file format: gzip text, first line a header, then one merge ("a b") per line; CLIP uses the first
49152 - 256 - 2 = 48,894 merges. Ids: the 256 byte-unicode characters, the same with '</w>' (end of word),
one token per merge, then '<|startoftext|>' = 49406 and '<|endoftext|>' = 49407: 49,408 tokens.

The file ships inside the `open_clip_torch` wheel on PyPI (do not `pip install` it; it pulls a CUDA torch):

    pip download --no-deps open_clip_torch -d /tmp/oc
    unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz -d PATH

Text cleaning as in CLIP, without the `ftfy` dependency: html.unescape twice, Unicode NFC (what ftfy's
fix_text also does, minus its mojibake repairs), whitespace collapsed, lowercased. The split pattern uses
`\\p{L}` / `\\p{N}`; with the `regex` package it is CLIP's own pattern; without it the same classes are built
for the stdlib `re` from `unicodedata` categories (L* and N*), which gives the same tokens (tested).
"""
import functools
import gzip
import html
import os
import unicodedata

import numpy as np

START_TOKEN = '<|startoftext|>'
END_TOKEN = '<|endoftext|>'
CLIP_NUM_MERGES = 49152 - 256 - 2
VOCAB_FILE_NAME = 'bpe_simple_vocab_16e6.txt.gz'
HOW_TO_GET_VOCAB = (f'{VOCAB_FILE_NAME} ships in the open_clip_torch wheel: `pip download --no-deps '
                    f'open_clip_torch -d /tmp/oc && unzip -j /tmp/oc/open_clip_torch-*.whl '
                    f'open_clip/{VOCAB_FILE_NAME} -d DIR` (never pip install open_clip_torch)')
_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@functools.lru_cache()
def bytes_to_unicode():
  """Byte -> printable unicode character, the reversible byte alphabet of GPT-2 / CLIP BPE."""
  printable = (list(range(ord('!'),
                          ord('~') + 1)) + list(range(ord('¡'),
                                                      ord('¬') + 1)) + list(range(ord('®'),
                                                                                  ord('ÿ') + 1)))
  byte_values, code_points = printable[:], printable[:]
  for b in range(256):
    if b not in printable:
      byte_values.append(b)
      code_points.append(256 + len(code_points) - len(printable))
  return dict(zip(byte_values, map(chr, code_points)))


@functools.lru_cache()
def _unicode_class_ranges():
  """Character-class bodies for Unicode letters (L*) and numbers (N*), for the stdlib `re`."""
  classes = {'L': [], 'N': []}
  for cp in range(0x110000):
    kind = unicodedata.category(chr(cp))[0]
    if kind in classes:
      ranges = classes[kind]
      if ranges and ranges[-1][1] == cp - 1:
        ranges[-1][1] = cp
      else:
        ranges.append([cp, cp])
  escape = lambda cp: f'\\U{cp:08x}'
  return {k: ''.join(escape(a) if a == b else f'{escape(a)}-{escape(b)}' for a, b in v) for k, v in classes.items()}


def compile_split_pattern(use_regex=None):
  """CLIP's pre-tokenization pattern; `regex` if installed (or `use_regex`), else an exact stdlib version."""
  if use_regex is None:
    try:
      import regex  # pylint: disable=g-import-not-at-top,unused-import
      use_regex = True
    except ImportError:
      use_regex = False
  if use_regex:
    import regex  # pylint: disable=g-import-not-at-top
    return regex.compile(_SPLIT_PATTERN, regex.IGNORECASE)
  import re  # pylint: disable=g-import-not-at-top
  c = _unicode_class_ranges()
  pattern = _SPLIT_PATTERN.replace(r'[\p{L}]+', f'[{c["L"]}]+').replace(r'[\p{N}]', f'[{c["N"]}]')
  pattern = pattern.replace(r'[^\s\p{L}\p{N}]+', f'[^\\s{c["L"]}{c["N"]}]+')
  return re.compile(pattern, re.IGNORECASE)


def clean_text(text):
  """CLIP's cleaning without ftfy: html-unescape twice, NFC, collapse whitespace, lowercase."""
  text = html.unescape(html.unescape(text))
  text = unicodedata.normalize('NFC', text)
  return ' '.join(text.split()).lower()


def read_bpe_merges(path, num_merges=CLIP_NUM_MERGES):
  """The merge pairs of a `bpe_simple_vocab_16e6.txt.gz`-format file (header line skipped)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'CLIP BPE vocabulary not found at {path!r}. {HOW_TO_GET_VOCAB}')
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    lines = f.read().split('\n')
  merges = [tuple(line.split()) for line in lines[1:num_merges + 1] if line.strip()]
  bad = [m for m in merges if len(m) != 2]
  if bad:
    raise ValueError(f'{path}: merge lines must hold two symbols, got {bad[:3]}')
  return merges


def build_vocab(merges):
  """Token strings in id order: bytes, bytes + '</w>', one per merge, start and end tokens."""
  byte_chars = list(bytes_to_unicode().values())
  return byte_chars + [c + '</w>' for c in byte_chars] + [a + b for a, b in merges] + [START_TOKEN, END_TOKEN]


def _pairs(word):
  return set(zip(word[:-1], word[1:]))


class CLIPTokenizer:
  """encode / decode / tokenize with CLIP's byte-level BPE. Build with `from_file(path)` or from merges."""
  def __init__(self, merges, use_regex=None):
    vocab = build_vocab(merges)
    self.encoder = {token: i for i, token in enumerate(vocab)}
    if len(self.encoder) != len(vocab):
      raise ValueError('BPE merges produce duplicate tokens')
    self.decoder = vocab
    self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
    self.pattern = compile_split_pattern(use_regex)
    self.start_id = self.encoder[START_TOKEN]
    self.end_id = self.encoder[END_TOKEN]
    self._cache = {START_TOKEN: (START_TOKEN,), END_TOKEN: (END_TOKEN,)}

  @classmethod
  def from_file(cls, path, use_regex=None):
    return cls(read_bpe_merges(path), use_regex)

  @property
  def vocab_size(self):
    return len(self.decoder)

  def bpe(self, word):
    """Greedy lowest-rank merging of one pre-token (already in byte-unicode characters)."""
    if word in self._cache:
      return self._cache[word]
    symbols = tuple(word[:-1]) + (word[-1] + '</w>',)
    while len(symbols) > 1:
      pair = min(_pairs(symbols), key=lambda p: self.bpe_ranks.get(p, float('inf')))
      if pair not in self.bpe_ranks:
        break
      merged, i = [], 0
      while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = tuple(merged)
    self._cache[word] = symbols
    return symbols

  def encode(self, text):
    """Token ids of `text` (cleaned), without start/end tokens."""
    ids = []
    for piece in self.pattern.findall(clean_text(text)):
      word = ''.join(self.byte_encoder[b] for b in piece.encode('utf-8'))
      ids.extend(self.encoder[symbol] for symbol in self.bpe(word))
    return ids

  def decode(self, ids, skip_special_tokens=True):
    """Text of `ids` as CLIP decodes it ('</w>' -> ' '), stripped; start/end tokens dropped unless asked for."""
    special = {self.start_id, self.end_id} if skip_special_tokens else set()
    text = ''.join(self.decoder[int(i)] for i in ids if int(i) not in special)
    raw = bytearray(self.byte_decoder[c] for c in text)
    return raw.decode('utf-8', errors='replace').replace('</w>', ' ').strip()

  def tokenize(self, texts, context_length=77, pad_id=0):
    """int32 [B, context_length]: start, ids, end, then `pad_id` (0 as in CLIP; Stable Diffusion's HF
    tokenizer pads with the end token 49407, which changes only the hidden states after the end token).
    Too long texts are truncated and keep the end token last."""
    return pack_token_ids(self, texts, context_length, pad_id)


def pack_token_ids(tokenizer, texts, context_length, pad_id):
  """int32 [B, context_length] rows of start, tokenizer.encode(text), end, then pad_id; too long texts
  are cut and keep the end token last. Shared by every tokenizer with encode/start_id/end_id."""
  texts = [texts] if isinstance(texts, str) else list(texts)
  out = np.full((len(texts), context_length), pad_id, np.int32)
  for row, text in enumerate(texts):
    ids = [tokenizer.start_id] + tokenizer.encode(text) + [tokenizer.end_id]
    if len(ids) > context_length:
      ids = ids[:context_length - 1] + [tokenizer.end_id]
    out[row, :len(ids)] = ids
  return out
