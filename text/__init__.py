"""Tokenizers: a word list and CLIP's byte-level BPE. Imports nothing of the project."""
