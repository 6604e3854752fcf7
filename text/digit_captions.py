"""Template captions of the digits: "a handwritten digit seven", "the number 7, written by hand", ...

Template 0 is the evaluation prompt (`jobs/conditions.py`); the words of all templates are the default word
vocabulary (`text/tokenizers.py`).
"""
from text.words import split_words

DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
DIGIT_TEMPLATES = (
    'a handwritten digit {name}',
    'the number {digit}, written by hand',
    'a small picture of the digit {name}',
    'handwritten {name}',
    'a scanned digit {digit}',
)


def digit_caption(label, template=0):
  return DIGIT_TEMPLATES[template].format(name=DIGIT_NAMES[label], digit=label)


def digit_caption_vocabulary():
  """Every word of every digit caption, in order of first appearance."""
  texts = [digit_caption(d, t) for t in range(len(DIGIT_TEMPLATES)) for d in range(10)]
  return list(dict.fromkeys(w for text in texts for w in split_words(text)))
