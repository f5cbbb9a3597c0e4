"""XLM-RoBERTa tokenizer on the `sentencepiece` library, in parity with transformers' `XLMRobertaTokenizer`.

transformers 5 builds this tokenizer from `sentencepiece.bpe.model` as a `tokenizers` pipeline, and that is what
is mirrored here (not plain `SentencePieceProcessor.encode`, which differs on a few inputs):

1. special-token strings typed in the text are cut out first and kept whole;
2. every other span is normalized with the model's character map (SentencePiece's normalizer, with its whitespace
   options off), split on Unicode whitespace, each word gets a "▁" prefix and is split again before every "▁";
3. each piece is segmented by a unigram Viterbi search over the fairseq vocabulary (which includes the special
   tokens, so a full-width "＜ｓ＞" that normalizes to "<s>" becomes id 0, as in transformers);
4. `<s> ... </s>` go around the result.

Ids follow fairseq: <s>=0, <pad>=1, </s>=2, <unk>=3, SentencePiece piece i -> i + 1, <mask> last.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .charsmap import CharsMap
from .graphemes import graphemes

VOCAB_FILE = "sentencepiece.bpe.model"
CONFIG_FILE = "tokenizer_config.json"
# transformers' VERY_LARGE_INTEGER: "no maximum length" when tokenizer_config.json does not give one
NO_MAX_LENGTH = int(1e30)
UNK_PENALTY = 10.0  # unknown characters score min_score - 10, as in SentencePiece and tokenizers
# Rust's char::is_whitespace (Unicode White_Space), which tokenizers' WhitespaceSplit uses; str.split() differs
_WHITESPACE = re.compile("[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
_SPACE_MARK = "\u2581"
_BEFORE_SPACE_MARK = re.compile("(?=\u2581)")


class BatchEncoding(dict):
    """A dict of model inputs whose keys can also be read as attributes (`enc.input_ids`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class XLMRobertaTokenizer:
    """Turns text into XLM-R input ids exactly as transformers' `XLMRobertaTokenizer` does."""

    def __init__(self, vocab_file, model_max_length=NO_MAX_LENGTH, mask_lstrip=False,
                 clean_up_tokenization_spaces=False, config=None):
        self.vocab_file = str(vocab_file)
        self.sp = spm.SentencePieceProcessor(model_file=self.vocab_file)
        self.charsmap = CharsMap(self.sp.serialized_model_proto())  # the model's precompiled normalisation map
        self.model_max_length = int(model_max_length)
        self.mask_lstrip = bool(mask_lstrip)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.config = dict(config or {})
        self._build_vocab()

    def _build_vocab(self):
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        pieces = [self.sp.id_to_piece(i) for i in range(3, self.sp.get_piece_size())]
        scores = [0.0] * 4 + [self.sp.get_score(i) for i in range(3, self.sp.get_piece_size())] + [0.0]
        self.id_to_token = specials + pieces + ["<mask>"]
        self.token_to_id = {}
        for i, tok in enumerate(self.id_to_token):
            self.token_to_id[tok] = i  # a later duplicate wins, as in tokenizers' Unigram
        self.scores = scores
        self.unk_score = min(scores) - UNK_PENALTY
        self.max_piece_len = max(len(t) for t in self.id_to_token)
        self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id = 0, 1, 2, 3
        self.mask_token_id = len(self.id_to_token) - 1
        self.special_ids = {0, 1, 2, 3, self.mask_token_id}
        # longest first, so that the alternation behaves like leftmost-longest matching
        names = sorted(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], key=len, reverse=True)
        alternatives = [(r"\s*" if n == "<mask>" and self.mask_lstrip else "") + re.escape(n) for n in names]
        self._special_re = re.compile("(" + "|".join(alternatives) + ")")

    # ---- loading and saving -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None, local_files_only=False, **kwargs):
        """Load from a directory (or Hub id) holding `sentencepiece.bpe.model` and optional `tokenizer_config.json`."""
        from .hub import resolve_pretrained

        root = resolve_pretrained(name_or_path, [VOCAB_FILE, CONFIG_FILE, "*.json"], revision=revision,
                                  cache_dir=cache_dir, local_files_only=local_files_only)
        root = Path(root)
        vocab_file = root / VOCAB_FILE
        if not vocab_file.is_file():
            raise OSError(f"{name_or_path}: expected a SentencePiece model file {VOCAB_FILE!r} in {root}")
        config = {}
        if (root / CONFIG_FILE).is_file():
            config = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
        mask = config.get("mask_token")
        options = {
            "model_max_length": config.get("model_max_length") or NO_MAX_LENGTH,
            "mask_lstrip": isinstance(mask, dict) and bool(mask.get("lstrip")),
            "clean_up_tokenization_spaces": bool(config.get("clean_up_tokenization_spaces", False)),
        }
        options.update(kwargs)
        return cls(vocab_file, config=config, **options)

    def save_pretrained(self, save_directory):
        """Write `sentencepiece.bpe.model` and `tokenizer_config.json` so that both this class and transformers load them."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        if Path(self.vocab_file).resolve() != (out / VOCAB_FILE).resolve():
            shutil.copyfile(self.vocab_file, out / VOCAB_FILE)
        config = dict(self.config)
        config.update({
            "tokenizer_class": "XLMRobertaTokenizer",
            "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
            "unk_token": "<unk>", "pad_token": "<pad>",
            "mask_token": {"content": "<mask>", "lstrip": self.mask_lstrip, "rstrip": False,
                           "normalized": False, "single_word": False, "special": True, "__type": "AddedToken"},
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        })
        if self.model_max_length < NO_MAX_LENGTH:
            config["model_max_length"] = self.model_max_length
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return out

    def __len__(self):
        return len(self.id_to_token)

    @property
    def vocab_size(self):
        return len(self.id_to_token)

    # ---- encoding -----------------------------------------------------------------------------------------

    def tokenize(self, text):
        """The tokens of `text` without `<s>`/`</s>`; an unknown run shows its own text, as in transformers."""
        return [piece for _, piece in self._encode(text)]

    def _encode_ids(self, text):
        return [i for i, _ in self._encode(text)]

    def _encode(self, text):
        """(id, surface piece) pairs."""
        pairs = []
        for k, part in enumerate(self._special_re.split(text)):
            if k % 2:  # the capture group: a special token typed in the text
                pairs.append((self.token_to_id[part.lstrip()], part.lstrip()))
            elif part:
                pairs.extend(self._encode_span(part))
        return pairs

    def _encode_span(self, span):
        pairs = []
        for word in _WHITESPACE.split(self.normalize(span)):
            if not word:
                continue
            if not word.startswith(_SPACE_MARK):
                word = _SPACE_MARK + word
            # Metaspace splits before every "▁", keeping it on the following piece
            for piece in _BEFORE_SPACE_MARK.split(word):
                if piece:
                    pairs.extend(self._viterbi(piece))
        return pairs

    def normalize(self, text):
        """tokenizers' `Precompiled` normalizer, which differs from SentencePiece's own on combining sequences.

        A grapheme shorter than 6 UTF-8 bytes is replaced as a whole by the mapping of its *shortest* mapped
        prefix (so "Ａ\u0301" becomes "A"); longer graphemes, and those with no mapped prefix, map char by char.
        """
        lookup, out = self.charsmap.lookup, []
        for g in graphemes(text):
            if len(g) > 1 and len(g.encode("utf-8")) < 6:
                mapped = lookup(g)
                if mapped is not None:
                    out.append(mapped)
                    continue
            for c in g:
                mapped = lookup(c)
                out.append(c if mapped is None else mapped)
        return "".join(out)

    def _viterbi(self, text):
        """Best unigram segmentation; ties go to the earliest start, unknown runs fuse into one <unk>."""
        n = len(text)
        best = [None] * (n + 1)  # best[end] = (score, start, id)
        best[0] = (0.0, -1, -1)
        for start in range(n):
            base = best[start][0]
            single = False
            for end in range(start + 1, min(n, start + self.max_piece_len) + 1):
                tid = self.token_to_id.get(text[start:end])
                if tid is None:
                    continue
                single = single or end == start + 1
                score = base + self.scores[tid]
                if best[end] is None or score > best[end][0]:
                    best[end] = (score, start, tid)
            if not single:
                score = base + self.unk_score
                if best[start + 1] is None or score > best[start + 1][0]:
                    best[start + 1] = (score, start, self.unk_token_id)
        pieces, end = [], n
        while end > 0:
            _, start, tid = best[end]
            if tid == self.unk_token_id and pieces and pieces[-1][0] == self.unk_token_id:
                pieces[-1] = (tid, text[start:end] + pieces[-1][1])
            else:
                pieces.append((tid, text[start:end]))
            end = start
        return pieces[::-1]

    def __call__(self, text, padding=False, truncation=None, max_length=None, return_tensors=None,
                 return_attention_mask=True, **kwargs):
        """Encode a string or a list of strings into `input_ids` (and `attention_mask`)."""
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        texts = _check_texts(text)
        padding, truncation, max_length = self._resolve_lengths(padding, truncation, max_length)
        rows = []
        for t in texts:
            ids = self._encode_ids(t)
            if truncation:
                ids = ids[:max(max_length - 2, 0)]
            rows.append([self.bos_token_id] + ids + [self.eos_token_id])
        masks = [[1] * len(r) for r in rows]
        if padding:
            target = max_length if padding == "max_length" else max(len(r) for r in rows)
            masks = [m + [0] * (target - len(r)) for r, m in zip(rows, masks)]
            rows = [r + [self.pad_token_id] * (target - len(r)) for r in rows]
        enc = {"input_ids": rows}
        if return_attention_mask:
            enc["attention_mask"] = masks
        return BatchEncoding(_to_tensors(enc, return_tensors, batched=not isinstance(text, str)))

    def _resolve_lengths(self, padding, truncation, max_length):
        if padding is True:
            padding = "longest"
        elif padding in (False, None, "do_not_pad"):
            padding = False
        elif padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if truncation in (True, "longest_first", "only_first"):
            truncation = True
        elif truncation in (False, None, "do_not_truncate"):
            truncation = False
        else:
            raise ValueError(f"truncation must be True, False or 'longest_first', got {truncation!r}")
        if max_length is None and (truncation or padding == "max_length"):
            if self.model_max_length < NO_MAX_LENGTH:
                max_length = self.model_max_length
            elif padding == "max_length":
                raise ValueError("padding='max_length' needs max_length: this tokenizer has no model_max_length "
                                 "in its tokenizer_config.json")
            else:
                truncation = False  # nothing to truncate to, as in transformers
        if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        return padding, truncation, max_length

    # ---- decoding -----------------------------------------------------------------------------------------

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        if isinstance(ids, (int, np.integer)):
            return self.id_to_token[self._check_id(ids)]
        return [self.id_to_token[self._check_id(i)] for i in ids
                if not (skip_special_tokens and int(i) in self.special_ids)]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.token_to_id.get(tokens, self.unk_token_id)
        return [self.token_to_id.get(t, self.unk_token_id) for t in tokens]

    def _check_id(self, i):
        i = int(i)
        if not 0 <= i < len(self.id_to_token):
            raise ValueError(f"token id {i} is out of range for a vocabulary of {len(self.id_to_token)}")
        return i

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """Text of `ids`: "▁" becomes a space, and the first token loses its leading one (tokenizers' Metaspace)."""
        if isinstance(ids, (int, np.integer)):
            ids = [ids]
        tokens = self.convert_ids_to_tokens(list(np.asarray(ids).reshape(-1)), skip_special_tokens)
        tokens = [t.replace(_SPACE_MARK, " ") for t in tokens]
        if tokens and tokens[0].startswith(" "):
            tokens[0] = tokens[0][1:]
        text = "".join(tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]


def _check_texts(text):
    if isinstance(text, str):
        return [text]
    if isinstance(text, (list, tuple)):
        if not text:
            raise ValueError("text must be a string or a non-empty list of strings, got an empty list")
        for t in text:
            if not isinstance(t, str):
                raise TypeError(f"text must be a string or a list of strings, got an item of type {type(t).__name__}")
        return list(text)
    raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")


def _to_tensors(enc, return_tensors, batched):
    if return_tensors in ("np", "numpy"):
        lengths = {len(r) for r in enc["input_ids"]}
        if len(lengths) > 1:
            raise ValueError("sequences have different lengths: pass padding=True (or 'max_length') "
                             "to return NumPy arrays")
        return {k: np.asarray(v, dtype=np.int64).reshape(len(v), -1) for k, v in enc.items()}
    if return_tensors is not None:
        raise ValueError(f"return_tensors must be 'np' or None, got {return_tensors!r}")
    return enc if batched else {k: v[0] for k, v in enc.items()}
